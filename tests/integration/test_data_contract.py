"""The data contract: the suite file, hand edits, drift against a training profile,
colour label maps (convert and the rgb layout), and crop preprocessing."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import contract, convert, synth, validate
from components.params import load_params
from model.datasets import PairedDataset, find_samples, preprocess_size
from model.errors import InputError
from model.labels import colorize
from model.palette import cityscapes_palette, load_palette
from pix2pixhd.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A training set and its validated profile (summary.json)."""
    tmp = tmp_path_factory.mktemp("ref")
    synth.run(tmp / "data", num_train=16, num_val=0, width=96, height=48, seed=1)
    validate.run(tmp / "data", tmp / "report", splits=("train",), html=False)
    return tmp


def test_committed_suite_is_the_params_default_and_loads():
    path = ROOT / "data" / "expectations" / "pix2pixhd.json"
    suite = contract.load_suite(path)
    p = load_params(ROOT / "params.yaml")
    multiple = 2 ** (p.model.generator.n_downsample_global + p.model.generator.n_local_enhancers)
    # regenerate with: pix2pixhd validate --params params.yaml --write-suite <this file> ...
    assert suite == contract.default_suite(p.data.label_nc, True, multiple)
    gx_suite = contract.gx_suite(suite, str(path))
    kinds = {e.expectation_type for e in gx_suite.expectations}
    assert {
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_pair_values_to_be_equal",
        "expect_column_values_to_be_unique",
        "expect_table_row_count_to_be_between",
    } <= kinds


def test_hand_edited_suite_names_file_and_value(reference, tmp_path):
    """Tighten one threshold in the JSON: validate fails on it, naming the files."""
    spec = contract.default_suite(35, True, 16)
    for e in spec["expectations"]:
        if e["kwargs"].get("column") == "label_max":
            e["kwargs"]["max_value"] = 20  # the synthetic scenes have cars (26)
    suite = contract.write_suite(spec, tmp_path / "suite.json")
    with pytest.raises(validate.ValidationFailed):
        validate.run(reference / "data", tmp_path / "r", splits=("train",), suite=suite)
    rows = json.loads((reference / "report" / "manifest.json").read_text())
    worst = max(rows, key=lambda r: r["label_max"])
    line = f"{worst['label_path']}: label_max = {worst['label_max']}, expected in [0, 20]"
    assert line in (tmp_path / "r" / "report.txt").read_text()
    page = validate.validation_page(tmp_path / "r" / validate.DOCS_DIR)
    assert "Expectation Validation Result" in page.read_text()  # the Data Docs page
    assert "label_max" in page.read_text()
    # a broken suite file: one line, before any file is read
    (tmp_path / "bad.json").write_text('{"expectations": [{"type": "expect_nothing"}]}')
    with pytest.raises(InputError, match="expectation 0: expected 'type' and 'kwargs'"):
        validate.run(reference / "data", tmp_path / "r2", suite=tmp_path / "bad.json")


def test_manifest_columns_are_measured(reference):
    rows = json.loads((reference / "report" / "manifest.json").read_text())
    r = rows[0]
    lab = np.asarray(Image.open(r["label_path"]))
    inst = np.asarray(Image.open(r["instance_path"])).astype(np.int64)
    assert (r["label_min"], r["label_max"]) == (int(lab.min()), int(lab.max()))
    assert r["label_classes"] == len(np.unique(lab))
    assert (r["instance_min"], r["instance_max"]) == (int(inst.min()), int(inst.max()))
    assert r["instance_bits"] == 16 and r["image_channels"] == 3 and r["sizes_agree"] is True
    assert r["label_bytes"] == Path(r["label_path"]).stat().st_size
    assert r["histogram"][str(26)] == pytest.approx((lab == 26).mean())


def test_drift_flags_a_shifted_dataset_and_not_an_equal_one(reference, tmp_path):
    ref = reference / "report" / "summary.json"
    synth.run(tmp_path / "same", num_train=0, num_val=12, width=96, height=48, seed=2)
    out = validate.run(tmp_path / "same", tmp_path / "r1", splits=("val",), reference=ref)
    assert out["reference"] == str(ref)
    synth.run(tmp_path / "shift", 0, 12, 96, 48, seed=3, cars=False, trees=2.0)
    args = [
        "validate",
        "--data",
        str(tmp_path / "shift"),
        "--splits",
        "val",
        "--size-multiple",
        "16",
    ]
    assert main([*args, "--reference", str(ref), "--out", str(tmp_path / "r2")]) == 3
    report = (tmp_path / "r2" / "report.txt").read_text()
    profile = json.loads(ref.read_text())["profile"]["class_frequencies"]
    assert f"drift: car (frac_26) frequency 0, training {float(profile['26']):.6g}" in report
    assert "drift: vegetation (frac_21)" in report
    assert not (tmp_path / "r2" / "summary.json").exists()


