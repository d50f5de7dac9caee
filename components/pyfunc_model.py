"""The registered generator as an MLflow pyfunc model, served by ONNX Runtime.

Self-contained on purpose: it imports numpy, onnxruntime and mlflow only (no torch, no
project code), because it is shipped with the model (``code_paths``) and loaded where
only the model's pinned requirements are installed (``mlflow models serve``, KServe).

Contract, the same as the ONNX graph's (``model.export``) at any size:
input a dict ``{"label": int64 (N, 1, H, W), "instance": int64 (N, 1, H, W)}`` (instance
only for models that use instance maps; ``features`` float32 (N, feat_num, H, W) may be
given to the python model directly), output float32 ``(N, 3, H, W)`` in [-1, 1]. H and W
are the caller's: inputs are padded (edge replication) to the graph's size multiple and
the image is cropped back, as ``pix2pixhd generate`` does. Models with instance
features and cluster centres draw each instance's feature from its class's centres
(seeded by the ``seed`` param) when no features are given.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

ONNX_ARTIFACT = "onnx"  # artifact keys of the logged model
CHECKPOINT_ARTIFACT = "checkpoint"


def _class_of(instance_id: int) -> int:
    return instance_id // 1000 if instance_id >= 1000 else instance_id


def _bad(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def draw_features(
    instance: np.ndarray, centres: dict[int, np.ndarray], feat_num: int, seed: int
) -> np.ndarray:
    """(N, 1, H, W) instance ids -> (N, feat_num, H, W): each instance takes one random
    centre of its class; classes without centres get zeros (model.features does the same
    with torch)."""
    rng = np.random.default_rng(seed)
    n, _, h, w = instance.shape
    out = np.zeros((n, feat_num, h, w), np.float32)
    for b in range(n):
        for i in np.unique(instance[b]):
            c = centres.get(_class_of(int(i)))
            if c is None or len(c) == 0:
                continue
            mask = instance[b, 0] == i
            out[b][:, mask] = c[int(rng.integers(len(c)))][:, None]
    return out


def _pad(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")


class OnnxGenerator(PythonModel):
    """pyfunc wrapper of the exported ONNX generator (see the module doc)."""

    def load_context(self, context: Any) -> None:
        import onnxruntime as ort

        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        opts = ort.SessionOptions()  # as components.engine: no arena, no memory pattern
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
        self.session = ort.InferenceSession(
            context.artifacts[ONNX_ARTIFACT], opts, providers=providers
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        self.meta = dict(meta)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.size_multiple = int(meta["size_multiple"])
        self.label_nc = int(meta["label_nc"])
        self.use_instance_map = meta["use_instance_map"] == "true"
        self.use_instance_features = meta["use_instance_features"] == "true"
        self.feat_num = int(meta["feat_num"])
        raw = json.loads(meta.get("cluster_centers", "{}"))
        self.centres = {int(k): np.asarray(v, np.float32) for k, v in raw.items()}

    def _map(self, inputs: dict, name: str) -> np.ndarray:
        if name not in inputs or inputs[name] is None:
            raise _bad(f"input '{name}' is missing: this model needs {self.inputs}")
        x = np.asarray(inputs[name])
        if x.ndim != 4 or x.shape[1] != 1 or not np.issubdtype(x.dtype, np.integer):
            raise _bad(f"input '{name}': expected int64 (N, 1, H, W), got {x.dtype} {x.shape}")
        return x.astype(np.int64, copy=False)

    # no type hints: MLflow would read them as a schema; the logged signature is the contract
    def predict(self, context, model_input, params=None):
        if not isinstance(model_input, dict):
            raise _bad(f"expected a dict of arrays {self.inputs}, got {type(model_input).__name__}")
        label = self._map(model_input, "label")
        n, _, h, w = label.shape
        if label.min() < 0 or label.max() >= self.label_nc:
            raise _bad(f"input 'label': ids must be in [0, {self.label_nc}), got {label.max()}")
        feeds = {"label": label}
        if self.use_instance_map:
            inst = self._map(model_input, "instance")
            if inst.shape != label.shape:
                raise _bad(f"input 'instance': shape {inst.shape} differs from label {label.shape}")
            feeds["instance"] = inst
        if self.use_instance_features:
            feats = model_input.get("features")
            if feats is None:
                if not self.centres:
                    raise _bad("input 'features' is missing and the model has no cluster centres")
                seed = int((params or {}).get("seed", 0))
                feats = draw_features(feeds["instance"], self.centres, self.feat_num, seed)
            feats = np.asarray(feats, np.float32)
            if feats.shape != (n, self.feat_num, h, w):
                raise _bad(
                    f"input 'features': expected float32 {(n, self.feat_num, h, w)}, "
                    f"got {feats.shape}"
                )
            feeds["features"] = feats
        m = self.size_multiple
        ph, pw = -(-h // m) * m, -(-w // m) * m
        feeds = {k: _pad(v, ph, pw) for k, v in feeds.items()}
        image = self.session.run(None, feeds)[0]
        return np.ascontiguousarray(image[:, :, :h, :w], dtype=np.float32)
