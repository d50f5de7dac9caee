"""The registered generator as an MLflow pyfunc model, served by ONNX Runtime.

It imports numpy, onnxruntime, mlflow and, of the project, only ``model.model_contract``
(and ``model.errors``): no torch. Those modules travel with the logged model as
``code_paths``, as packages of the same import names (``code/components/``,
``code/model/``; ``components/export.py``), so the same import works inside the project
and where only the model's pinned requirements are installed (``mlflow models serve``,
KServe).

The logged model holds only what serving needs: the ONNX graph (artifact ``onnx``), this
code and the contract. The training checkpoint is linked, not copied: tag
``checkpoint_uri`` (``runs:/<run>/checkpoint/...``) on the logged model and the version.

Contract (``model.model_contract``, the same as `pix2pixhd generate --onnx` and `serve`):
input a dict ``{"label": int64 (N, 1, H, W), "instance": int64 (N, 1, H, W)}`` (instance
only for models that use instance maps; ``features`` float32 (N, feat_num, H, W) may be
given to the python model directly), output float32 ``(N, 3, H, W)`` in [-1, 1]. H and W
are the caller's: the maps are edge-padded to the graph's size and the image is cropped
back. Models with instance features and cluster centres draw each instance's feature
from its class's centres by (``seed`` param, instance id) when no features are given.
8-bit images: ``model.model_contract.to_uint8`` (round((clip(x, -1, 1) + 1) * 127.5)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from model.errors import InputError
from model.model_contract import ModelInfo, crop, onnx_feeds

ONNX_ARTIFACT = "onnx"  # the logged model's one artifact


def _bad(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


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
        path = context.artifacts[ONNX_ARTIFACT]
        self.session = ort.InferenceSession(path, opts, providers=providers)
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        self.inputs = [i.name for i in self.session.get_inputs()]

    def _map(self, inputs: dict, name: str) -> np.ndarray:
        if name not in inputs or inputs[name] is None:
            raise _bad(f"input '{name}' is missing: this model needs {self.inputs}")
        x = np.asarray(inputs[name])
        if x.ndim != 4 or x.shape[1] != 1 or not np.issubdtype(x.dtype, np.integer):
            raise _bad(f"input '{name}': expected int64 (N, 1, H, W), got {x.dtype} {x.shape}")
        return x.astype(np.int64, copy=False)

    # MLflow 3 reads this hint. np.ndarray is one of the hints it takes without inferring
    # a schema from it, so the logged TensorSpec signature stays the contract; with named
    # tensors pyfunc passes a dict of arrays (checked below). `dict[str, np.ndarray]`
    # would be reported at every import as a hint MLflow does not support.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        info = self.info
        if not isinstance(model_input, dict):
            raise _bad(f"expected a dict of arrays {self.inputs}, got {type(model_input).__name__}")
        label = self._map(model_input, "label")
        if label.min() < 0 or label.max() >= info.label_nc:
            raise _bad(f"input 'label': ids must be in [0, {info.label_nc}), got {label.max()}")
        inst = self._map(model_input, "instance") if info.use_instance_map else None
        feats = model_input.get("features") if info.use_instance_features else None
        if info.use_instance_features and feats is None and not info.centres:
            raise _bad("input 'features' is missing and the model has no cluster centres")
        try:
            feeds = onnx_feeds(info, label, inst, feats, seed=int((params or {}).get("seed", 0)))
        except InputError as exc:
            raise _bad(f"input {exc}") from None
        image = self.session.run(None, feeds)[0]
        n, _, h, w = label.shape
        return np.ascontiguousarray(crop(image, h, w), dtype=np.float32)
