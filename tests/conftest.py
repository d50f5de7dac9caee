from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model.config import (
    DiscriminatorConfig,
    EncoderConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
)
from tests.servers import (  # noqa: F401 (fixtures: PostgreSQL + MLflow servers)
    _s3_for_mlflow,
    mlflow_server,
    mlflow_uri,
    postgres,
    start_mlflow_server,
)


@pytest.fixture(scope="session", autouse=True)
def _private_tracking_store(tmp_path_factory):
    """Every step logs to MLflow by default (sqlite:///mlflow.db in the working
    directory): the tests get a store of their own, migrated once, and a working
    directory of their own for MLflow's relative artifact root, so nothing lands in the
    checkout and no test pays a fresh database's migration. Tests that need a real
    tracking server set MLFLOW_TRACKING_URI themselves (tests.servers)."""
    import os

    home = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    cwd = Path.cwd()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(home)
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)  # creates and migrates it once
        yield uri
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _tracking_uri_between_tests(_private_tracking_store):
    """A test that resets MLflow's global URI with ``set_tracking_uri("")`` leaves "" for
    the next one, which MLflow reads as the ./mlruns file store: such a URI is put back
    to the store of the environment (the private one, or a module's own)."""
    import os
    import sys

    def restore() -> None:
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None and mlflow.get_tracking_uri() in ("", "./mlruns"):
            mlflow.set_tracking_uri(
                os.environ.get("MLFLOW_TRACKING_URI") or _private_tracking_store
            )

    restore()
    yield
    restore()


# `pipeline run --arg` values of the tiny DAG (the local kfp runs, outside and in containers)
TINY_PIPELINE_ARGS = (
    "num_train=4",
    "num_val=2",
    "width=128",
    "height=64",
    "niter_global=1",
    "niter_decay_global=0",
    "niter_local=1",
    "niter_decay_local=0",
    'overrides=["segmenter.epochs=1", "train_local.niter_fix_global=0"]',
)


def write_label_maps(folder: Path, count: int, size: tuple[int, int], classes: int = 6) -> Path:
    """``count`` random Cityscapes-layout label + instance maps (size = (H, W)) in ``folder``;
    instance ids are label * 1000 + 0 or 1. Seeded: the same call writes the same files."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        lab = rng.integers(0, classes, size).astype(np.uint8)
        Image.fromarray(lab).save(folder / f"s{i}_gtFine_labelIds.png")
        inst = (lab.astype(np.uint16) * 1000 + rng.integers(0, 2, lab.shape)).astype(np.uint16)
        Image.fromarray(inst).save(folder / f"s{i}_gtFine_instanceIds.png")
    return folder


def tiny_config(**overrides) -> ModelConfig:
    """A tiny model: ngf 4-8, for 32x64 images."""
    base = dict(
        label_nc=6,
        use_instance_map=True,
        use_instance_features=False,
        generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=1),
        discriminator=DiscriminatorConfig(num_D=2, n_layers_D=2, ndf=8),
        encoder=EncoderConfig(nef=4, n_downsample_E=2),
        loss=LossConfig(use_vgg_loss=False),
    )
    base.update(overrides)
    return ModelConfig(**base)


def save_tiny_segmenter(path: Path) -> Path:
    """An untrained light PSPNet saved as the segmenter step saves it."""
    from components.params import SegmenterParams
    from components.segmenter import pspnet_config
    from model.checkpoint import save_checkpoint
    from model.pspnet import PSPNet

    params = SegmenterParams(backbone="light")
    return save_checkpoint(
        path,
        {
            "kind": "segmenter",
            "segmenter_params": dataclasses.asdict(params),
            "state_dict": PSPNet(pspnet_config(params)).state_dict(),
        },
    )


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# S3: a real S3 protocol server (moto's) on loopback, and a fresh bucket per test
@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("PIX2PIXHD_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("PIX2PIXHD_CACHE", str(tmp_path / "cache"))
    bucket = f"b{abs(hash(str(tmp_path))) % 10**8}"
    from components import storage

    storage.client().create_bucket(Bucket=bucket)
    return s3_server, bucket
