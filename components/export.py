"""Step `export`: the generator of a checkpoint as one ONNX graph (+ an fp16 copy for GPU
serving), checked with onnx.checker and against PyTorch with onnxruntime, logged to
MLflow (onnx flavour) beside the registered generator version."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from components.tracking import Tracker, git_sha, orchestrator_tag
from model.checkpoint import build_model, load_checkpoint
from model.export import example_inputs, export_onnx, input_names

log = logging.getLogger(__name__)

# max |onnxruntime - PyTorch| accepted for an fp32 graph (images in [-1, 1]; 1/255 is
# one 8-bit level): the cached graphs of `components.engine` must meet it.
PARITY_ATOL = 1e-4


def parity(model: Any, onnx_path: Path, sizes: tuple[tuple[int, int, int], ...]) -> float:
    """Max |onnxruntime - PyTorch| over random inputs of the given (N, H, W)."""
    from components.engine import make_session

    session = make_session(onnx_path)
    names = input_names(model)
    worst = 0.0
    for n, h, w in sizes:
        inputs = example_inputs(model, n, h, w)
        inst = inputs[1] if model.cfg.use_instance_map else None
        feats = inputs[-1] if model.cfg.use_instance_features else None
        ref = model.generate(inputs[0], inst, features=feats)
        got = session.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})[0]
        worst = max(worst, float(np.abs(got - ref.numpy()).max()))
    return worst


def run(
    checkpoint: Path,
    out: Path,
    fp16: bool = True,
    tracking: bool = True,
    tracking_uri: str | None = None,
    registration: Path | None = None,
    experiment: str = "pix2pixhd",
    orchestrator: str | None = None,
) -> dict[str, Any]:
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    centres = ckpt.get("cluster_centers") or None
    path = export_onnx(model, out, cluster_centers=centres)
    m = model.cfg.generator.size_multiple
    max_diff = parity(model, path, ((1, 2 * m, 4 * m), (2, 3 * m, 5 * m)))
    summary: dict[str, Any] = {
        "onnx": str(path),
        "max_abs_diff_vs_torch": max_diff,
        "inputs": input_names(model),
    }
    if fp16:
        fp16_path = out.with_name(out.stem + "_fp16.onnx")
        export_onnx(model, fp16_path, fp16=True, cluster_centers=centres)
        summary["onnx_fp16"] = str(fp16_path)
    if tracking:
        import onnx

        tracker = Tracker(tracking_uri=tracking_uri)
        tracker.start(
            experiment,
            "export",
            {
                "stage": "export",
                "git_sha": git_sha(),
                "orchestrator": orchestrator_tag(orchestrator),
            },
        )
        proto = onnx.load(str(path))
        info = tracker._call(
            "onnx.log_model",
            lambda mlflow: mlflow.onnx.log_model(
                proto, name="onnx", pip_requirements=["onnxruntime", "numpy"]
            ),
        )
        tracker.log_metrics({"onnx_max_abs_diff": max_diff}, step=0)
        tracker.end()
        if info is not None:
            summary["mlflow_model_uri"] = info.model_uri
            if registration is not None and Path(registration).is_file():
                reg = json.loads(Path(registration).read_text())
                tracker._call(
                    "tag version",
                    lambda mlflow: mlflow.MlflowClient().set_model_version_tag(
                        reg["name"], reg["version"], "onnx_model", info.model_uri
                    ),
                )
    (out.parent / "export_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("exported %s (max |onnx - torch| = %.2e)", path, max_diff)
    return summary
