"""How a pipeline training task runs ``pix2pixhd train``: in the task's own pod (one
process, or torchrun over the pod's GPUs), or as a multi-node Kubeflow Trainer job that
the task submits and waits for (``pipelines.trainjob``).

``distributed`` is a JSON object fixed at compile time, empty for in-pod training:
``{"num_nodes": 2, "gpus_per_node": 8, "engine": "trainjob", "image": "...",
"namespace": "kubeflow", "secret": "pix2pixhd-s3"}``.

One GPU: the step runs in the task's process, as every other task. Several GPUs or
nodes: the command line of the same step (``components.steps.argv``) under torchrun or
in the job's pods; this module never imports the command line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from components import storage
from components.params import flatten

log = logging.getLogger(__name__)


def s3_uri(uri: str) -> str:
    """kfp artifact URIs on Kubeflow's MinIO use ``minio://``; boto3 speaks S3 to it."""
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def train_argv(task: Any, params: Any, given: dict[str, Any]) -> list[str]:
    """The ``pix2pixhd train`` arguments of a training task: the step's own command line
    (``components.steps.argv``, the inverse of the CLI's parser) with every param as
    ``--set`` (no params file travels to the nodes)."""
    from components import steps

    args = steps.argv(
        task.spec, {k: str(v) if isinstance(v, Path) else v for k, v in given.items()}
    )
    for key, value in flatten(params).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def train_task(
    values: dict[str, Any], call: Any, bound: tuple[Any, Any, dict[str, Any]]
) -> dict[str, Any]:
    """Run one training stage for a kfp task (``values``: the component's arguments;
    ``call``: the step in this process; ``bound``: the task, its params and its
    arguments as paths).

    One process on one GPU calls the step here, like every other task; several GPUs of
    this pod run the same command under torchrun; several nodes run it as a Kubeflow
    Trainer job whose pods read and write the artifacts in object storage.
    """
    task, params, given = bound
    dist = json.loads(values.get("distributed") or "{}")
    nodes, gpus = int(dist.get("num_nodes", 1)), int(dist.get("gpus_per_node", 1))
    if nodes <= 1 and gpus <= 1:
        if not dist.get("checkpoint_dir"):
            return call()
        return _resuming(values, call, given, Path(dist["checkpoint_dir"]), task.name)
    out = Path(values["out"].path)
    if nodes > 1 and dist.get("engine") == "docker":  # this machine's containers as nodes
        # the nodes mount the pipeline root at the same path: the artifacts' own paths
        # (restarted workers resume from the checkpoint in the output)
        _run_job(given["stage"], train_argv(task, params, {**given, "resume": True}), dist)
    elif nodes > 1:
        if not s3_uri(values["out"].uri).startswith("s3://"):
            raise RuntimeError(
                f"multi-node training needs artifacts in object storage; got {values['out'].uri}"
            )
        from components import steps

        remote = dict(given)
        for arg, ref in task.inputs.items():
            _, file = steps.split_ref(ref)
            uri = s3_uri(values[arg].uri)
            remote[arg] = f"{uri}/{file}" if file else uri
        remote["out"] = s3_uri(values["out"].uri) + "/job"
        remote["resume"] = True  # a restarted node's workers continue from the checkpoint
        _run_job(given["stage"], train_argv(task, params, remote), dist)
        storage.download(remote["out"] + "/", out)  # what the job wrote, into the artifact
    else:  # every GPU of this pod
        prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        prefix += [f"--nproc-per-node={gpus}", "-m", "pix2pixhd"]
        if subprocess.run([*prefix, *train_argv(task, params, given)], check=False).returncode:
            raise RuntimeError(
                f"pix2pixhd train --stage {given['stage']} failed (see the log above)"
            )
    path = out / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _resuming(
    values: dict[str, Any], call: Any, given: dict[str, Any], root: Path, name: str
) -> dict[str, Any]:
    """Train into ``root/<pipeline run>/<task>`` (a volume that outlives the pod),
    resuming from the checkpoint an earlier attempt left there, then copy the outputs
    into the task's artifact."""
    import shutil

    keep = root / (values.get("pipeline_run") or "run") / name
    keep.mkdir(parents=True, exist_ok=True)
    artifact = given["out"]
    given["out"], given["resume"] = keep, (keep / "latest.pth").is_file()
    if given["resume"]:
        log.info("resuming %s from %s (an earlier attempt's checkpoint)", name, keep)
    result = call()
    shutil.copytree(keep, artifact, dirs_exist_ok=True)
    return result


def job_spec(stage: str, args: list[str], dist: dict[str, Any]) -> Any:
    """The Trainer job of a training stage (``pipelines.trainjob.JobSpec``): its
    ``pix2pixhd`` arguments, the compile-time launch settings ``dist`` and the storage,
    tracking and pipeline variables of this process."""
    from pipelines import trainjob

    names = ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PIX2PIXHD_PIPELINE_RUN")
    env = {k: os.environ[k] for k in names if k in os.environ}
    name = re.sub(r"[^a-z0-9-]", "-", f"p2phd-{stage}-{uuid.uuid4().hex[:8]}")
    return trainjob.JobSpec(
        name=name,
        image=dist["image"],
        args=args,
        num_nodes=int(dist["num_nodes"]),
        gpus_per_node=int(dist.get("gpus_per_node", 1)),
        namespace=dist.get("namespace", "kubeflow"),
        env=env,
        secret_env=dist.get("secret", ""),
        max_restarts=int(dist.get("max_restarts", 3)),
    )


def _run_job(stage: str, args: list[str], dist: dict[str, Any]) -> None:
    from pipelines import trainjob

    spec = job_spec(stage, args, dist)
    if dist.get("engine") == "docker":
        from pipelines import local_nodes

        local_nodes.run(
            trainjob.render(spec, "trainjob"),
            mounts=[Path(dist["mount"])],
            user=f"{os.getuid()}:{os.getgid()}",
            backoff_limit=int(dist.get("backoff_limit", 3)),
        )
        return
    trainjob.launch(spec, dist.get("engine", "trainjob"))
