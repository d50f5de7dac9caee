"""The exported generator's contract, in one place: what `generate`, `edit`, `serve` and
the registered MLflow model (``components/pyfunc_model.py``) all do around the network,
so that one model, one label map and one seed give one image whichever way it is asked.

Named ``model_contract`` (the *model* contract) beside ``components/contract.py``, which
is the *data* contract (the Great Expectations suite of the datasets): two contracts, two
names. numpy only, no torch, no onnxruntime, no mlflow: this file is copied into every
logged MLflow model (with ``model/errors.py``; ``components/export.py``) and imported
there where the project is not installed.

- ``ModelInfo.from_metadata``: the ONNX custom metadata written by ``model/export.py``,
  parsed once into a frozen, typed object (a graph of another producer is refused).
- Sizes: a map of any size is edge-padded to ``graph_size`` (the next multiple of the
  size multiple, and at least twice it: smaller maps fail inside the residual blocks'
  reflection padding) and the image is cropped back (``pad_to`` / ``crop``).
- ``class_of``: Cityscapes instance ids are ``class * 1000 + k``; stuff pixels hold the
  class id itself.
- ``draw_features``: each instance takes ``override[id]``, else centre ``choice[id]`` of
  its class, else the centre drawn by ``np.random.default_rng([seed, id])``; classes
  without centres get zeros. The draw depends on (seed, instance id) only, so an
  instance keeps its look when other parts of the map are edited, and a map's image
  does not depend on which other maps share its batch.
- ``onnx_feeds``: the graph's inputs (padded) from maps of the caller's size.
- ``to_uint8``: float images in [-1, 1] -> 8 bits, ``round((clip(x, -1, 1) + 1) * 127.5)``
  (round half to even).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from model.errors import InputError, ModelOutputError

PRODUCER = "pix2pixhd-pipeline"  # the ``producer`` metadata of `pix2pixhd export`'s graphs


def class_of(instance_id: int) -> int:
    """The class of an instance id: ``id // 1000`` for ids >= 1000, else the id itself."""
    return instance_id // 1000 if instance_id >= 1000 else instance_id


