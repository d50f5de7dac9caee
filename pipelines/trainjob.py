"""Multi-node training on an existing engine: Kubeflow Trainer v2 ``TrainJob`` (runtime
``torch-distributed``) or, for clusters still on the Training Operator v1, a
``PyTorchJob``. Same image, same ``pix2pixhd train`` command, under torchrun on every
node (:func:`torchrun_args`): c10d rendezvous at the endpoint the engine gives the pods,
``--max-restarts`` restarts of the node's workers when a peer is lost, and ``train
--resume`` so that restarted workers continue from the last checkpoint. The step's
``RANK``/``WORLD_SIZE`` handling (``components.train``) does the rest.

Locally, ``pipelines.local_nodes`` runs a rendered TrainJob's nodes as containers of the
Docker engine (``pipeline run --local --runner docker --nodes 2``).

The pipeline's training task calls :func:`launch`: it renders the manifest, creates it
with the Kubernetes API and waits for the job to succeed or fail. Rendering is pure and
testable offline.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class JobSpec:
    name: str
    image: str
    args: Sequence[str]  # the pix2pixhd command line after `pix2pixhd`
    num_nodes: int = 1
    gpus_per_node: int = 1
    namespace: str = "kubeflow"
    runtime: str = "torch-distributed"
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: str = ""  # a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    cpu: str = "8"
    memory: str = "64Gi"
    shm_size: str = "16Gi"  # PyTorchJob: memory-backed /dev/shm for data loader workers
    node_selector: Mapping[str, str] = field(default_factory=dict)
    # torchrun's restarts of a node's workers after a failure (a lost peer included): each
    # restart re-forms the rendezvous and resumes from the last checkpoint
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or len(self.name) > 63:
            raise ValueError(f"job name {self.name!r}: expected a DNS-1123 label (a-z0-9-)")
        if self.num_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError("num_nodes must be >= 1 and gpus_per_node >= 0")


def torchrun_args(spec: JobSpec, endpoint: str) -> list[str]:
    """torchrun's arguments on every node of the job: ``nnodes`` nodes of
    ``nproc-per-node`` workers, meeting at the c10d rendezvous ``endpoint`` (the job's
    first node: the engine's address variables, expanded by Kubernetes as ``$(VAR)``),
    then ``python -m pix2pixhd`` with the step's arguments."""
    return [
        f"--nnodes={spec.num_nodes}",
        f"--nproc-per-node={max(1, spec.gpus_per_node)}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={spec.name}",
        f"--max-restarts={spec.max_restarts}",
        "-m",
        "pix2pixhd",
        *spec.args,
    ]


def _resources(spec: JobSpec) -> dict[str, Any]:
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = str(spec.gpus_per_node)
    return {"requests": dict(limits), "limits": limits}


#: set on every node. torchrun's agents share one TCP store between rendezvous rounds by
#: default, and then a node that stays rank 0 does not publish the new round's master
#: address: a replaced node waits for it until the rendezvous times out (torch 2.14,
#: tests/containers/test_multinode.py). Without the sharing each round publishes it.
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _env(spec: JobSpec) -> list[dict[str, Any]]:
    values = {**TORCHRUN_ENV, **spec.env}
    env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in sorted(values.items())]
    if spec.secret_env:  # S3 credentials from the Secret, never in the manifest
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": spec.secret_env, "key": key}}}
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    return env


def trainjob_manifest(spec: JobSpec) -> dict[str, Any]:
    """A Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1). The
    torch-distributed runtime starts the command under torchrun with nnodes = numNodes
    and numProcPerNode processes per node. Scheduling (GPU node selectors,
    tolerations, a memory-backed /dev/shm) belongs to the ClusterTrainingRuntime: the
    TrainJob keeps to the fields every v1alpha1 release accepts."""
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["torchrun"],
        # the torch runtime sets PET_MASTER_ADDR / PET_MASTER_PORT: node 0's address
        "args": torchrun_args(spec, "$(PET_MASTER_ADDR):$(PET_MASTER_PORT)"),
        "numNodes": spec.num_nodes,
        "numProcPerNode": max(1, spec.gpus_per_node),
        "resourcesPerNode": _resources(spec),
    }
    trainer["env"] = _env(spec)
    return {
        "apiVersion": f"{TRAINJOB[0]}/{TRAINJOB[1]}",
        "kind": TRAINJOB[3],
        "metadata": {"name": spec.name, "namespace": spec.namespace},
        "spec": {"runtimeRef": {"name": spec.runtime}, "trainer": trainer},
    }


