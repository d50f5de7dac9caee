"""The whole DAG in containers (kfp.local.DockerRunner, host network, the image's user)
on the tiny configuration, against the same DAG run by the subprocess runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from pix2pixhd.cli import main
from tests.conftest import TINY_PIPELINE_ARGS


def run_pipeline(root: Path, runner: str, images: dict[str, str]) -> Path:
    args = ["pipeline", "run", "--local", "--runner", runner, "--pipeline-root", str(root)]
    if runner == "docker":
        args += ["--image", images["cpu"], "--gpu-image", images["cuda"]]
    # MLflow's database in the pipeline root: the runs of both runners are kept apart
    for a in (*TINY_PIPELINE_ARGS, f"tracking_uri=sqlite:///{root}/mlflow.db"):
        args += ["--arg", a]
    assert main(args) == 0
    return next(p for p in root.iterdir() if p.is_dir() and p.name.startswith("pix2pixhd"))


def scores(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "evaluate" / "out" / "metrics.json").read_text())
    flat = {}
    for group in ("generated", "real"):
        for key, value in metrics.get(group, {}).items():
            if isinstance(value, int | float):
                flat[f"{group}.{key}"] = float(value)
    return flat


def test_dag_in_containers_scores_equal_the_subprocess_runs(images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the cwd
    docker_run = run_pipeline(tmp_path / "docker", "docker", images)
    local_run = run_pipeline(tmp_path / "subprocess", "subprocess", images)

    inside, outside = scores(docker_run), scores(local_run)
    assert inside.keys() == outside.keys() and "generated.mean_iou" in inside
    # the same wheels (the image's come from the same indexes as this venv), the same CPU
    # and thread count: the same floating-point operations in the same order. Measured
    # here: bit-identical weights and scores; the bound below only allows for a float
    # printed through JSON differently, not for a different computation.
    for key in inside:
        assert math.isclose(inside[key], outside[key], rel_tol=1e-9, abs_tol=1e-12), key
    for stage in ("train-global", "train-local"):
        a, b = (
            torch.load(r / stage / "out" / "latest.pth", weights_only=True)
            for r in (docker_run, local_run)
        )
        for net in ("G", "D"):
            assert a[net].keys() == b[net].keys()
            for k in a[net]:
                assert torch.equal(a[net][k], b[net][k]), f"{stage} {net}.{k}"
    # the tasks ran as the image's unprivileged user and wrote into the mounted root
    model = docker_run / "features" / "out"
    assert model.exists() and model.stat().st_uid != 0
    decision = json.loads((docker_run / "promote" / "out" / "decision.json").read_text())
    assert decision["promoted"] is True
    assert (docker_run / "export" / "out" / "model.onnx").stat().st_size > 10_000


def test_dag_with_two_node_training_in_containers(images, tmp_path, monkeypatch):
    """`pipeline run --local --runner docker --nodes 2`: each training stage runs as its
    TrainJob's two nodes (containers started by the training task), and the DAG goes on
    from what rank 0 wrote."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "nodes"
    args = ["pipeline", "run", "--local", "--runner", "docker", "--pipeline-root", str(root)]
    args += ["--image", images["cpu"], "--gpu-image", images["cpu"], "--nodes", "2"]
    for a in (*TINY_PIPELINE_ARGS, f"tracking_uri=sqlite:///{root}/mlflow.db"):
        args += ["--arg", a]
    assert main(args) == 0
    run = next(p for p in root.iterdir() if p.is_dir() and p.name.startswith("pix2pixhd"))
    for stage in ("train-global", "train-local"):
        summary = json.loads((run / stage / "out" / "summary.json").read_text())
        assert summary["world_size"] == 2, stage
    decision = json.loads((run / "promote" / "out" / "decision.json").read_text())
    assert decision["promoted"] is True
