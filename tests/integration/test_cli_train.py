"""`pix2pixhd train / features / generate` end to end on a tiny configuration:
SIGKILL mid-epoch and --resume equals an uninterrupted run; MLflow tracking against a
real SQLite store; a tracking failure does not stop training."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from components import synth
from model.checkpoint import load_checkpoint
from model.fileio import numbers_only
from pix2pixhd.cli import main

TINY = [
    "data.width=64",
    "data.height=32",
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
    "train_global.niter_decay=1",
    "train_global.batch_size=1",
    "train_global.checkpoint_every=3",
    "train_global.log_every=1",
    "train_global.sample_every=5",
    "train_local.niter=1",
    "train_local.niter_decay=1",
    "train_local.niter_fix_global=1",
    "train_local.batch_size=2",
    "train_local.log_every=1",
    "features.min_area=0.001",
    "segmenter.backbone=light",
    "segmenter.epochs=2",
    "segmenter.batch_size=4",
]


def _sets(extra=()):
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "synth"
    synth.run(root, num_train=12, num_val=2, width=64, height=32, seed=2)
    return root


def _cli(args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "pix2pixhd", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(data, tmp_path):
    args = ["train", "--stage", "global", "--data", data, "--no-tracking", *_sets()]
    full = _cli([*args, "--out", tmp_path / "full"])
    # the interrupted run logs to MLflow: its resumed attempt must go on in the same run
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = [a for a in args if a != "--no-tracking"] + ["--tracking-uri", store]
    victim = _cli([*tracked, "--out", tmp_path / "killed"])
    ckpt = tmp_path / "killed" / "latest.pth"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    state = load_checkpoint(ckpt)
    assert 0 < state["global_step"] < 36 and state["batch_in_epoch"] > 0  # mid-epoch
    resumed = _cli([*tracked, "--out", tmp_path / "killed", "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert full.wait(timeout=300) == 0, full.stderr.read()
    a = load_checkpoint(tmp_path / "full" / "latest.pth")
    b = load_checkpoint(ckpt)
    assert a["global_step"] == b["global_step"] == 36
    for net in ("G", "D", "E"):
        for k, v in a[net].items():
            assert torch.equal(v, b[net][k]), f"{net}.{k}"
    # the loss curve has each step once, even though steps after the checkpoint ran twice
    steps = [
        line.split(",")[0]
        for line in (tmp_path / "killed" / "losses.csv").read_text().splitlines()[1:]
    ]
    assert steps == [str(i) for i in range(1, 37)]
    # ... and so has MLflow: one run, finished, each step's losses logged once
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "attributes.run_name = 'train_global'",
    )
    assert run.info.status == "FINISHED"
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "G_total")]
    assert sorted(logged) == list(range(1, 37)), logged


def test_global_local_features_generate_with_mlflow(data, tmp_path, monkeypatch, mlflow_uri):
    """train -> features -> evaluate -> export -> promote against the real tracking
    server (PostgreSQL, artifacts on S3), then the champion loads and predicts."""
    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    g, loc, feats = tmp_path / "g", tmp_path / "l", tmp_path / "f"
    assert (
        main(
            [
                "train",
                "--stage",
                "global",
                "--data",
                str(data),
                "--out",
                str(g),
                "--tracking-uri",
                uri,
                *_sets(),
            ]
        )
        == 0
    )
    metrics = json.loads((g / "metrics.json").read_text())  # numbers only
    summary = json.loads((g / "summary.json").read_text())  # with paths and ids
    assert metrics["iterations"] == 36 and summary["image_size"] == [32, 16]
    assert metrics == numbers_only(summary) and "mlflow_run_id" not in metrics
    assert (g / "samples.png").is_file()
    # DVC-tracked files hold no wall-clock numbers; they are beside, declared nowhere
    assert "seconds" not in summary and "seconds" not in metrics
    assert json.loads((g / "timings.json").read_text())["seconds"] > 0

    import mlflow

    client = mlflow.MlflowClient(uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["model.generator.ngf"] == "8"  # the global part of ngf 4 x 2
    assert run.data.params["train.niter"] == "2"
    assert run.data.tags["orchestrator"] == "cli" and run.data.tags["stage"] == "global"
    assert len(run.data.tags["git_sha"]) in (40, 7) or run.data.tags["git_sha"] == "unknown"
    history = client.get_metric_history(run.info.run_id, "G_total")
    assert [m.step for m in history] == list(range(1, 37))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "samples", "metrics.json"} <= artifacts

    assert (
        main(
            [
                "train",
                "--stage",
                "local",
                "--data",
                str(data),
                "--out",
                str(loc),
                "--init",
                str(g / "latest.pth"),
                "--no-tracking",
                *_sets(),
            ]
        )
        == 0
    )
    local = load_checkpoint(loc / "latest.pth")
    assert local["stage"] == "local" and local["image_size"] == [64, 32]
    assert (
        main(
            [
                "features",
                "--checkpoint",
                str(loc / "latest.pth"),
                "--data",
                str(data),
                "--out",
                str(feats),
                *_sets(),
            ]
        )
        == 0
    )
    summary = json.loads((feats / "features_summary.json").read_text())
    assert summary["instances_clustered"] > 0 and "road" in summary["classes"]
    ckpt = load_checkpoint(feats / "model.pth")
    assert all(v.shape[1] == 3 for v in ckpt["cluster_centers"].values())
    out = tmp_path / "gen"
    labels = data / "gtFine" / "val"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(feats / "model.pth"),
                "--labels",
                str(labels),
                "--instances",
                str(labels),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert len(list(out.glob("*.png"))) == 2

    seg, ev = tmp_path / "seg", tmp_path / "eval"
    assert main(["segmenter", "train", "--data", str(data), "--out", str(seg), *_sets()]) == 0
    oracle = json.loads((seg / "metrics.json").read_text())
    assert 0 <= oracle["val_real_pixel_accuracy"] <= 1 and "seconds" not in oracle
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(feats / "model.pth"),
                "--segmenter",
                str(seg / "segmenter.pth"),
                "--data",
                str(data),
                "--out",
                str(ev),
                "--tracking-uri",
                uri,
                *_sets(),
            ]
        )
        == 0
    )
    scores = json.loads((ev / "metrics.json").read_text())
    assert scores["real"]["mean_iou"] == pytest.approx(oracle["val_real_mean_iou"])
    assert 0 <= scores["generated"]["pixel_accuracy"] <= 1 and scores["images"] == 2
    assert (ev / "samples.png").is_file() and (ev / "iou_per_class.csv").is_file()
    evaluation = json.loads((ev / "evaluation.json").read_text())
    ev_run = client.get_run(evaluation["run_id"])
    assert ev_run.data.metrics["generated_mean_iou"] == pytest.approx(
        scores["generated"]["mean_iou"]
    )
    assert ev_run.data.params["evaluate.model_name"] == "pix2pixhd-generator"
    (ds_input,) = ev_run.inputs.dataset_inputs
    summary_hash = evaluation["dataset_hash"]
    assert {t.key: t.value for t in ds_input.tags}["dataset_hash"] == summary_hash
    exp = tmp_path / "export"
    args = ["--checkpoint", str(feats / "model.pth"), "--out", str(exp / "model.onnx")]
    args += ["--evaluation", str(ev / "evaluation.json"), "--tracking-uri", uri, "--no-fp16"]
    assert main(["export", *args, *_sets()]) == 0
    registration = json.loads((exp / "registration.json").read_text())
    decision = tmp_path / "promote.json"
    assert (
        main(
            [
                "promote",
                "--registration",
                str(exp / "registration.json"),
                "--tracking-uri",
                uri,
                "--out",
                str(decision),
            ]
        )
        == 0
    )
    assert json.loads(decision.read_text())["promoted"] is True
    decided = json.loads((tmp_path / "promote_metrics.json").read_text())
    assert decided == numbers_only(json.loads(decision.read_text())) and "mean_iou" in decided
    champion = client.get_model_version_by_alias("pix2pixhd-generator", "champion")
    assert str(champion.version) == registration["version"]
    assert champion.tags["promotion"] == "passed"
    assert float(champion.tags["mean_iou"]) == pytest.approx(scores["generated"]["mean_iou"])
    assert champion.tags["evaluate_run_id"] == evaluation["run_id"]
    export_run = client.get_run(champion.run_id)  # lineage: export run -> evaluate run
    assert export_run.data.tags["evaluate_run_id"] == evaluation["run_id"]
    model = mlflow.pyfunc.load_model("models:/pix2pixhd-generator@champion")
    lab = data / "gtFine" / "val"
    from model.image_io import read_instance, read_label

    label = read_label(sorted(lab.rglob("*_labelIds.png"))[0]).astype("int64")[None, None]
    inst = read_instance(sorted(lab.rglob("*_instanceIds.png"))[0]).astype("int64")[None, None]
    image = model.predict({"label": label, "instance": inst})
    assert image.shape == (1, 3, 32, 64) and image.dtype == "float32"
    assert abs(image).max() <= 1
    # the same pipeline again: the same checkpoint is not registered a second time
    assert main(["export", *args, *_sets()]) == 0
    again = json.loads((exp / "registration.json").read_text())
    assert again["version"] == registration["version"] and again["reused"] is True


def test_tracking_failure_does_not_stop_training(data, tmp_path, monkeypatch, caplog):
    import mlflow

    def broken(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(mlflow, "log_metrics", broken)
    monkeypatch.setattr(mlflow, "log_artifact", broken)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main(
        [
            "train",
            "--stage",
            "global",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "g"),
            "--tracking-uri",
            uri,
            *_sets(["train_global.niter=1", "train_global.niter_decay=0"]),
        ]
    )
    assert code == 0
    assert load_checkpoint(tmp_path / "g" / "latest.pth")["global_step"] == 12
    assert "tracking server went away" in caplog.text and "off for the rest" in caplog.text


def test_local_stage_needs_init(data, tmp_path, capsys):
    code = main(
        [
            "train",
            "--stage",
            "local",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "l"),
            "--no-tracking",
            *_sets(),
        ]
    )
    assert code == 2 and "--init" in capsys.readouterr().err


def test_vgg_loss_without_weights_is_a_clear_error(data, tmp_path, capsys):
    code = main(
        [
            "train",
            "--stage",
            "global",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "g"),
            "--no-tracking",
            *_sets(["model.loss.use_vgg_loss=true"]),
        ]
    )
    assert code == 2 and "vgg19-dcbb9e9d.pth" in capsys.readouterr().err
