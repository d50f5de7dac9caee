"""The inference engine: ONNX Runtime by default on a graph exported once per checkpoint
content and cached beside it, PyTorch on request; both agree within the export parity
tolerance."""

import numpy as np
import pytest
import torch
from PIL import Image

from components import engine, generate
from components.export import PARITY_ATOL
from components.generate import generate_batch
from model.checkpoint import model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.errors import InputError
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config

CFG = tiny_config(
    use_instance_features=True,
    generator=GeneratorConfig(
        ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    ),
)
CENTRES = {2: torch.tensor([[0.5, -0.5, 0.2]]), 3: torch.tensor([[0.1, 0.2, 0.3]])}


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    payload = model_payload(Pix2PixHD(CFG, with_discriminator=False).eval())
    payload["cluster_centers"] = CENTRES
    return save_checkpoint(path, payload)


def _sample(h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    lab = torch.from_numpy(rng.integers(0, 6, (1, h, w)))
    inst = lab * 1000 + torch.from_numpy(rng.integers(0, 2, (1, h, w)))
    return {"label": lab, "instance": inst}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("engine") / "model.pth", 0)


def test_default_is_onnx_on_a_cached_graph_that_agrees_with_torch(ckpt):
    tmp_path = ckpt.parent
    onnx_gen = generate.load_generator(checkpoint=ckpt)  # default: auto
    torch_gen = generate.load_generator(checkpoint=ckpt, engine="torch")
    assert (onnx_gen.engine, torch_gen.engine) == ("onnx", "torch")
    cached = list(tmp_path.glob("model.pth.*.onnx"))
    assert cached == [engine.cached_onnx_path(ckpt)]
    assert cached[0].name == f"model.pth.{engine.file_hash(ckpt)[:16]}.onnx"
    # padded to the size multiple (and to the graph's smallest size, 16) and cropped back
    for h, w in ((24, 40), (16, 16), (2, 2)):
        a = generate_batch(onnx_gen, [_sample(h, w)], seed=1)[0]
        b = generate_batch(torch_gen, [_sample(h, w)], seed=1)[0]
        assert a.shape == (3, h, w) and float((a - b).abs().max()) <= PARITY_ATOL
    # reused, not exported again
    stamp = cached[0].stat().st_mtime_ns
    generate.load_generator(checkpoint=ckpt, engine="onnx")
    assert cached[0].stat().st_mtime_ns == stamp


def test_changed_checkpoint_exports_again_and_drops_the_stale_graph(tmp_path):
    ckpt = _checkpoint(tmp_path / "model.pth", 0)
    first = engine.cached_onnx(ckpt)
    _checkpoint(ckpt, 1)  # new weights, same file name
    second = engine.cached_onnx(ckpt)
    assert second != first and second.is_file() and not first.exists()
    gen = generate.load_generator(checkpoint=ckpt)
    ref = generate.load_generator(checkpoint=ckpt, engine="torch")
    a = generate_batch(gen, [_sample()], seed=0)[0]
    b = generate_batch(ref, [_sample()], seed=0)[0]
    assert float((a - b).abs().max()) <= PARITY_ATOL  # the new weights, not the old graph
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left


def test_read_only_folder_caches_elsewhere(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(engine, "_writable", lambda folder: False)
    monkeypatch.setenv("PIX2PIXHD_CACHE", str(tmp_path / "cache"))
    digest = engine.file_hash(ckpt)[:16]
    assert engine.cached_onnx_path(ckpt) == tmp_path / "cache/onnx" / f"model.pth.{digest}.onnx"


def test_engine_choice_and_errors(ckpt, tmp_path):
    # photos to encode features from need the encoder: auto falls back, onnx refuses
    assert generate.load_generator(checkpoint=ckpt, encode_photos=True).engine == "torch"
    with pytest.raises(InputError, match="encoder"):
        generate.load_generator(checkpoint=ckpt, engine="onnx", encode_photos=True)
    with pytest.raises(InputError, match="expected one of auto, onnx, torch"):
        generate.load_generator(checkpoint=ckpt, engine="tensorrt")
    with pytest.raises(InputError, match="--engine torch needs --checkpoint"):
        generate.load_generator(onnx=tmp_path / "x.onnx", engine="torch")
    with pytest.raises(InputError, match="no such checkpoint"):
        generate.load_generator(checkpoint=tmp_path / "missing.pth", engine="onnx")


def test_generate_run_reports_the_engine(ckpt, tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    s = _sample()
    Image.fromarray(s["label"][0].numpy().astype(np.uint8)).save(labels / "a_gtFine_labelIds.png")
    inst = s["instance"][0].numpy().astype(np.uint16)
    Image.fromarray(inst).save(labels / "a_gtFine_instanceIds.png")
    out = {}
    for eng in ("auto", "torch"):
        summary = generate.run(ckpt, labels, tmp_path / eng, instances=labels, engine=eng)
        assert summary["engine"] == ("onnx" if eng == "auto" else "torch")
        out[eng] = np.asarray(Image.open(tmp_path / eng / "a.png")).astype(int)
    assert np.abs(out["auto"] - out["torch"]).max() <= 1
