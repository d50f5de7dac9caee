"""Segmentation scores on the 19 Cityscapes train ids (255 = ignore).

A dataset-level confusion matrix accumulated over all images; IoU per class =
TP / (TP + FP + FN); pixel accuracy = correct / labelled pixels. Pixels whose ground
truth is ignored count nowhere; a prediction of an ignored class on a labelled pixel is
a false negative of the true class (as in the official Cityscapes evaluator).

Mean IoU convention: a class with TP + FP + FN = 0 (absent from the ground truth and
never predicted) has IoU NaN and is left out of the mean, as the official Cityscapes
evaluator does (PSPNet's own code counts it as 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.labels import LABELS, train_id_lut

NUM_CLASSES = 19
IGNORE = 255
TRAIN_NAMES = [
    lab.name for lab in sorted(LABELS, key=lambda x: x.train_id) if 0 <= lab.train_id < NUM_CLASSES
]


class ConfusionMatrix:
    """Rows: ground truth train id; columns: prediction (last column: predicted ignore)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        self.n = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        """Both in train ids (any integer array of the same shape)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
        gt = target.astype(np.int64).ravel()
        pred = prediction.astype(np.int64).ravel()
        valid = (gt >= 0) & (gt < self.n)
        pred = np.where((pred >= 0) & (pred < self.n), pred, self.n)
        idx = gt[valid] * (self.n + 1) + pred[valid]
        self.matrix += np.bincount(idx, minlength=self.n * (self.n + 1)).reshape(self.n, self.n + 1)

    def iou_per_class(self) -> np.ndarray:
        tp = np.diag(self.matrix[:, : self.n]).astype(np.float64)
        gt = self.matrix.sum(1).astype(np.float64)  # TP + FN
        pred = self.matrix[:, : self.n].sum(0).astype(np.float64)  # TP + FP (labelled GT)
        denom = gt + pred - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix[:, : self.n]) / total) if total else float("nan")

    def mean_iou(self) -> float:
        iou = self.iou_per_class()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


@dataclass(frozen=True)
class Scores:
    pixel_accuracy: float
    mean_iou: float
    iou_per_class: dict[str, float]

    def as_dict(self) -> dict:
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_iou": self.mean_iou,
            "iou_per_class": self.iou_per_class,
        }


def scores(cm: ConfusionMatrix) -> Scores:
    iou = cm.iou_per_class()
    return Scores(
        cm.pixel_accuracy(),
        cm.mean_iou(),
        {name: float(v) for name, v in zip(TRAIN_NAMES, iou, strict=True)},
    )


def label_ids_to_train_ids(label: np.ndarray) -> np.ndarray:
    return train_id_lut()[np.clip(label, 0, 255).astype(np.uint8)]


def matrix_scores(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel accuracy and mean IoU of confusion matrices ``m`` of shape (..., n, n + 1),
    vectorised over the leading axes, with :class:`ConfusionMatrix`'s conventions."""
    m = np.asarray(m, np.float64)
    n = m.shape[-2]
    tp = np.diagonal(m[..., :n], axis1=-2, axis2=-1)
    gt, pred = m.sum(-1), m[..., :n].sum(-2)
    denom = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)
        total = m.sum((-2, -1))
        accuracy = np.where(total > 0, tp.sum(-1) / np.where(total > 0, total, 1), np.nan)
    present = np.isfinite(iou)
    mean_iou = np.where(
        present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan
    )
    return accuracy, mean_iou


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image indices drawn with replacement: the bootstrap's draws."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _resampled(per_image: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The summed confusion matrix of each resample (resamples, n, n + 1)."""
    n = per_image.shape[0]
    counts = np.stack([np.bincount(row, minlength=n) for row in indices]).astype(np.float64)
    return np.einsum("bi,ijk->bjk", counts, per_image.astype(np.float64))


def bootstrap_intervals(
    per_image: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of pixel accuracy and mean IoU over images:
    ``per_image`` holds each image's confusion matrix (N, n, n + 1); the dataset-level
    scores of each resample of the N images are computed from the summed matrices."""
    acc, miou = matrix_scores(
        _resampled(per_image, resample_indices(len(per_image), resamples, seed))
    )
    tail = (1 - level) / 2 * 100
    return {
        "pixel_accuracy": [float(v) for v in np.nanpercentile(acc, [tail, 100 - tail])],
        "mean_iou": [float(v) for v in np.nanpercentile(miou, [tail, 100 - tail])],
    }


def paired_difference(
    a: np.ndarray, b: np.ndarray, resamples: int, seed: int, level: float = 0.95
) -> dict[str, float]:
    """Mean IoU of ``a`` minus that of ``b``, both scored on the same images (per-image
    confusion matrices, one row per image in the same order): the difference and its
    paired percentile bootstrap interval (the same resampled images for both)."""
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same images: {a.shape} vs {b.shape}")
    idx = resample_indices(len(a), resamples, seed)
    _, ma = matrix_scores(_resampled(a, idx))
    _, mb = matrix_scores(_resampled(b, idx))
    diff = ma - mb
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(diff, [tail, 100 - tail])
    point = matrix_scores(a.sum(0))[1] - matrix_scores(b.sum(0))[1]
    return {"difference": float(point), "low": float(lo), "high": float(hi), "level": level}
