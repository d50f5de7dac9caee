"""Instance features after training: encode every training instance, cluster per class
with k-means (scikit-learn), and draw features from the cluster centres at inference.

Following the paper / reference: an instance's feature is its pooled encoder output;
its class is ``id // 1000`` for ids >= 1000, else the id itself (stuff regions are
pooled too); per class, only instances covering more than ``min_area`` of the image
(1/64) are clustered, with k = min(n, n_clusters).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from model.config import FeatureConfig
from model.model_contract import class_of
from model.pix2pixhd import Pix2PixHD


def instance_features(
    model: Pix2PixHD, image: torch.Tensor, instance: torch.Tensor
) -> list[tuple[int, float, np.ndarray]]:
    """(class, area fraction, feature) for every instance of every image in the batch."""
    with torch.inference_mode():
        feats = model.encode_features(image, instance)
    out = []
    n, _, h, w = feats.shape
    for b in range(n):
        ids, first, counts = np.unique(
            instance[b, 0].cpu().numpy().ravel(), return_index=True, return_counts=True
        )
        flat = feats[b].reshape(feats.shape[1], -1).float().cpu().numpy()
        for i, pos, count in zip(ids, first, counts, strict=True):
            # pooled: every pixel of the instance holds the same feature
            out.append((class_of(int(i)), float(count) / (h * w), flat[:, pos].copy()))
    return out


def cluster_features(
    samples: Iterable[tuple[int, float, np.ndarray]], cfg: FeatureConfig
) -> dict[int, np.ndarray]:
    """Per class: k-means centres (k = min(n, n_clusters)) of the large-enough instances."""
    from sklearn.cluster import KMeans

    per_class: dict[int, list[np.ndarray]] = defaultdict(list)
    for cls, area, feat in samples:
        if area > cfg.min_area:
            per_class[cls].append(feat)
    centres = {}
    for cls, feats in sorted(per_class.items()):
        x = np.stack(feats).astype(np.float64)
        k = min(len(x), cfg.n_clusters)
        km = KMeans(n_clusters=k, n_init=10, random_state=cfg.seed).fit(x)
        centres[cls] = km.cluster_centers_.astype(np.float32)
    return centres


def features_from_clusters(
    instance: torch.Tensor,
    centres: Mapping[int, torch.Tensor],
    feat_num: int,
    generator: torch.Generator | None = None,
    choice: Mapping[int, int] | None = None,
) -> torch.Tensor:
    """(N, 1, H, W) instance ids -> (N, feat_num, H, W): each instance takes one centre of
    its class (``choice[id]`` if given, else drawn at random). Classes without clusters
    get zeros (the reference left them uninitialised). Training-side draws (evaluate,
    int8 calibration); what a served model draws is ``model.model_contract.draw_features``."""
    n, _, h, w = instance.shape
    out = torch.zeros(n, feat_num, h, w)
    choice = choice or {}
    for b in range(n):
        for i in torch.unique(instance[b]).tolist():
            c = centres.get(class_of(int(i)))
            if c is None or len(c) == 0:
                continue
            if int(i) in choice:
                k = int(choice[int(i)])
            else:
                k = int(torch.randint(len(c), (1,), generator=generator))
            mask = instance[b, 0] == i
            out[b, :, mask] = torch.as_tensor(c[k], dtype=torch.float32).unsqueeze(1)
    return out
