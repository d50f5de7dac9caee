"""The CLI end to end: import official-layout files, generate PNGs, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from model.config import GeneratorConfig
from model.image_io import label_to_tensor, tensor_to_rgb
from model.pix2pixhd import Pix2PixHD
from pix2pixhd.cli import main
from tests.conftest import tiny_config

CFG = tiny_config(
    generator=GeneratorConfig(
        ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    )
)


def cli(*args):
    """Run the console script in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "pix2pixhd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(1)
    model = Pix2PixHD(CFG, with_discriminator=False).eval()
    torch.save(model.netG.state_dict(), root / "latest_net_G.pth")
    rng = np.random.default_rng(0)
    labels, insts = root / "labels" / "aachen", root / "insts" / "aachen"
    labels.mkdir(parents=True)
    insts.mkdir(parents=True)
    # three Cityscapes-named samples; one of a size the generator cannot take directly
    sizes = {
        "aachen_000000_000019": (32, 64),
        "aachen_000001_000019": (32, 64),
        "aachen_000002_000019": (30, 50),
    }
    for stem, (h, w) in sizes.items():
        lab = rng.integers(0, CFG.label_nc, (h, w), dtype=np.uint8)
        inst = lab.astype(np.uint16) * 1000 + rng.integers(0, 2, (h, w)).astype(np.uint16)
        inst[: h // 2, : w // 2] = 33001  # a bicycle id beyond int16
        Image.fromarray(lab).save(labels / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst).save(insts / f"{stem}_gtFine_instanceIds.png")
    return root, model, sizes


def test_import_then_generate(workspace, tmp_path):
    root, model, sizes = workspace
    ckpt = tmp_path / "model.pth"
    result = cli(
        "import-checkpoint",
        "--generator",
        root / "latest_net_G.pth",
        "--label-nc",
        CFG.label_nc,
        "--out",
        ckpt,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["generator"] == "local"

    out = tmp_path / "fake"
    code = main(
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(root / "labels"),
            "--instances",
            str(root / "insts"),
            "--out",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    for stem, (h, w) in sizes.items():
        got = np.asarray(Image.open(out / f"{stem}.png"))
        assert got.shape == (h, w, 3)
        if (h, w) == (32, 64):  # valid size: must equal the source network's output
            lab = np.asarray(Image.open(root / "labels/aachen" / f"{stem}_gtFine_labelIds.png"))
            inst = np.asarray(Image.open(root / "insts/aachen" / f"{stem}_gtFine_instanceIds.png"))
            expected = model.generate(
                label_to_tensor(lab)[None], label_to_tensor(inst.astype(np.int64))[None]
            )
            diff = np.abs(got.astype(int) - tensor_to_rgb(expected[0]).astype(int))
            assert diff.max() <= 1


def test_errors_exit_nonzero_without_traceback(workspace, tmp_path):
    root, _, _ = workspace
    cut = tmp_path / "cut.pth"
    cut.write_bytes((root / "latest_net_G.pth").read_bytes()[:1000])
    result = cli(
        "import-checkpoint", "--generator", cut, "--label-nc", 6, "--out", tmp_path / "x.pth"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "cut.pth: not a readable PyTorch checkpoint" in result.stderr
    assert not (tmp_path / "x.pth").exists()


def _import(root, ckpt):
    args = ["import-checkpoint", "--generator", str(root / "latest_net_G.pth")]
    assert main([*args, "--label-nc", str(CFG.label_nc), "--out", str(ckpt)]) == 0


def test_bad_label_id_in_file(workspace, tmp_path, capsys):
    root, _, _ = workspace
    ckpt = tmp_path / "model.pth"
    _import(root, ckpt)
    labels = tmp_path / "labels"
    labels.mkdir()
    lab = np.zeros((32, 64), np.uint8)
    lab[5, 5] = 200
    Image.fromarray(lab).save(labels / "x.png")
    code = main(
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(labels),
            "--instances",
            str(labels),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "label id 200 is outside [0, 5]" in capsys.readouterr().err


def test_missing_instance_map_is_named(workspace, tmp_path, capsys):
    root, _, _ = workspace
    ckpt = tmp_path / "model.pth"
    _import(root, ckpt)
    empty = tmp_path / "no_insts"
    empty.mkdir()
    code = main(
        [
            "generate",
            "--checkpoint",
            str(ckpt),
            "--labels",
            str(root / "labels"),
            "--instances",
            str(empty),
            "--engine",
            "torch",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert "no instance map with stem 'aachen_000000_000019'" in capsys.readouterr().err
