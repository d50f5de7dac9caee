"""Lineage in the MLflow UI: one pipeline execution is one parent run with a nested run
per step, found or created by $PIX2PIXHD_PIPELINE_RUN from separate processes without
a race; the data read as input datasets (validate's hash as digest), the model's scores
tied to the evaluation dataset, images per step, system metrics during training, and a
registered version that holds only what serving needs, its checkpoint linked to the run
that logged it. A tiny pipeline runs once, step by step through the CLI, against a
SQLite store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.tracking import PARENT_TAG, PIPELINE_RUN_ENV, ROLE_TAG, Tracker, pipeline_parent
from pix2pixhd.cli import main

EXECUTION = "lineage-exec-1"
EXPERIMENT = "lineage"
NAME = "lineage-generator"
STEPS = {
    "synth",
    "validate",
    "drift",
    "train_global",
    "features",
    "segmenter",
    "evaluate",
    "export",
    "promote",
}
TINY = [
    "data.width=64",
    "data.height=32",
    "data.num_train=4",
    "data.num_val=3",
    "model.use_instance_features=true",
    "model.generator.ngf=4",
    "model.generator.n_downsample_global=2",
    "model.generator.n_blocks_global=1",
    "model.generator.n_local_enhancers=1",
    "model.generator.n_blocks_local=1",
    "model.discriminator.ndf=4",
    "model.discriminator.n_layers_D=2",
    "model.discriminator.num_D=2",
    "model.encoder.nef=4",
    "model.encoder.n_downsample_E=2",
    "model.loss.use_vgg_loss=false",
    "train_global.niter=2",
    "train_global.niter_decay=0",
    "train_global.batch_size=1",
    "train_global.log_every=1",
    "train_global.sample_every=4",
    "features.min_area=0.001",
    "segmenter.backbone=light",
    "segmenter.epochs=1",
    "segmenter.batch_size=4",
    "validate.drift_ratio=1000",  # 3 val images: any class share may look drifted
    "validate.drift_min_delta=1",
    "validate.drift_z=1000",
    f"tracking.experiment={EXPERIMENT}",
    f"evaluate.model_name={NAME}",
]


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """An empty, migrated SQLite store (migrations take seconds: copied per test)."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(migrated, tmp_path) -> str:
    shutil.copy(migrated, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _sets() -> list[str]:
    return [arg for s in TINY for arg in ("--set", s)]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, migrated):
    """The DAG's steps in order, each as the CLI runs it, sharing one execution id."""
    import mlflow

    root = tmp_path_factory.mktemp("lineage")
    shutil.copy(migrated, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    d = root / "d"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # MLflow's global URI wins over the environment's
    patch.setenv(PIPELINE_RUN_ENV, EXECUTION)
    patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    exp = ["--experiment", EXPERIMENT]  # the steps whose experiment params.yaml does not set
    summary = str(d / "validate" / "summary.json")
    steps = [
        ["data", "synth", "--out", d / "synth", *exp],
        ["validate", "--data", d / "synth", "--out", d / "validate", *exp],
        ["validate", "--data", d / "synth", "--out", d / "drift", "--reference", summary]
        + ["--splits", "val", *exp],
        ["train", "--stage", "global", "--data", d / "synth", "--data-summary", summary]
        + ["--out", d / "train_global"],
        ["features", "--checkpoint", d / "train_global" / "latest.pth", "--data", d / "synth"]
        + ["--out", d / "features", *exp],
        ["segmenter", "train", "--data", d / "synth", "--out", d / "segmenter"]
        + ["--data-summary", summary, *exp],
        ["evaluate", "--checkpoint", d / "features" / "model.pth", "--data", d / "synth"]
        + ["--segmenter", d / "segmenter" / "segmenter.pth", "--data-summary", summary]
        + ["--out", d / "evaluate"],
        ["export", "--checkpoint", d / "features" / "model.pth", "--no-fp16"]
        + [
            "--evaluation",
            d / "evaluate" / "evaluation.json",
            "--out",
            d / "export" / "model.onnx",
        ],
        ["promote", "--registration", d / "export" / "registration.json", *exp]
        + ["--out", d / "promote" / "decision.json"],
    ]
    client = mlflow.MlflowClient(uri)
    client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    try:
        for args in steps:
            assert main([*map(str, args), *_sets()]) == 0, args[:2]
        experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
        runs = client.search_runs([experiment], f"tags.pipeline_run = '{EXECUTION}'")
        yield {"client": client, "uri": uri, "d": d, "runs": runs, "experiment": experiment}
    finally:
        patch.undo()
        mlflow.set_tracking_uri(previous)


def _child(pipeline, name):
    (run,) = [r for r in pipeline["runs"] if r.info.run_name == name]
    return run


def test_one_parent_run_with_a_nested_run_per_step(pipeline):
    parents = [r for r in pipeline["runs"] if r.data.tags.get(ROLE_TAG) == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == f"pipeline {EXECUTION}" and parent.info.status == "FINISHED"
    children = [r for r in pipeline["runs"] if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert {r.info.run_name for r in children} == STEPS
    assert len(children) == len(pipeline["runs"]) - 1  # nothing standalone
    for run in children:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["git_sha"] and run.data.tags["orchestrator"] == "cli"
    assert _child(pipeline, "validate").data.params["data"].endswith("synth")


def test_datasets_are_inputs_where_read_with_the_hash_as_digest(pipeline):
    data_hash = json.loads((pipeline["d"] / "validate" / "summary.json").read_text())[
        "dataset_hash"
    ]

    def inputs(name):
        run = _child(pipeline, name)
        return {
            {t.key: t.value for t in i.tags}.get("mlflow.data.context"): i
            for i in run.inputs.dataset_inputs
        }

    expected = {
        "validate": "validation",
        "train_global": "training",
        "features": "training",
        "segmenter": "training",
        "evaluate": "evaluation",
    }
    for step, context in expected.items():
        got = inputs(step)[context]
        assert got.dataset.digest == data_hash[:36], step
        assert {t.key: t.value for t in got.tags}["dataset_hash"] == data_hash, step
        assert json.loads(got.dataset.source)["uri"].endswith("synth"), step
    drift = inputs("drift")  # the val split alone, against the profile validate wrote
    val_hash = json.loads((pipeline["d"] / "drift" / "summary.json").read_text())["dataset_hash"]
    assert drift["drift"].dataset.digest == val_hash[:36] != data_hash[:36]
    assert drift["reference"].dataset.digest == data_hash[:36]
    assert not _child(pipeline, "synth").inputs.dataset_inputs  # it writes data, reads none


def test_scores_are_tied_to_the_evaluation_dataset_and_the_model(pipeline):
    client = pipeline["client"]
    data_hash = json.loads((pipeline["d"] / "evaluate" / "evaluation.json").read_text())[
        "dataset_hash"
    ]
    # run metrics keep no dataset in MLflow's store: the run's input says what was scored;
    # the logged model's metrics name it
    ev = _child(pipeline, "evaluate")
    mv = client.get_model_version_by_alias(NAME, "champion")
    model = client.get_logged_model(mv.source.removeprefix("models:/"))
    scored = {m.key: m for m in model.metrics if m.dataset_digest}
    assert (scored["mean_iou"].dataset_name, scored["mean_iou"].dataset_digest) == (
        "val",
        data_hash[:36],
    )
    assert scored["mean_iou"].value == pytest.approx(ev.data.metrics["generated_mean_iou"])
    # the evaluate run opened before scoring: before the reports were written
    written = (pipeline["d"] / "evaluate" / "metrics.json").stat().st_mtime
    assert ev.info.start_time / 1000 < written


def test_images_per_step_and_system_metrics_while_training(pipeline):
    client = pipeline["client"]

    def images(name):
        run = _child(pipeline, name)
        return [a.path for a in client.list_artifacts(run.info.run_id, "images")]

    train = images("train_global")
    steps = {int(p.split("+step+")[1].split("+")[0]) for p in train if "train_samples" in p}
    assert steps == {4, 8}  # at their iteration (sample_every 4 of 8)
    assert any("final_samples" in p for p in train)
    assert any("evaluation_samples" in p for p in images("evaluate"))
    assert any("synth_samples" in p for p in images("synth"))
    metrics = _child(pipeline, "train_global").data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_registered_version_holds_what_serving_needs_and_links_the_checkpoint(pipeline, tmp_path):
    import mlflow

    from components.export import file_sha256
    from model.synth import render_scene

    client = pipeline["client"]
    mv = client.get_model_version_by_alias(NAME, "champion")
    local = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{NAME}/{mv.version}",
            dst_path=str(tmp_path / "m"),
            tracking_uri=pipeline["uri"],
        )
    )
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {f for f in files if f.startswith("artifacts/")} == {"artifacts/model.onnx"}
    assert "code/model/model_contract.py" in files and not [f for f in files if ".pth" in f]
    # the checkpoint: linked to the features run that logged it, the file that was exported
    features = _child(pipeline, "features")
    assert mv.tags["checkpoint_uri"] == f"runs:/{features.info.run_id}/checkpoint/model.pth"
    got = mlflow.artifacts.download_artifacts(
        mv.tags["checkpoint_uri"], dst_path=str(tmp_path / "c"), tracking_uri=pipeline["uri"]
    )
    assert file_sha256(got) == file_sha256(pipeline["d"] / "features" / "model.pth")
    # a street scene of the bundled renderer as input example
    example = json.loads((local / "input_example.json").read_text())["inputs"]
    scene = render_scene(np.random.default_rng(0), 64, 32)
    assert np.array_equal(np.asarray(example["label"])[0, 0], scene.label)
    assert np.array_equal(np.asarray(example["instance"])[0, 0], scene.instance)
    evaluation = json.loads((pipeline["d"] / "evaluate" / "evaluation.json").read_text())
    assert evaluation["dataset_hash"] in mv.description
    assert f"mean IoU {evaluation['scores']['mean_iou']:.4f}" in mv.description
    assert client.get_registered_model(NAME).description
    # lineage from the version: its run is the export step of this execution
    export = _child(pipeline, "export")
    assert mv.run_id == export.info.run_id
    assert export.data.tags["registered_version"] == f"{NAME}/{mv.version}"
    assert export.data.tags["evaluate_run_id"] == _child(pipeline, "evaluate").info.run_id
    promote = client.get_run(_child(pipeline, "promote").info.run_id)  # search omits models
    assert [m.model_id for m in promote.inputs.model_inputs] == [mv.source.split("/")[-1]]
    assert promote.data.tags["promoted"] == "true"


def test_a_step_alone_gets_a_standalone_run(store, tmp_path, monkeypatch):
    import mlflow

    uri = store
    monkeypatch.delenv(PIPELINE_RUN_ENV, raising=False)
    tracker = Tracker(tracking_uri=uri)
    tracker.start("alone", "synth", {"stage": "synth"})
    tracker.end()
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert PARENT_TAG not in run.data.tags and "pipeline_run" not in run.data.tags
    mlflow.set_tracking_uri("")


RACER = """
import pathlib, sys, time
from components.tracking import Tracker
sync, name = pathlib.Path(sys.argv[1]), sys.argv[2]
(sync / f"ready-{name}").touch()
while not (sync / "go").exists():  # all steps start together
    time.sleep(0.005)
tracker = Tracker()
tracker.start("race", name, {"stage": name, "git_sha": "x", "orchestrator": "dvc"})
time.sleep(0.5)
tracker.end()
print(tracker.parent_id)
"""


def test_steps_starting_at_once_end_under_one_parent(store, tmp_path):
    """Four step processes start at once on a fresh execution id: they may create more
    than one parent, but end under one (the oldest), the others merged and deleted."""
    import mlflow

    uri = store
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("race")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, PIPELINE_RUN_ENV: "race-1"}
    names = ["a", "b", "c", "d"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), n],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in names
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(names) and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    parents = client.search_runs([experiment], f"tags.{ROLE_TAG} = 'parent'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    runs = client.search_runs([experiment], f"tags.`{PARENT_TAG}` = '{parent}'")
    assert sorted(r.info.run_name for r in runs) == names
    assert parents[0].info.status == "FINISHED"


def test_a_duplicate_parent_is_merged_into_the_oldest(store, tmp_path):
    """Clock skew or a slow search: a later step finds two parents. The oldest wins;
    the other's children move under it and it is deleted."""
    import mlflow

    uri = store
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("merge")
    tags = {"pipeline_run": "m-1", ROLE_TAG: "parent"}
    old = client.create_run(experiment, start_time=1000, tags=tags).info.run_id
    young = client.create_run(experiment, start_time=2000, tags=tags).info.run_id
    child = client.create_run(experiment, tags={PARENT_TAG: young}).info.run_id
    assert pipeline_parent(client, experiment, "m-1", {}) == old
    assert client.get_run(child).data.tags[PARENT_TAG] == old
    assert client.get_run(young).info.lifecycle_stage == "deleted"
    assert pipeline_parent(client, experiment, "m-1", {}) == old  # stable
