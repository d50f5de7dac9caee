"""Bootstrap intervals of the segmentation scores against naive references."""

from __future__ import annotations

import numpy as np

from model.metrics import (
    ConfusionMatrix,
    bootstrap_intervals,
    matrix_scores,
    paired_difference,
    resample_indices,
)


def _images(n: int, seed: int, noise: float) -> np.ndarray:
    """Per-image confusion matrices of a segmenter right with probability 1 - noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 19, 20), np.int64)
    for i in range(n):
        cm = ConfusionMatrix()
        gt = rng.integers(0, 6, (16, 16))
        pred = np.where(rng.random((16, 16)) < noise, rng.integers(0, 19, (16, 16)), gt)
        cm.update(pred, gt)
        out[i] = cm.matrix
    return out


def test_matrix_scores_equal_the_confusion_matrix_class():
    per = _images(5, 0, 0.3)
    cm = ConfusionMatrix()
    cm.matrix = per.sum(0)
    acc, miou = matrix_scores(per.sum(0))
    assert np.isclose(acc, cm.pixel_accuracy()) and np.isclose(miou, cm.mean_iou())
    accs, mious = matrix_scores(per)  # vectorised over images
    for i in range(5):
        one = ConfusionMatrix()
        one.matrix = per[i]
        assert np.isclose(accs[i], one.pixel_accuracy()) and np.isclose(mious[i], one.mean_iou())


def test_intervals_equal_a_naive_loop_over_the_same_draws():
    per = _images(12, 1, 0.4)
    got = bootstrap_intervals(per, resamples=200, seed=7, level=0.9)
    mious = []
    for idx in resample_indices(12, 200, 7):  # the same draws, summed one by one
        cm = ConfusionMatrix()
        for i in idx:
            cm.matrix = cm.matrix + per[i]
        mious.append(cm.mean_iou())
    assert np.allclose(got["mean_iou"], np.percentile(mious, [5, 95]))


def test_more_images_narrow_the_interval_and_it_covers_the_estimate():
    few, many = _images(8, 2, 0.5), _images(128, 2, 0.5)
    w = [np.diff(bootstrap_intervals(p, 500, 0)["mean_iou"])[0] for p in (few, many)]
    assert w[1] < w[0] / 2  # ~ 1/sqrt(n)
    lo, hi = bootstrap_intervals(many, 500, 0)["mean_iou"]
    assert lo <= matrix_scores(many.sum(0))[1] <= hi


def test_paired_difference_of_a_model_with_itself_is_zero_and_a_better_one_wins():
    a = _images(40, 3, 0.5)
    same = paired_difference(a, a, 300, 0)
    assert same["difference"] == same["low"] == same["high"] == 0.0
    better = _images(40, 3, 0.2)  # the same images, fewer mistakes
    d = paired_difference(better, a, 300, 0)
    assert d["low"] > 0 and d["low"] <= d["difference"] <= d["high"]
