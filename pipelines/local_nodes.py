"""A rendered TrainJob run on this machine: each node a container of the local Docker
engine, as the Trainer's torch runtime would start it in the cluster.

What the runtime supplies is supplied here: ``PET_NNODES``, ``PET_NPROC_PER_NODE``,
``PET_NODE_RANK``, ``PET_MASTER_ADDR`` / ``PET_MASTER_PORT`` (node 0 on the host network,
a free port) and an address of each node's own (``PET_LOCAL_ADDR``, on the loopback
network), with the manifest's ``$(VAR)`` references expanded by the Kubernetes rule. The
command, arguments, image and environment are the manifest's own (``pipelines.trainjob``):
the local run exercises the path the cluster takes.

A node whose container exits non-zero is a lost node. While the job's ``backoff_limit``
allows, it is started again (a replaced pod); torchrun on the surviving nodes restarts
their workers (``--max-restarts``) and the rendezvous re-forms with the new node, whose
workers resume from the last checkpoint (``train --resume``). With no restarts left the
other nodes are stopped and the job fails with one line naming the lost node.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import Pix2PixHDError

log = logging.getLogger(__name__)

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
EXIT_MEANING = {137: "killed", 143: "terminated", 139: "segmentation fault"}


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``command``/``args``: ``$(VAR)`` becomes the variable's
    value when the container defines it (else stays as written); ``$$`` is one ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TrainerSpec:
    """What a node runs, read from a TrainJob manifest."""

    name: str
    image: str
    command: list[str]
    args: list[str]
    env: dict[str, str]
    num_nodes: int
    nproc_per_node: int

    @classmethod
    def of(cls, manifest: Mapping[str, Any], environ: Mapping[str, str]) -> TrainerSpec:
        """The trainer of a TrainJob; env entries from a Secret take this process's
        variables of the same name (locally, credentials live in the environment)."""
        if manifest.get("kind") != "TrainJob":
            raise Pix2PixHDError(
                f"local nodes run TrainJob manifests; got kind {manifest.get('kind')!r}"
            )
        t = manifest["spec"]["trainer"]
        env = {}
        for entry in t.get("env", []):
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            elif entry["name"] in environ:
                env[entry["name"]] = environ[entry["name"]]
        return cls(
            name=manifest["metadata"]["name"],
            image=t["image"],
            command=list(t["command"]),
            args=list(t.get("args", [])),
            env=env,
            num_nodes=int(t.get("numNodes", 1)),
            nproc_per_node=int(t.get("numProcPerNode", 1)),
        )

    def node_env(self, rank: int, port: int) -> dict[str, str]:
        """The variables the torch runtime gives node ``rank``; the nodes share this
        machine's cores, so each node's torch threads are its share of them (unless the
        manifest sets ``OMP_NUM_THREADS``)."""
        import os

        threads = max(1, (os.cpu_count() or 1) // (self.num_nodes * self.nproc_per_node))
        return {
            "OMP_NUM_THREADS": str(threads),
            **self.env,
            "PET_NNODES": str(self.num_nodes),
            "PET_NPROC_PER_NODE": str(self.nproc_per_node),
            "PET_NODE_RANK": str(rank),
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(port),
            # the nodes share the host's name and each is pid 1 of its container: the
            # rendezvous would take them for one node. A pod has an address of its own;
            # here each node gets one of the loopback network (127.0.0.0/8).
            "PET_LOCAL_ADDR": f"127.0.0.{rank + 1}",
            # every node matches a loopback endpoint, and the first to bind it would host
            # the rendezvous store; in a cluster node 0, whose address the endpoint is,
            # hosts it: so here too (losing another node then never loses the store)
            "PET_RDZV_CONF": f"is_host={1 if rank == 0 else 0}",
        }

    def node_command(self, env: Mapping[str, str]) -> list[str]:
        return [expand(part, env) for part in (*self.command, *self.args)]

    def checkpoint(self) -> str:
        """Where the step keeps its checkpoint (``--out``/latest.pth), for messages."""
        args = self.args
        out = args[args.index("--out") + 1] if "--out" in args[:-1] else "the output"
        return f"{out}/latest.pth"


@dataclass
class Node:
    rank: int
    container: Any
    attempt: int
    lines: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None


class LocalJob:
    """The nodes of one TrainJob as containers (see the module doc)."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        mounts: Sequence[Path],
        user: str,
        backoff_limit: int = 0,
        environ: Mapping[str, str] | None = None,
        client: Any = None,
    ) -> None:
        import os

        self.trainer = TrainerSpec.of(manifest, os.environ if environ is None else environ)
        self.mounts = [str(Path(m)) for m in mounts]
        self.user, self.backoff_limit = user, backoff_limit
        self.port = free_port()
        self.restarts = 0
        self.nodes: dict[int, Node] = {}
        #: every line each node printed, over all its attempts, prefixed "[node R]"
        self.logs: dict[int, list[str]] = {r: [] for r in range(self.trainer.num_nodes)}
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.from_env()
        return self._client

    def container_name(self, rank: int, attempt: int) -> str:
        return f"{self.trainer.name}-node-{rank}-{attempt}"

    def start(self, rank: int, attempt: int = 0) -> Node:
        env = self.trainer.node_env(rank, self.port)
        container = self.client.containers.run(
            self.trainer.image,
            self.trainer.node_command(env),
            name=self.container_name(rank, attempt),
            detach=True,
            network_mode="host",
            user=self.user,
            environment=env,
            volumes={m: {"bind": m, "mode": "rw"} for m in self.mounts},
            working_dir=self.mounts[0] if self.mounts else None,
            labels={"pix2pixhd.job": self.trainer.name, "pix2pixhd.node": str(rank)},
        )
        node = Node(rank, container, attempt)
        node.thread = threading.Thread(target=self._follow, args=(node,), daemon=True)
        node.thread.start()
        self.nodes[rank] = node
        log.info("node %d of %d: container %s", rank, self.trainer.num_nodes, container.name)
        return node

    def _follow(self, node: Node) -> None:
        prefix = f"[node {node.rank}] "
        pending = b""
        try:
            for chunk in node.container.logs(stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._emit(node, prefix + raw.decode(errors="replace").rstrip("\r"))
        except Exception:  # the container was removed while following: its log ends
            pass
        if pending:
            self._emit(node, prefix + pending.decode(errors="replace"))

    def _emit(self, node: Node, line: str) -> None:
        node.lines.append(line)
        self.logs[node.rank].append(line)
        log.info("%s", line)

    def kill(self, rank: int) -> None:
        """Lose node ``rank``: its container is killed, as a node that goes away."""
        self.nodes[rank].container.kill()

    def _exit_code(self, node: Node) -> int | None:
        node.container.reload()
        if node.container.status in ("exited", "dead"):
            return int(node.container.attrs["State"]["ExitCode"])
        return None

    def wait(self, timeout_s: float = 3600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Until every node exits 0; a lost node is replaced while restarts are left."""
        start = time.monotonic()
        done: set[int] = set()
        while len(done) < self.trainer.num_nodes:
            if time.monotonic() - start > timeout_s:
                raise Pix2PixHDError(
                    f"{self.trainer.name}: the nodes did not finish within {timeout_s:g} s"
                )
            failed = []
            for rank, node in list(self.nodes.items()):
                if rank in done:
                    continue
                code = self._exit_code(node)
                if code is None:
                    continue
                if node.thread is not None:
                    node.thread.join(10)
                if code == 0:
                    done.add(rank)
                else:
                    failed.append((node.container.attrs["State"]["FinishedAt"], node, code))
            # the first to go is the lost one; its peers fail after it (a broken collective)
            for _, node, code in sorted(failed, key=lambda f: f[0]):
                self._lost(node, code)
            time.sleep(poll_s)
        return {
            "job": self.trainer.name,
            "nodes": self.trainer.num_nodes,
            "restarts": self.restarts,
            "seconds": round(time.monotonic() - start, 1),
        }

    def _lost(self, node: Node, code: int) -> None:
        meaning = EXIT_MEANING.get(code, "failed")
        what = (
            f"node {node.rank} of {self.trainer.num_nodes} (container "
            f"{node.container.name}) was lost: exit {code} ({meaning})"
        )
        if self.restarts < self.backoff_limit:
            self.restarts += 1
            log.warning(
                "%s; starting it again (restart %d of %d)", what, self.restarts, self.backoff_limit
            )
            self.start(node.rank, node.attempt + 1)
            return
        tail = next((x for x in reversed(node.lines) if x.strip()), "")
        raise Pix2PixHDError(
            f"{self.trainer.name}: {what}, and no restarts are left (backoff limit "
            f"{self.backoff_limit}); the last checkpoint stays in {self.trainer.checkpoint()}"
            f"{f'; its last line: {tail[:160]}' if tail else ''}"
        )

    def stop(self) -> None:
        """Remove every container of the job (stopped first when still running)."""
        for node in self.nodes.values():
            try:
                node.container.remove(force=True)
            except Exception as exc:  # already gone
                log.debug("removing %s: %s", node.container.name, exc)
        for c in self.client.containers.list(
            all=True, filters={"label": f"pix2pixhd.job={self.trainer.name}"}
        ):
            c.remove(force=True)


def run(
    manifest: Mapping[str, Any],
    mounts: Sequence[Path],
    user: str,
    backoff_limit: int = 0,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Start every node of ``manifest``, wait for all, remove the containers."""
    job = LocalJob(manifest, mounts, user, backoff_limit)
    try:
        for rank in range(job.trainer.num_nodes):
            job.start(rank)
        return job.wait(timeout_s)
    finally:
        job.stop()
