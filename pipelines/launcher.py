"""How a pipeline training task runs ``pix2pixhd train``: in the task's own pod (one
process, or torchrun over the pod's GPUs), or as a multi-node Kubeflow Trainer job that
the task submits and waits for (``pipelines.trainjob``).

``distributed`` is a JSON object fixed at compile time, empty for in-pod training:
``{"num_nodes": 2, "gpus_per_node": 8, "engine": "trainjob", "image": "...",
"namespace": "kubeflow", "secret": "pix2pixhd-s3"}``.

The in-pod case runs ``python -m components.cli train ...`` as a subprocess (like the
torchrun case), so this module never imports the CLI (no import cycle).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import storage
from components.params import flatten, params_from_text

log = logging.getLogger(__name__)


def s3_uri(uri: str) -> str:
    """kfp artifact URIs on Kubeflow's MinIO use ``minio://``; boto3 speaks S3 to it."""
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


@dataclass(frozen=True)
class TrainArtifacts:
    """The kfp artifacts of a training task (``init``: the global stage's checkpoint, for
    the local stage; None for the global stage)."""

    data: Any
    boundaries: Any
    report: Any
    init: Any
    checkpoint: Any


def train_args(
    *,
    stage: str,
    params_yaml: str,
    sets: Sequence[str],
    data: str,
    boundaries: str,
    summary: str,
    init: str | None,
    out: str,
    tracking_uri: str,
) -> list[str]:
    """The ``pix2pixhd train`` arguments; every param travels as --set (no file)."""
    params = params_from_text(params_yaml, sets)
    args = ["train", "--stage", stage, "--data", data, "--boundaries", boundaries]
    args += ["--data-summary", summary, "--out", out, "--orchestrator", "kfp"]
    if init:
        args += ["--init", init]
    if tracking_uri:
        args += ["--tracking-uri", tracking_uri]
    for key, value in flatten(params).items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def train_task(
    *,
    stage: str,
    params_yaml: str,
    sets: Sequence[str],
    artifacts: TrainArtifacts,
    metrics: Any,
    tracking_uri: str,
    distributed: str,
) -> dict[str, Any]:
    """Run one training stage for a kfp task with params ``params_yaml`` + ``sets`` (see
    ``pipelines.parameters.as_overrides``); logs the step's metrics to ``metrics`` and
    returns them.

    One command, three launch paths that differ only in the command prefix: a
    subprocess in this pod, torchrun over this pod's GPUs, or a multi-node job whose
    pods read and write the artifacts in object storage.
    """
    dist = json.loads(distributed) if distributed else {}
    nodes, gpus = int(dist.get("num_nodes", 1)), int(dist.get("gpus_per_node", 1))
    a, out = artifacts, Path(artifacts.checkpoint.path)
    if nodes > 1:
        if not s3_uri(a.checkpoint.uri).startswith("s3://"):
            raise RuntimeError(
                f"multi-node training needs artifacts in object storage; got {a.checkpoint.uri}"
            )

        def where(artifact: Any) -> str:
            return s3_uri(artifact.uri)

        out_arg = where(a.checkpoint) + "/job"
    else:

        def where(artifact: Any) -> str:
            return str(artifact.path)

        out_arg = str(out)
    args = train_args(
        stage=stage,
        params_yaml=params_yaml,
        sets=sets,
        data=where(a.data),
        boundaries=where(a.boundaries),
        summary=where(a.report) + "/summary.json",
        init=where(a.init) + "/latest.pth" if a.init is not None else None,
        out=out_arg,
        tracking_uri=tracking_uri,
    )
    if nodes > 1:
        _run_job(stage, args, dist)
        storage.download(out_arg + "/", out)  # what the job wrote, into the kfp artifact
    else:
        prefix = [sys.executable, "-m"]
        if gpus > 1:  # every GPU of this pod
            prefix += ["torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m"]
        cmd = [*prefix, "components.cli", *args]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise RuntimeError(f"pix2pixhd train --stage {stage} failed (see the log above)")
    path = out / "metrics.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    for k, v in result.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    for k, v in (result.get("final_losses") or {}).items():  # the losses, flat
        if k not in ("step", "epoch") and isinstance(v, int | float):
            metrics.log_metric(f"final_{k}", float(v))
    return result


def _run_job(stage: str, args: list[str], dist: dict[str, Any]) -> None:
    from pipelines import trainjob

    names = ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PIX2PIXHD_PIPELINE_RUN")
    env = {k: os.environ[k] for k in names if k in os.environ}
    name = re.sub(r"[^a-z0-9-]", "-", f"p2phd-{stage}-{uuid.uuid4().hex[:8]}")
    spec = trainjob.JobSpec(
        name=name,
        image=dist["image"],
        args=args,
        num_nodes=int(dist["num_nodes"]),
        gpus_per_node=int(dist.get("gpus_per_node", 1)),
        namespace=dist.get("namespace", "kubeflow"),
        env=env,
        secret_env=dist.get("secret", ""),
    )
    trainjob.launch(spec, dist.get("engine", "trainjob"))
