"""The exported generator on ONNX Runtime: label (+ instance) ids in, RGB out; numpy only.

The contract is ``model.model_contract``'s, the same as `pix2pixhd generate` and the
registered MLflow model: native size in and out (edge-replicated padding to the graph's
size, cropped back); instance features from the cluster centres in the ONNX metadata: a
chosen centre per instance, else the one drawn from ``(seed, instance id)``, so that an
instance keeps its look when other parts of the map are edited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from model.errors import InputError
from model.model_contract import ModelInfo, crop, draw_features, onnx_feeds, to_rgb
from model.onnx_integrity import HASH_KEY

log = logging.getLogger(__name__)


def local_version(meta: Mapping[str, str]) -> str:
    """A file's model version: ``sha256:`` and the start of its content hash (export
    stamps it in the metadata), else ``local``."""
    digest = meta.get(HASH_KEY, "")
    return f"sha256:{digest[:12]}" if digest else "local"


class Engine:
    """One ONNX Runtime session; ``generate`` is safe to call from several threads."""

    def __init__(self, path: Path, threads: int = 0, source: str = "", version: str = ""):
        from components.onnx_session import make_session

        path = Path(path)
        self.session = make_session(path, "cpu", threads or None)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = ModelInfo.from_metadata(meta, path)
        self.path, self.source = path, source or str(path)
        #: the registry version, else the start of the graph's content hash (a file)
        self.version = version or local_version(meta)

    def features(
        self,
        instance: np.ndarray,
        seed: int,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) instance ids -> (feat_num, H, W) (``model_contract.draw_features``)."""
        return draw_features(
            instance, self.info.centres, self.info.feat_num, seed, choice, override
        )

    def generate(
        self,
        label: np.ndarray,
        instance: np.ndarray | None,
        seed: int = 0,
        choice: Mapping[int, int] | None = None,
        override: Mapping[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """(H, W) label ids (+ instance ids) -> (H, W, 3) uint8 at the same size."""
        if self.info.use_instance_map and instance is None:
            raise InputError("instance: this model uses instance maps: send one")
        h, w = label.shape
        feeds = onnx_feeds(
            self.info,
            np.asarray(label, np.int64)[None, None],
            None if instance is None else np.asarray(instance, np.int64)[None, None],
            seed=seed,
            choice=choice,
            override=override,
        )
        return to_rgb(crop(self.session.run(None, feeds)[0][0], h, w))
