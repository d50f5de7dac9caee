"""ONNX export: graph checks, metadata, parity with PyTorch at two sizes, and
`generate --onnx` giving the same images as `generate --checkpoint`."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from components import export
from components.cli import main
from model.checkpoint import model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.export import example_inputs
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config

CFG = tiny_config(
    use_instance_features=True,
    generator=GeneratorConfig(
        ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    ),
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(3)
    model = Pix2PixHD(CFG, with_discriminator=False).eval()
    payload = model_payload(model)
    payload["cluster_centers"] = {
        6000 // 1000 - 1: torch.tensor([[0.5, -0.5, 0.2]]),
        3: torch.tensor([[0.1, 0.2, 0.3], [-0.3, 0.0, 0.9]]),
    }
    ckpt = save_checkpoint(root / "model.pth", payload)
    summary = export.run(ckpt, root / "model.onnx", fp16=True, tracking=False)
    return root, model, ckpt, summary


def test_graph_inputs_metadata_and_parity(exported):
    root, model, _, summary = exported
    proto = onnx.load(str(root / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["label_nc"] == "6" and meta["size_multiple"] == "8" and "version" in meta
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    assert list(inputs) == ["label", "instance", "features"]
    assert inputs["label"][0] == "tensor(int64)" and inputs["features"][1][1] == 3
    assert [o.name for o in session.get_outputs()] == ["image"]
    assert summary["max_abs_diff_vs_torch"] <= 1e-4
    for n, h, w in ((1, 16, 24), (3, 40, 32)):  # dynamic batch and size
        label, inst, feats = example_inputs(model, n, h, w)
        got = session.run(
            None, {"label": label.numpy(), "instance": inst.numpy(), "features": feats.numpy()}
        )[0]
        ref = model.generate(label, inst, features=feats).numpy()
        assert got.shape == (n, 3, h, w) and np.abs(got - ref).max() <= 1e-4
    half = ort.InferenceSession(str(root / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    out = half.run(
        None, {"label": label.numpy(), "instance": inst.numpy(), "features": feats.numpy()}
    )[0]
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.05


def test_generate_with_onnx_equals_pytorch(exported, tmp_path):
    root, _, ckpt, _ = exported
    labels = tmp_path / "labels"
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        lab = rng.integers(0, 6, (24, 40)).astype(np.uint8)
        Image.fromarray(lab).save(labels / f"s{i}_gtFine_labelIds.png")
        inst = (lab.astype(np.uint16) * 1000 + rng.integers(0, 2, lab.shape)).astype(np.uint16)
        Image.fromarray(inst).save(labels / f"s{i}_gtFine_instanceIds.png")
    common = ["--labels", str(labels), "--instances", str(labels), "--seed", "5"]
    assert (
        main(["generate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pt"), *common]) == 0
    )
    assert (
        main(
            ["generate", "--onnx", str(root / "model.onnx"), "--out", str(tmp_path / "ox"), *common]
        )
        == 0
    )
    for i in range(2):
        a = np.asarray(Image.open(tmp_path / "pt" / f"s{i}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "ox" / f"s{i}.png")).astype(int)
        assert a.shape == (24, 40, 3) and np.abs(a - b).max() <= 1
