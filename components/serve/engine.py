"""The exported generator on ONNX Runtime: label (+ instance) ids in, RGB out; numpy only.

The contract is `pix2pixhd generate`'s: native size in and out (edge-replicated padding to
the model's size multiple, cropped back). Instance features come from the cluster centres
stored in the ONNX metadata: a chosen centre per instance, else one drawn from
``(seed, instance id)``, so that an instance keeps its look when other parts of the map
are edited (the CLI draws with torch's generator instead: same distribution, other draws).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import InputError

log = logging.getLogger(__name__)


def class_of(instance_id: int) -> int:
    """Cityscapes instance ids are class * 1000 + k; stuff pixels hold the class id."""
    return instance_id // 1000 if instance_id >= 1000 else instance_id


@dataclass(frozen=True)
class ModelInfo:
    label_nc: int
    use_instance_map: bool
    use_instance_features: bool
    feat_num: int
    size_multiple: int
    centres: dict[int, np.ndarray]  # class id -> (k, feat_num) cluster centres

    def styles(self) -> dict[str, list[list[float]]]:
        return {str(c): v.tolist() for c, v in sorted(self.centres.items())}


class Engine:
    """One ONNX Runtime session; ``generate`` is safe to call from several threads."""

    def __init__(self, path: Path, threads: int = 0, source: str = "", version: str = ""):
        from components.engine import make_session

        path = Path(path)
        self.session = make_session(path, "cpu", threads or None)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "pix2pixhd-pipeline":
            raise InputError(f"{path}: not exported by `pix2pixhd export`")
        raw = json.loads(meta.get("cluster_centers", "{}"))
        self.info = ModelInfo(
            label_nc=int(meta["label_nc"]),
            use_instance_map=meta["use_instance_map"] == "true",
            use_instance_features=meta["use_instance_features"] == "true",
            feat_num=int(meta["feat_num"]),
            size_multiple=int(meta["size_multiple"]),
            centres={int(k): np.asarray(v, np.float32).reshape(len(v), -1) for k, v in raw.items()},
        )
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.path, self.source, self.version = path, source or str(path), version

    def features(
        self,
        instance: np.ndarray,
        seed: int,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) instance ids -> (feat_num, H, W): each instance takes ``override[id]``,
        else centre ``choice[id]`` of its class, else one drawn from (seed, id); classes
        without centres get zeros (as `generate` does)."""
        choice, override = choice or {}, override or {}
        out = np.zeros((self.info.feat_num, *instance.shape), np.float32)
        for i in np.unique(instance).tolist():
            mask = instance == i
            if i in override:
                out[:, mask] = np.asarray(override[i], np.float32)[:, None]
                continue
            centres = self.info.centres.get(class_of(i))
            if centres is None or len(centres) == 0:
                continue
            k = choice.get(i)
            if k is None:
                k = int(np.random.default_rng([seed, i]).integers(len(centres)))
            out[:, mask] = centres[k][:, None]
        return out

    def generate(
        self,
        label: np.ndarray,
        instance: np.ndarray | None,
        seed: int = 0,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) label ids (+ instance ids) -> (H, W, 3) uint8 at the same size."""
        info = self.info
        if info.use_instance_map and instance is None:
            raise InputError("instance: this model uses instance maps: send one")
        h, w = label.shape
        m = info.size_multiple
        ph, pw = -(-h // m) * m - h, -(-w // m) * m - w

        def pad(a: np.ndarray) -> np.ndarray:
            return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode="edge")

        feeds = {"label": pad(label.astype(np.int64))[None, None]}
        if "instance" in self.inputs:
            feeds["instance"] = pad(instance.astype(np.int64))[None, None]
        if "features" in self.inputs:
            feeds["features"] = pad(self.features(instance, seed, choice, override))[None]
        image = self.session.run(None, feeds)[0][0, :, :h, :w]
        # as tensor_to_rgb: [-1, 1] -> uint8, rounding to nearest
        rgb = np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0))