def test_convert_colour_label_maps(tmp_path):
    ids = np.array([[7, 8, 26, 21], [23, 11, 0, 24]], np.uint8).repeat(4, 0).repeat(4, 1)
    src = tmp_path / "colour" / "city"
    src.mkdir(parents=True)
    Image.fromarray(colorize(ids)).save(src / "a_gtFine_color.png")
    summary = convert.run("cityscapes", tmp_path / "colour", tmp_path / "ids")
    got = np.asarray(Image.open(tmp_path / "ids" / "city" / "a_gtFine_labelIds.png"))
    assert summary["converted"] == 1 and np.array_equal(got, ids)
    # an unknown colour: listed with its pixel count and first position; nothing written
    rgb = colorize(ids)
    rgb[5, 6:9] = (1, 2, 3)
    Image.fromarray(rgb).save(src / "b.png")
    args = ["--palette", "cityscapes", "--labels", str(tmp_path / "colour")]
    assert main(["data", "convert", *args, "--out", str(tmp_path / "ids2")]) == 2
    assert not (tmp_path / "ids2").exists()
    where = r"b.png: 3 pixels of 1 colours .*\(1, 2, 3\) x3 first at \(x=6, y=5\)"
    with pytest.raises(InputError, match=where):
        convert.run("cityscapes", tmp_path / "colour", tmp_path / "ids2")
    # a JSON palette file
    pal = tmp_path / "pal.json"
    pal.write_text(json.dumps({"#010203": 5, "0,0,142": 26}))
    assert set(load_palette(pal).ids) == {5, 26}
    pal.write_text(json.dumps({"#01020": 5}))
    with pytest.raises(InputError, match="colour '#01020'"):
        load_palette(pal)


def test_rgb_layout_reads_colour_label_maps_through_the_palette(tmp_path):
    ids = np.zeros((32, 64), np.uint8)
    ids[:, :20], ids[:, 20:40], ids[8:20, 44:60] = 7, 21, 26
    for d in ("train_A", "train_B"):
        (tmp_path / d).mkdir()
    Image.fromarray(colorize(ids)).save(tmp_path / "train_A" / "s.png")
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "train_B" / "s.png")
    samples = find_samples(tmp_path, "rgb", "train")
    item = PairedDataset(samples, 35, 64, 32, palette=cityscapes_palette())[0]
    assert np.array_equal(item["label"][0].numpy(), ids)
    summary = validate.run(tmp_path, tmp_path / "r", splits=("train",), palette="cityscapes")
    assert summary["images_per_class"] == {"0": 1, "7": 1, "21": 1, "26": 1}
    Image.fromarray(np.full((32, 64, 3), 9, np.uint8)).save(tmp_path / "train_A" / "s.png")
    with pytest.raises(validate.ValidationFailed, match=r"2048 pixels of 1 colours"):
        validate.run(tmp_path, tmp_path / "r2", splits=("train",), palette="cityscapes")


def _pattern(root, w, h):
    """A sample whose every file encodes the pixel position: label = x % 30,
    instance = 1000 * label + y, photo (R, G) = (x, y), boundary = (x + y) % 2."""
    y, x = np.mgrid[0:h, 0:w]
    for d in ("train_label", "train_inst", "train_img"):
        (root / d).mkdir(parents=True)
    Image.fromarray((x % 30).astype(np.uint8)).save(root / "train_label" / "p.png")
    Image.fromarray((1000 * (x % 30) + y).astype(np.uint16)).save(root / "train_inst" / "p.png")
    photo = np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)
    Image.fromarray(photo).save(root / "train_img" / "p.png")
    (root / "b" / "train").mkdir(parents=True)
    Image.fromarray(((x + y) % 2).astype(np.uint8)).save(root / "b" / "train" / "p_boundary.png")


@pytest.mark.parametrize(
    ("mode", "size", "expected"),
    [("crop", (96, 64), (96, 64)), ("scale_width_and_crop", (96, 64), (96, 64))],
)
def test_crop_is_identical_for_label_instance_boundary_photo(tmp_path, mode, size, expected):
    _pattern(tmp_path, 96, 64)
    samples = find_samples(tmp_path, "folder", "train")
    ds = PairedDataset(
        samples, 35, *size, crop=(32, 32), flip=True, preprocess=mode, boundaries=tmp_path / "b"
    )
    assert preprocess_size(mode, 96, 64, *size) == expected
    seen = set()
    for epoch in range(6):
        ds.epoch = epoch
        item = ds[0]
        img = ((item["image"].numpy() + 1) * 127.5).round().astype(int)
        xs, ys = img[0], img[1]  # where each output pixel came from
        assert item["label"].shape == (1, 32, 32) and item["boundary"].shape == (1, 32, 32)
        assert np.array_equal(item["label"][0].numpy(), xs % 30)
        assert np.array_equal(item["instance"][0].numpy(), 1000 * (xs % 30) + ys)
        assert np.array_equal(item["boundary"][0].numpy(), (xs + ys) % 2)
        seen.add((int(xs[0, 0]), int(ys[0, 0]), bool(xs[0, 0] > xs[0, 1])))
    assert len(seen) > 1  # the crop moves (and flips) between epochs


def test_preprocess_sizes_follow_the_reference():
    assert preprocess_size("resize_and_crop", 2048, 1024, 1024, 512) == (1024, 512)
    assert preprocess_size("scale_width", 2048, 1000, 1024, 512) == (1024, 500)
    assert preprocess_size("none", 1000, 500, 0, 0, 32) == (992, 512)
    with pytest.raises(InputError, match="data.preprocess 'zoom'"):
        preprocess_size("zoom", 1, 1, 1, 1)
