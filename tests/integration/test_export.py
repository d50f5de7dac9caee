"""ONNX export: graph checks, metadata, parity with PyTorch at two sizes, and
`generate --onnx` giving the same images as `generate --checkpoint`."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from components import export
from model.checkpoint import model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.export import example_inputs
from model.pix2pixhd import Pix2PixHD
from pix2pixhd.cli import main
from tests.conftest import tiny_config, write_label_maps

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
    labels = write_label_maps(tmp_path / "labels", 2, (24, 40))
    common = ["--labels", str(labels), "--instances", str(labels), "--seed", "5"]
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(ckpt),
                "--engine",
                "torch",
                "--out",
                str(tmp_path / "pt"),
                *common,
            ]
        )
        == 0
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


def test_edit_and_samples(exported, tmp_path):
    import json

    _, _, ckpt, _ = exported
    lab = np.full((24, 40), 2, np.uint8)
    lab[8:16, 4:14], lab[8:16, 14:24] = 3, 3
    inst = lab.astype(np.uint16)
    inst[8:16, 4:14], inst[8:16, 14:24] = 3000, 3001
    Image.fromarray(lab).save(tmp_path / "l.png")
    Image.fromarray(inst).save(tmp_path / "i.png")
    (tmp_path / "edits.json").write_text(
        json.dumps(
            {
                "edits": [
                    {"op": "style", "instance": 3000, "cluster": 1},
                    {"op": "relabel", "instance": 3001, "to": 4},
                ]
            }
        )
    )
    args = [
        "edit",
        "--checkpoint",
        str(ckpt),
        "--labels",
        str(tmp_path / "l.png"),
        "--instances",
        str(tmp_path / "i.png"),
        "--edits",
        str(tmp_path / "edits.json"),
        "--samples",
        "3",
        "--seed",
        "1",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0  # ONNX Runtime (the default)
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert main([*args, "--engine", "torch", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "a/edit_summary.json").read_text())["engine"] == "onnx"
    for name in ("before.png", "after.png", "sample_02.png"):  # the engines agree
        a = np.asarray(Image.open(tmp_path / "a" / name)).astype(int)
        t = np.asarray(Image.open(tmp_path / "t" / name)).astype(int)
        assert np.abs(a - t).max() <= 1
    edited = np.asarray(Image.open(tmp_path / "a" / "labels.png"))
    assert (edited[8:16, 14:24] == 4).all() and (edited[8:16, 4:14] == 3).all()
    before = np.asarray(Image.open(tmp_path / "a" / "before.png"))
    after = np.asarray(Image.open(tmp_path / "a" / "after.png"))
    assert before.shape == after.shape == (24, 40, 3) and (before != after).any()
    for k in range(3):  # deterministic for a seed
        a = np.asarray(Image.open(tmp_path / "a" / f"sample_{k:02d}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"sample_{k:02d}.png"))
        assert np.array_equal(a, b)
    # the edited map has no free instance left (3000 styled, 3001 now class 4 without
    # clusters): every sample is the same. Without edits both cars draw their centres.
    same = [np.asarray(Image.open(tmp_path / "a" / f"sample_{k:02d}.png")) for k in range(3)]
    assert all(np.array_equal(same[0], x) for x in same[1:])
    free = [a for a in args if a not in ("--edits", str(tmp_path / "edits.json"))]
    assert main([*free, "--samples", "4", "--out", str(tmp_path / "c")]) == 0
    draws = [np.asarray(Image.open(tmp_path / "c" / f"sample_{k:02d}.png")) for k in range(4)]
    assert any((draws[0] != x).any() for x in draws[1:])


def test_edit_errors_exit_2(exported, tmp_path, capsys):
    _, _, ckpt, _ = exported
    Image.fromarray(np.full((16, 24), 3, np.uint8)).save(tmp_path / "l.png")
    Image.fromarray(np.full((16, 24), 3000, np.uint16)).save(tmp_path / "i.png")
    (tmp_path / "e.json").write_text('{"edits": [{"op": "style", "instance": 3000, "cluster": 7}]}')
    code = main(
        [
            "edit",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(tmp_path / "l.png"),
            "--instances",
            str(tmp_path / "i.png"),
            "--edits",
            str(tmp_path / "e.json"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2 and "cluster 7 is out of range: class 3 has 2" in capsys.readouterr().err


def test_edit_style_from_a_reference_photo(exported, tmp_path, capsys):
    import json

    _, _, ckpt, _ = exported
    lab = np.full((24, 40), 2, np.uint8)
    lab[8:16, 4:20] = 3
    inst = lab.astype(np.uint16)
    inst[8:16, 4:20] = 3000
    Image.fromarray(lab).save(tmp_path / "l.png")
    Image.fromarray(inst).save(tmp_path / "i.png")
    Image.fromarray(inst).save(tmp_path / "ref_inst.png")  # the reference: same layout
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # two reference photos with different textures
        Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"ref_{name}.png"
        )

    def run(ref: str, out: str, photo_instance: int = 3000) -> int:
        edit = {"op": "style", "instance": 3000, "photo": f"ref_{ref}.png"}
        edit.update(photo_instances="ref_inst.png", photo_instance=photo_instance)
        (tmp_path / f"{out}.json").write_text(json.dumps({"edits": [edit]}))
        return main(
            [
                "edit",
                "--checkpoint",
                str(ckpt),
                "--labels",
                str(tmp_path / "l.png"),
                "--instances",
                str(tmp_path / "i.png"),
                "--edits",
                str(tmp_path / f"{out}.json"),
                "--out",
                str(tmp_path / out),
            ]
        )

    assert run("a", "a1") == 0 and run("a", "a2") == 0 and run("b", "b1") == 0
    after = {k: np.asarray(Image.open(tmp_path / k / "after.png")) for k in ("a1", "a2", "b1")}
    before = np.asarray(Image.open(tmp_path / "a1" / "before.png"))
    assert np.array_equal(after["a1"], after["a2"])  # deterministic
    assert (after["a1"] != after["b1"]).any()  # the photo's feature is used
    assert (after["a1"] != before).any()  # and replaces the cluster centre
    capsys.readouterr()
    assert run("a", "bad", photo_instance=3005) == 2
    assert "no instance 3005" in capsys.readouterr().err


def test_int8_export_calibrated_on_training_maps(exported, tmp_path):
    from components import synth
    from components.onnx_session import make_session
    from components.quantize import op_counts

    _, _, ckpt, _ = exported
    data = tmp_path / "data"
    synth.run(data, num_train=3, num_val=2, width=48, height=32, seed=0)
    # the synthetic maps use Cityscapes ids (up to 33): fold them into this model's 6
    for png in data.glob("gtFine/*/*/*_labelIds.png"):
        Image.fromarray((np.asarray(Image.open(png)) % 6).astype(np.uint8)).save(png)
    summary = export.run(
        ckpt, tmp_path / "m.onnx", fp16=False, tracking=False, quantize="int8", data=data
    )
    int8 = tmp_path / "m_int8.onnx"
    assert summary["onnx_int8"] == str(int8) and summary["int8_calibration"]["samples"] == 3
    ops = op_counts(int8)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta["precision"] == "int8" and meta["label_nc"] == "6" and "cluster_centers" in meta
    # on the val maps (not calibrated on), the int8 output stays much closer to the fp32
    # output than the fp32 outputs of the two val maps are to each other
    val = sorted(data.glob("gtFine/val/*/*_labelIds.png"))
    feeds = []
    for png in val:
        label = np.asarray(Image.open(png)).astype(np.int64)[None, None]
        inst = np.asarray(Image.open(str(png).replace("labelIds", "instanceIds"))).astype(np.int64)
        feats = np.full((1, 3, 32, 48), 0.3, np.float32)
        feeds.append({"label": label, "instance": inst[None, None], "features": feats})
    fp32, q = make_session(tmp_path / "m.onnx"), make_session(int8)
    ref = [fp32.run(None, f)[0] for f in feeds]
    err = np.abs(q.run(None, feeds[0])[0] - ref[0]).mean()
    assert 0 < err < np.abs(ref[1] - ref[0]).mean() / 2
    with pytest.raises(export.InputError, match="needs --data"):
        export.run(ckpt, tmp_path / "x.onnx", tracking=False, quantize="int8")
