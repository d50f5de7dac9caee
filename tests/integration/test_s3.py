"""S3 I/O against a real S3 protocol server on loopback (moto's server, started in conftest):
boto3 staging through the CLI, clear errors, a DVC push/pull and an MLflow artifact
round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import storage
from model.errors import InputError
from pix2pixhd.cli import main


def test_upload_fetch_round_trip_file_and_tree(s3, tmp_path):
    _, bucket = s3
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "x.txt").write_text("x")
    (tree / "a" / "b" / "y.bin").write_bytes(bytes(range(256)))
    assert storage.upload(tree, f"s3://{bucket}/data/tree") == 2
    got = storage.fetch(f"s3://{bucket}/data/tree/")
    assert (got / "x.txt").read_text() == "x"
    assert (got / "a" / "b" / "y.bin").read_bytes() == bytes(range(256))
    one = storage.fetch(f"s3://{bucket}/data/tree/a/b/y.bin")
    assert one.is_file() and one.read_bytes() == bytes(range(256))


def test_clear_errors(s3, monkeypatch):
    _, bucket = s3
    with pytest.raises(InputError, match=f"s3://{bucket}/nothing/here: no such object"):
        storage.fetch(f"s3://{bucket}/nothing/here")
    with pytest.raises(InputError, match="no such bucket"):
        storage.fetch("s3://no-such-bucket-xyz/k")
    with pytest.raises(InputError, match="expected an s3://bucket/key"):
        storage.S3Uri.parse("/local/path")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(InputError, match="no S3 credentials: set AWS_ACCESS_KEY_ID"):
        storage.fetch(f"s3://{bucket}/k")


def test_cli_reads_and_writes_s3(s3, capsys):
    _, bucket = s3
    args = ["data", "synth", "--out", f"s3://{bucket}/ds", "--num-train", "2"]
    assert main([*args, "--num-val", "1", "--width", "128", "--height", "64"]) == 0
    keys = [o["Key"] for o in storage.client().list_objects_v2(Bucket=bucket)["Contents"]]
    labels = [k for k in keys if k.endswith("_gtFine_labelIds.png")]
    assert len(labels) == 3 and all(k.startswith("ds/") for k in keys)
    out = f"s3://{bucket}/runs/validate"
    assert main(["validate", "--data", f"s3://{bucket}/ds", "--out", out]) == 0
    summary = storage.fetch(f"{out}/summary.json")
    assert '"samples"' in summary.read_text()
    capsys.readouterr()
    code = main(["boundaries", "--data", f"s3://{bucket}/missing", "--out", "/tmp/x"])
    assert code == 2
    assert f"s3://{bucket}/missing: no such object or prefix" in capsys.readouterr().err


def test_file_output_is_published_with_what_the_step_wrote_beside_it(s3):
    import argparse

    from pix2pixhd.cli import _staged

    _, bucket = s3
    args = argparse.Namespace(out=f"s3://{bucket}/models/v1/model.onnx", checkpoint=Path("x"))
    with _staged(args) as local:
        assert local.checkpoint == Path("x") and local.out.name == "model.onnx"
        local.out.write_bytes(b"onnx")
        (local.out.parent / "model_fp16.onnx").write_bytes(b"fp16")
    keys = {o["Key"] for o in storage.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"models/v1/model.onnx", "models/v1/model_fp16.onnx"} <= keys
    assert storage.fetch(f"s3://{bucket}/models/v1/model.onnx").read_bytes() == b"onnx"


def _env(server: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_S3_ENDPOINT_URL=server,
    )
    return env


def test_dvc_push_pull(s3, tmp_path):
    server, bucket = s3
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    env = _env(server)

    def sh(*args: str) -> None:
        subprocess.run([*dvc, *args], cwd=repo, env=env, check=True, capture_output=True)

    sh("init", "--no-scm")
    sh("remote", "add", "-d", "store", f"s3://{bucket}/dvcstore")
    sh("remote", "modify", "store", "endpointurl", server)
    img = np.random.default_rng(0).integers(0, 255, (16, 32, 3), dtype=np.uint8)
    (repo / "data").mkdir()
    Image.fromarray(img).save(repo / "data" / "a.png")
    sh("add", "data")
    sh("push")
    import shutil

    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    sh("pull")
    assert np.array_equal(np.asarray(Image.open(repo / "data" / "a.png")), img)


def test_mlflow_artifact_round_trip(s3, tmp_path, monkeypatch):
    import mlflow

    server, bucket = s3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", server)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("s3test", artifact_location=f"s3://{bucket}/mlflow")
        payload = tmp_path / "metrics.json"
        payload.write_text('{"mean_iou": 0.5}')
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(payload), artifact_path="eval")
        got = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="eval/metrics.json", dst_path=str(tmp_path / "dl")
        )
        assert Path(got).read_text() == '{"mean_iou": 0.5}'
        keys = [o["Key"] for o in storage.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert any(k.startswith("mlflow/") and k.endswith("eval/metrics.json") for k in keys)
    finally:
        mlflow.set_tracking_uri("")


def test_two_arguments_naming_one_prefix_fetch_it_once(s3, tmp_path, monkeypatch):
    import argparse

    from pix2pixhd.cli import _staged

    _, bucket = s3
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "a.png").write_bytes(b"png")
    storage.upload(tmp_path / "maps", f"s3://{bucket}/val")
    calls = []
    real_fetch = storage.fetch
    monkeypatch.setattr(storage, "fetch", lambda uri: calls.append(uri) or real_fetch(uri))
    uri = f"s3://{bucket}/val/"
    with _staged(argparse.Namespace(labels=uri, instances=uri)) as local:
        assert local.labels == local.instances and (local.labels / "a.png").read_bytes() == b"png"
    assert calls == [uri]


def test_a_fetched_prefix_is_cached_by_etag(s3, tmp_path, monkeypatch):
    _, bucket = s3
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (tree / name).write_text(name)
    storage.upload(tree, f"s3://{bucket}/cached")
    got = []
    real_get = storage._get
    monkeypatch.setattr(storage, "_get", lambda s3, b, k, d: got.append(k) or real_get(s3, b, k, d))
    local = storage.fetch(f"s3://{bucket}/cached/", cache=tmp_path / "cache")
    assert sorted(got) == ["cached/a.txt", "cached/b.txt", "cached/c.txt"]
    got.clear()
    assert storage.fetch(f"s3://{bucket}/cached/", cache=tmp_path / "cache") == local
    assert got == []  # unchanged: nothing fetched again
    (tree / "b.txt").write_text("changed")
    storage.upload(tree / "b.txt", f"s3://{bucket}/cached/b.txt")
    storage.client().delete_object(Bucket=bucket, Key="cached/c.txt")
    storage.fetch(f"s3://{bucket}/cached/", cache=tmp_path / "cache")
    assert got == ["cached/b.txt"] and (local / "b.txt").read_text() == "changed"
    assert not (local / "c.txt").exists()  # deleted in the store, gone here


def test_a_refusing_endpoint_fails_within_seconds_naming_the_uri(monkeypatch):
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    start = time.perf_counter()
    with pytest.raises(InputError, match="s3://bucket/key"):
        storage.fetch("s3://bucket/key")
    assert time.perf_counter() - start < 10


def test_any_path_option_takes_an_s3_uri(s3, tmp_path):
    """data convert --out s3://... publishes to the store (it wrote a local directory
    named 's3:' before), like every step's locations."""
    _, bucket = s3
    (tmp_path / "colour").mkdir()
    road = np.zeros((8, 16, 3), np.uint8) + np.array([128, 64, 128], np.uint8)
    Image.fromarray(road).save(tmp_path / "colour" / "a.png")
    out = f"s3://{bucket}/converted/"
    assert (
        main(
            [
                "data",
                "convert",
                "--palette",
                "cityscapes",
                "--labels",
                str(tmp_path / "colour"),
                "--out",
                out,
            ]
        )
        == 0
    )
    got = storage.fetch(out, cache=tmp_path / "cache")
    assert (np.asarray(Image.open(got / "a.png")) == 7).all()  # road's label id
    assert not Path("s3:").exists()