def pytorchjob_manifest(spec: JobSpec) -> dict[str, Any]:
    """The Training Operator v1 equivalent: one Master and num_nodes - 1 Workers, each
    running nprocPerNode processes (torchrun is started by the operator)."""

    def replica(n: int) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": "pytorch",
            "image": spec.image,
            "command": ["torchrun"],
            # the operator sets MASTER_ADDR / MASTER_PORT: the Master pod's address
            "args": torchrun_args(spec, "$(MASTER_ADDR):$(MASTER_PORT)"),
            "resources": _resources(spec),
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        }
        container["env"] = _env(spec)
        pod: dict[str, Any] = {
            "containers": [container],
            "volumes": [
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}
            ],
        }
        if spec.node_selector:
            pod["nodeSelector"] = dict(spec.node_selector)
        if spec.gpus_per_node:
            pod["tolerations"] = [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
        return {
            "replicas": n,
            "restartPolicy": "OnFailure",
            "template": {
                # v1 pods in user namespaces must not get an Istio sidecar (it never exits)
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": pod,
            },
        }

    replicas = {"Master": replica(1)}
    if spec.num_nodes > 1:
        replicas["Worker"] = replica(spec.num_nodes - 1)
    return {
        "apiVersion": f"{PYTORCHJOB[0]}/{PYTORCHJOB[1]}",
        "kind": PYTORCHJOB[3],
        "metadata": {"name": spec.name, "namespace": spec.namespace},
        "spec": {
            "nprocPerNode": str(max(1, spec.gpus_per_node)),
            "pytorchReplicaSpecs": replicas,
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 3},
        },
    }


def render(spec: JobSpec, engine: str = "trainjob") -> dict[str, Any]:
    if engine == "trainjob":
        return trainjob_manifest(spec)
    if engine == "pytorchjob":
        return pytorchjob_manifest(spec)
    raise ValueError(f"engine {engine!r}: expected trainjob or pytorchjob")


def job_state(obj: Mapping[str, Any]) -> str | None:
    """'Succeeded', 'Failed' or None (still running) from a job's status conditions
    (TrainJob: Complete / Failed; PyTorchJob: Succeeded / Failed)."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if str(cond.get("status")) != "True":
            continue
        if cond.get("type") in ("Complete", "Succeeded"):
            return "Succeeded"
        if cond.get("type") == "Failed":
            return "Failed"
    return None


def launch(
    spec: JobSpec, engine: str = "trainjob", poll_s: float = 30.0, timeout_s: float = 7 * 86400
) -> dict[str, Any]:
    """Create the job in the cluster (in-cluster config, else kubeconfig) and wait."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    group, version, plural, _ = TRAINJOB if engine == "trainjob" else PYTORCHJOB
    api = client.CustomObjectsApi()
    body = render(spec, engine)
    api.create_namespaced_custom_object(group, version, spec.namespace, plural, body)
    log.info("created %s %s/%s", body["kind"], spec.namespace, spec.name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object(group, version, spec.namespace, plural, spec.name)
        state = job_state(obj)
        if state == "Succeeded":
            return {"job": spec.name, "state": state}
        if state == "Failed":
            raise RuntimeError(f"{body['kind']} {spec.name} failed: {obj.get('status')}")
        time.sleep(poll_s)
    raise TimeoutError(f"{body['kind']} {spec.name} did not finish in {timeout_s} s")