def graph_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The size a (height, width) map is padded to: the next multiple of ``multiple``,
    and at least ``2 * multiple`` (the graph's smallest input)."""

    def up(n: int) -> int:
        return max(-(-n // multiple) * multiple, 2 * multiple)

    return up(height), up(width)


def pad_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Edge-replicate the last two axes of ``x`` (bottom and right) to (height, width)."""
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph < 0 or pw < 0:
        raise ValueError(f"cannot pad {x.shape[-2:]} to the smaller {(height, width)}")
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], mode="edge")


def crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The top-left (height, width) of the last two axes: undoes ``pad_to``."""
    return x[..., :height, :width]


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float values in [-1, 1] -> uint8, elementwise: round((clip(x, -1, 1) + 1) * 127.5).
    Non-finite values are an error, never a black or white image."""
    x = np.asarray(image, np.float32)
    if not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise ModelOutputError(
            f"the model produced {bad} non-finite values (NaN/inf) of {x.size}: its weights "
            "are broken; export or train it again"
        )
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """One (3, H, W) float image in [-1, 1] -> (H, W, 3) uint8."""
    return np.ascontiguousarray(to_uint8(image).transpose(1, 2, 0))


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about an exported generator."""

    label_nc: int
    use_instance_map: bool
    use_instance_features: bool
    feat_num: int
    size_multiple: int
    centres: Mapping[int, np.ndarray] = field(default_factory=dict)  # class -> (k, feat_num)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], source: object) -> ModelInfo:
        """From the ONNX custom metadata map; ``source`` names the model in errors."""
        if meta.get("producer") != PRODUCER:
            raise InputError(f"{source}: not exported by `pix2pixhd export`")
        try:
            raw = json.loads(meta.get("cluster_centers", "{}"))
            return cls(
                label_nc=int(meta["label_nc"]),
                use_instance_map=meta["use_instance_map"] == "true",
                use_instance_features=meta["use_instance_features"] == "true",
                feat_num=int(meta["feat_num"]),
                size_multiple=int(meta["size_multiple"]),
                centres={
                    int(k): np.asarray(v, np.float32).reshape(len(v), -1) for k, v in raw.items()
                },
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(
                f"{source}: not exported by `pix2pixhd export` (bad metadata: {exc!r})"
            ) from None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The graph's inputs, in order (as ``model.export.input_names``)."""
        names = ["label"]
        if self.use_instance_map:
            names.append("instance")
        if self.use_instance_features:
            names.append("features")
        return tuple(names)

    def graph_size(self, height: int, width: int) -> tuple[int, int]:
        return graph_size(height, width, self.size_multiple)

    def styles(self) -> dict[str, list[list[float]]]:
        """The cluster centres as JSON: class id (string) -> list of centres."""
        return {str(c): np.asarray(v).tolist() for c, v in sorted(self.centres.items())}


#: ids below this are counted with a lookup table (np.unique sorts every pixel instead)
_LUT_IDS = 1 << 20


def unique_inverse(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ids, return_inverse=True)`` for non-negative integer ids, in one pass
    over the pixels with a lookup table when the largest id is below 2**20 (Cityscapes'
    instance ids are below 34000): 5-10x faster than sorting the pixels of a map, the
    serving path's largest cost after the network itself."""
    flat = np.asarray(ids).reshape(-1)
    top = int(flat.max(initial=0))
    if top >= _LUT_IDS or int(flat.min(initial=0)) < 0:
        unique, inverse = np.unique(flat, return_inverse=True)
        return unique, inverse.reshape(np.shape(ids))
    present = np.zeros(top + 1, bool)
    present[flat] = True
    unique = np.flatnonzero(present).astype(flat.dtype)
    lut = np.zeros(top + 1, np.intp)
    lut[unique] = np.arange(len(unique))
    return unique, lut[flat].reshape(np.shape(ids))


@functools.lru_cache(maxsize=1 << 16)
def drawn_centre(seed: int, instance_id: int, count: int) -> int:
    """The centre (of ``count``) that ``np.random.default_rng([seed, instance_id])``
    draws for an instance. Cached: a generator costs ~20 us to seed, and an editor asks
    for the same (seed, instance) pairs on every render."""
    return int(np.random.default_rng([seed, instance_id]).integers(count))


def draw_features(
    instance: np.ndarray,
    centres: Mapping[int, np.ndarray],
    feat_num: int,
    seed: int = 0,
    choice: Mapping[int, int] | None = None,
    override: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """(H, W) instance ids -> (feat_num, H, W) float32: each instance takes
    ``override[id]``, else centre ``choice[id]`` of its class, else the centre that
    ``np.random.default_rng([seed, id])`` draws; classes without centres get zeros."""
    choice, override = choice or {}, override or {}
    instance = np.asarray(instance)
    ids, inverse = unique_inverse(instance)
    table = np.zeros((len(ids), feat_num), np.float32)  # each instance's feature vector
    for row, i in enumerate(ids.tolist()):
        if i in override:
            table[row] = np.asarray(override[i], np.float32).reshape(feat_num)
            continue
        c = centres.get(class_of(i))
        if c is None or len(c) == 0:
            continue
        k = choice.get(i)
        if k is None:
            k = drawn_centre(seed, i, len(c))
        table[row] = np.asarray(c[k], np.float32).reshape(feat_num)
    # feature-major gather: (feat_num, H, W) directly, 6x faster than gathering
    # (H, W, feat_num) rows and transposing them
    return np.take(np.ascontiguousarray(table.T), inverse.reshape(instance.shape), axis=1)


def draw_batch_features(
    instance: np.ndarray,
    centres: Mapping[int, np.ndarray],
    feat_num: int,
    seed: int = 0,
    choice: Mapping[int, int] | None = None,
    override: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """(N, 1, H, W) instance ids -> (N, feat_num, H, W): ``draw_features`` per map."""
    return np.stack(
        [draw_features(m[0], centres, feat_num, seed, choice, override) for m in instance]
    )


def _ids(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1] != 1 or not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"{name}: expected integer ids (N, 1, H, W), got {x.dtype} {x.shape}")
    return x.astype(np.int64, copy=False)


def onnx_feeds(
    info: ModelInfo,
    label: np.ndarray,
    instance: np.ndarray | None = None,
    features: np.ndarray | None = None,
    seed: int = 0,
    choice: Mapping[int, int] | None = None,
    override: Mapping[int, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The graph's inputs for (N, 1, H, W) label ids (+ instance ids, + (N, feat_num,
    H, W) features) of any H and W, edge-padded to ``info.graph_size(H, W)``: crop the
    graph's output back to (H, W). Features not given are drawn (``draw_features``)."""
    label = _ids(label, "label")
    n, _, h, w = label.shape
    lo, hi = int(label.min(initial=0)), int(label.max(initial=0))
    if lo < 0 or hi >= info.label_nc:
        bad = lo if lo < 0 else hi
        raise InputError(
            f"label id {bad} is outside [0, {info.label_nc - 1}] for label_nc={info.label_nc}"
        )
    feeds = {"label": label}
    if info.use_instance_map or (info.use_instance_features and features is None):
        if instance is None:
            raise InputError("instance: this model uses instance maps: send one")
        instance = _ids(instance, "instance")
        if instance.shape != label.shape:
            raise InputError(f"instance: shape {instance.shape} differs from label {label.shape}")
    if info.use_instance_map:
        feeds["instance"] = instance
    if info.use_instance_features:
        if features is None:
            features = draw_batch_features(
                instance, info.centres, info.feat_num, seed, choice, override
            )
        features = np.asarray(features, np.float32)
        if features.shape != (n, info.feat_num, h, w):
            raise InputError(
                f"features: expected float32 {(n, info.feat_num, h, w)}, got {features.shape}"
            )
        feeds["features"] = features
    size = info.graph_size(h, w)
    return {k: pad_to(v, *size) for k, v in feeds.items()}
