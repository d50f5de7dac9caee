"""synth -> validate -> boundaries on a handful of samples, other layouts, and every
bad input giving a clear error (file named, non-zero exit, no traceback)."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from components import boundaries, synth, validate
from model.datasets import PairedDataset, detect_layout, find_samples, load_sample
from model.errors import InputError
from pix2pixhd.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    synth.run(root, num_train=4, num_val=2, width=64, height=32, seed=1)
    return root


def _md5s(root):
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_renders_identical_files(dataset, tmp_path):
    """Every file synth writes (images and synth_summary.json) depends only on the
    arguments: no wall-clock seconds, no output path, so DVC sees one md5 per seed."""
    again = tmp_path / "again"
    summary = synth.run(again, num_train=4, num_val=2, width=64, height=32, seed=1)
    assert _md5s(again) == _md5s(dataset)
    assert len(_md5s(again)) == 6 * 3 + 1
    assert "seconds" in summary  # the timing is reported, not written
    saved = json.loads((again / "synth_summary.json").read_text())
    assert "seconds" not in saved and "out" not in saved and saved["seed"] == 1


def _copy(dataset, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(dataset, dst)
    return dst


def test_cityscapes_round_trip(dataset):
    assert detect_layout(dataset) == "cityscapes"
    samples = find_samples(dataset, "cityscapes", "train")
    assert len(samples) == 4 and all(s.instance and s.image and s.label for s in samples)
    arrays = load_sample(samples[0], 35)
    city_stem = samples[0].stem
    assert samples[0].label.name == f"{city_stem}_gtFine_labelIds.png"
    assert arrays["label"].shape == (32, 64) and arrays["image"].shape == (32, 64, 3)


def test_folder_and_rgb_layouts_pair_by_stem(dataset, tmp_path):
    samples = find_samples(dataset, "cityscapes", "train")
    root = tmp_path / "folder"
    for role in ("label", "inst", "img"):
        (root / f"train_{role}").mkdir(parents=True)
    # names sort differently in each folder: pairing must use stems, not order
    for s in samples:
        shutil.copy(s.label, root / "train_label" / f"{s.stem}.png")
        shutil.copy(s.instance, root / "train_inst" / f"{s.stem}.png")
        shutil.copy(s.image, root / "train_img" / f"{s.stem}.png")
    # an extra photo that sorts first: pairing by order would shift every pair
    shutil.copy(samples[0].image, root / "train_img" / "0000_extra.png")
    assert detect_layout(root) == "folder"
    problems = []
    got = find_samples(root, "folder", "train", problems=problems)
    assert problems == [
        f"{root / 'train_img' / '0000_extra.png'}: sample '0000_extra' has no label file",
        f"{root / 'train_img' / '0000_extra.png'}: sample '0000_extra' has no instance file",
    ]
    for s in got[1:]:
        assert s.label.stem == s.instance.stem == s.image.stem
    rgb = tmp_path / "rgb"
    (rgb / "train_A").mkdir(parents=True)
    (rgb / "train_B").mkdir(parents=True)
    for s in samples:
        shutil.copy(s.image, rgb / "train_A" / f"{s.stem}.png")
        shutil.copy(s.image, rgb / "train_B" / f"{s.stem}.png")
    assert detect_layout(rgb) == "rgb"
    ds = PairedDataset(find_samples(rgb, "rgb", "train"), label_nc=0, width=64, height=32)
    item = ds[0]
    assert item["label"].shape == (3, 32, 64) and item["image"].shape == (3, 32, 64)


def test_bicycle_instance_id_survives(tmp_path):
    inst = np.full((32, 64), 7, np.uint16)
    inst[4:10, 4:10] = 33001
    lab = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
    root = tmp_path / "f"
    for d in ("train_label", "train_inst", "train_img"):
        (root / d).mkdir(parents=True)
    Image.fromarray(lab).save(root / "train_label" / "a.png")
    Image.fromarray(inst).save(root / "train_inst" / "a.png")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(root / "train_img" / "a.png")
    item = PairedDataset(find_samples(root, "folder", "train"), 35, 64, 32, flip=True)[0]
    assert item["instance"].dtype.is_floating_point is False
    assert set(np.unique(item["instance"].numpy())) == {7, 33001}


def test_crop_and_flip_apply_identically(dataset):
    samples = find_samples(dataset, "cityscapes", "train")
    ds = PairedDataset(samples, 35, 64, 32, crop=(16, 32), flip=True, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        inst, lab = item["instance"][0].numpy(), item["label"][0].numpy()
        things = inst >= 1000
        assert np.array_equal(inst[things] // 1000, lab[things])
        assert np.array_equal(inst[~things], lab[~things])
        assert item["image"].shape == (3, 16, 32)


def test_synth_validate_boundaries(dataset, tmp_path):
    summary = validate.run(dataset, tmp_path / "report")
    assert summary["counts"] == {"train": 4, "val": 2}
    assert len(summary["dataset_hash"]) == 64
    again = validate.run(dataset, tmp_path / "report2")
    assert again["dataset_hash"] == summary["dataset_hash"]
    out = tmp_path / "b"
    first = boundaries.run(dataset, out, workers=2)
    assert first["written"] == 6
    assert boundaries.run(dataset, out)["skipped_up_to_date"] == 6
    s = find_samples(dataset, "cityscapes", "train")[0]
    edge = np.asarray(Image.open(out / "train" / f"{s.stem}_boundary.png"))
    inst = np.asarray(Image.open(s.instance)).astype(np.int64)
    naive = np.zeros_like(inst, bool)
    for y in range(inst.shape[0]):
        for x in range(inst.shape[1]):
            for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < inst.shape[0] and 0 <= xx < inst.shape[1]:
                    naive[y, x] |= inst[yy, xx] != inst[y, x]
    assert np.array_equal(edge > 0, naive)


def _first(root, kind):
    return sorted(
        (root / ("gtFine" if kind != "image" else "leftImg8bit")).rglob(
            {"label": "*_labelIds.png", "instance": "*_instanceIds.png", "image": "*.png"}[kind]
        )
    )[0]


def _truncate(root):
    p = _first(root, "label")
    p.write_bytes(p.read_bytes()[:60])
    return p.name, "unreadable"


def _larger_label(root):
    p = _first(root, "label")
    Image.fromarray(np.zeros((40, 80), np.uint8)).save(p)
    return p.name, "sizes differ"


def _label_200(root):
    p = _first(root, "label")
    a = np.asarray(Image.open(p)).copy()
    a[0, 0] = 200
    Image.fromarray(a).save(p)
    return p.name, "label_max = 200, expected in [0, 34]"


def _missing_instance(root):
    p = _first(root, "instance")
    p.unlink()
    return "has no instance map", "has no instance map"


def _grey_photo(root):
    p = _first(root, "image")
    Image.open(p).convert("L").save(p)
    return p.name, "image_mode = 'L', expected one of ['RGB']"


def _label_16bit(root):
    p = _first(root, "label")
    Image.fromarray(np.asarray(Image.open(p)).astype(np.uint16)).save(p)
    return p.name, "label_mode = 'I;16'"


def _duplicate_stem(root):
    p = _first(root, "label")
    other = p.parent.parent / "extra"
    other.mkdir()
    shutil.copy(p, other / p.name)
    return p.name.split("_gtFine")[0], "duplicate stem"


@pytest.mark.parametrize(
    "breaker",
    [
        _truncate,
        _larger_label,
        _label_200,
        _missing_instance,
        _grey_photo,
        _label_16bit,
        _duplicate_stem,
    ],
)
def test_bad_input_is_named(dataset, tmp_path, breaker):
    root = _copy(dataset, tmp_path)
    name, reason = breaker(root)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(root, tmp_path / "report")
    assert name in str(err.value) and reason in str(err.value)
    report = tmp_path / "report"
    assert (report / "great_expectations_result.json").is_file()
    assert (report / "data_docs" / "index.html").is_file()
    assert not (report / "summary.json").exists()


def test_empty_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["validate", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "cannot tell the dataset layout" in capsys.readouterr().err
    with pytest.raises(InputError, match="no samples found"):
        (tmp_path / "e2" / "gtFine").mkdir(parents=True)
        validate.run(tmp_path / "e2", tmp_path / "r")


def test_cli_failure_has_no_traceback(dataset, tmp_path):
    root = _copy(dataset, tmp_path)
    _label_200(root)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pix2pixhd.cli",
            "validate",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "label_max = 200" in result.stderr
    assert "great_expectations" not in result.stderr  # its INFO logging stays quiet
    assert (
        json.loads((tmp_path / "r" / "great_expectations_result.json").read_text())["success"]
        is False
    )


def test_training_loader_uses_precomputed_boundaries(dataset, tmp_path):
    import torch

    from model.encoding import boundary_map

    boundaries.run(dataset, tmp_path / "b", workers=1)
    samples = find_samples(dataset, "cityscapes", "train")
    ds = PairedDataset(samples, 35, 64, 32, flip=True, seed=5, boundaries=tmp_path / "b")
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["boundary"], boundary_map(item["instance"][None])[0])
    # a sample that must be resized falls back to computing the map
    resized = PairedDataset(samples, 35, 32, 16, boundaries=tmp_path / "b")[0]
    assert "boundary" not in resized
