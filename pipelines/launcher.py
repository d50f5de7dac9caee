"""How a pipeline training task runs ``pix2pixhd train``: in the task's own pod (one
process, or torchrun over the pod's GPUs), or as a multi-node Kubeflow Trainer job that
the task submits and waits for (``pipelines.trainjob``).

``distributed`` is a JSON object fixed at compile time, empty for in-pod training:
``{"num_nodes": 2, "gpus_per_node": 8, "engine": "trainjob", "image": "...",
"namespace": "kubeflow", "secret": "pix2pixhd-s3"}``.
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
from components.params import flatten, params_from_text

log = logging.getLogger(__name__)


def s3_uri(uri: str) -> str:
    """kfp artifact URIs on Kubeflow's MinIO use ``minio://``; boto3 speaks S3 to it."""
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def train_args(
    stage: str,
    params_yaml: str,
    sets: list[str],
    data: str,
    boundaries: str,
    summary: str,
    init: str | None,
    out: str,
    tracking_uri: str,
) -> list[str]:
    """The ``pix2pixhd train`` command line; every param travels as --set (no file)."""
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
    stage: str,
    params_yaml: str,
    overrides: list[str],
    main_params: dict[str, int],
    data: Any,
    boundaries: Any,
    report: Any,
    init: Any,
    checkpoint: Any,
    metrics: Any,
    tracking_uri: str,
    distributed: str,
) -> dict[str, Any]:
    """Run one training stage for a kfp task (the typed pipeline parameters in
    ``main_params``, then ``overrides``); logs and returns the step's metrics."""
    m, section = main_params, f"train_{stage}"
    sets = [f"data.width={m['width']}", f"data.height={m['height']}"]
    sets += [f"model.generator.ngf={m['ngf']}", f"{section}.niter={m['niter']}"]
    sets += [f"{section}.niter_decay={m['niter_decay']}", *overrides]
    result = _train(
        stage,
        params_yaml,
        sets,
        data,
        boundaries,
        report,
        init,
        checkpoint,
        tracking_uri,
        distributed,
    )
    for k, v in result.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(k, float(v))
    return result


def _train(
    stage: str,
    params_yaml: str,
    sets: list[str],
    data: Any,
    boundaries: Any,
    report: Any,
    init: Any,
    checkpoint: Any,
    tracking_uri: str,
    distributed: str,
) -> dict[str, Any]:
    dist = json.loads(distributed) if distributed else {}
    nodes, gpus = int(dist.get("num_nodes", 1)), int(dist.get("gpus_per_node", 1))
    out = Path(checkpoint.path)
    if nodes > 1:  # the job's pods read and write the artifacts in object storage
        if not s3_uri(checkpoint.uri).startswith("s3://"):
            raise RuntimeError(
                f"multi-node training needs artifacts in object storage; got {checkpoint.uri}"
            )

        def where(artifact: Any) -> str:
            return s3_uri(artifact.uri)

        out_arg = where(checkpoint) + "/job"
    else:

        def where(artifact: Any) -> str:
            return str(artifact.path)

        out_arg = str(out)
    args = train_args(
        stage,
        params_yaml,
        sets,
        where(data),
        where(boundaries),
        where(report) + "/summary.json",
        where(init) + "/latest.pth" if init is not None else None,
        out_arg,
        tracking_uri,
    )
    if nodes > 1:
        _run_job(stage, args, dist)
        storage.download(out_arg + "/", out)  # what the job wrote, into the kfp artifact
    elif gpus > 1:  # every GPU of this pod: torchrun, same command
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc-per-node={gpus}", "-m", "components.cli", *args]
        subprocess.run(cmd, check=True)
    else:
        from components.cli import main

        if main(args) != 0:
            raise RuntimeError(f"pix2pixhd train --stage {stage} failed (see the log above)")
    metrics = out / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else {}


def _run_job(stage: str, args: list[str], dist: dict[str, Any]) -> None:
    from pipelines import trainjob

    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI") if k in os.environ}
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
