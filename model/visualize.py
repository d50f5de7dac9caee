"""Sample grids: label (colourised) | generated | real, one row per image."""

from __future__ import annotations

import numpy as np
import torch

from model.image_io import tensor_to_rgb
from model.labels import colorize


def label_to_rgb(label: torch.Tensor, label_nc: int) -> np.ndarray:
    """(1, H, W) ids -> Cityscapes colours; (3, H, W) RGB labels pass through."""
    if label_nc == 0:
        return tensor_to_rgb(label)
    return colorize(label[0].cpu().numpy())


def sample_grid(
    label: torch.Tensor,
    fake: torch.Tensor,
    real: torch.Tensor | None,
    label_nc: int,
    max_rows: int = 4,
) -> np.ndarray:
    rows = []
    for i in range(min(max_rows, label.shape[0])):
        cols = [label_to_rgb(label[i], label_nc), tensor_to_rgb(fake[i])]
        if real is not None:
            cols.append(tensor_to_rgb(real[i]))
        rows.append(np.concatenate(cols, axis=1))
    return np.concatenate(rows, axis=0)
