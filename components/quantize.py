"""int8 generator graphs: ONNX Runtime static quantization of an exported fp32 graph.

QDQ format, per-channel int8 weights, uint8 activations (the recommended pairing for
x86 CPUs with VNNI), activation ranges calibrated (MinMax) on training label maps: the
label and instance maps of the dataset's ``train`` split at the model's training size,
instance features drawn from the graph's cluster centres. What stays fp32: the
in-graph label encoding (one-hot, boundary map), InstanceNormalization and the final
Tanh, with quantize/dequantize pairs around them (bench/quantize.py reports the speed
and the quality cost on the evaluation set).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from model.errors import InputError

log = logging.getLogger(__name__)


def calibration_feeds(
    onnx_path: Path,
    data: Path,
    size: tuple[int, int],
    samples: int = 16,
    layout: str = "auto",
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Inputs for the graph at ``onnx_path`` from ``samples`` training label maps of
    ``data``, resized to ``size`` (width, height), one sample per feed."""
    import onnx
    import torch

    from model.datasets import PairedDataset, detect_layout, find_samples
    from model.features import features_from_clusters

    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    names = [i.name for i in proto.graph.input]
    label_nc, feat_num = int(meta["label_nc"]), int(meta["feat_num"])
    lay = detect_layout(data) if layout == "auto" else layout
    train = find_samples(data, lay, "train", "instance" in names)
    if not train:
        raise InputError(f"{data}: no training samples to calibrate the int8 graph on")
    step = max(1, len(train) // samples)  # spread over the split, deterministic
    picked = train[::step][:samples]
    ds = PairedDataset(picked, label_nc, size[0], size[1])
    centres = {
        int(k): torch.tensor(v) for k, v in json.loads(meta.get("cluster_centers", "{}")).items()
    }
    rng = torch.Generator().manual_seed(seed)
    feeds = []
    for i in range(len(ds)):
        item = ds[i]
        feed = {"label": item["label"][None].numpy()}
        if "instance" in names:
            feed["instance"] = item["instance"][None].numpy()
        if "features" in names:
            inst = item["instance"][None]
            feats = features_from_clusters(inst, centres, feat_num, rng)
            feed["features"] = feats.numpy().astype(np.float32)
        feeds.append(feed)
    return feeds


def quantize_int8(fp32_path: Path, out: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Write the int8 (QDQ) version of the graph at ``fp32_path`` to ``out`` (metadata
    kept, ``precision: int8`` added)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from model.onnx_integrity import stamp

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pre = out.with_name(out.stem + ".pre.onnx")
    tmp = out.with_name(out.stem + ".tmp.onnx")
    try:
        # shape inference and constant folding first, as onnxruntime recommends
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(tmp))
        meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
        meta["precision"] = "int8"
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        stamp(proto)  # the int8 graph's own content hash
        onnx.save(proto, str(tmp))
        tmp.replace(out)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out


def op_counts(path: Path) -> dict[str, int]:
    """Node types of a graph and how many of each (to see what stays fp32)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def max_diff(a_path: Path, b_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Max and mean |a - b| of two graphs' outputs over ``feeds`` (images in [-1, 1])."""
    from components.onnx_session import make_session

    a, b = make_session(a_path), make_session(b_path)
    worst, total, n = 0.0, 0.0, 0
    for feed in feeds:
        d = np.abs(a.run(None, feed)[0] - b.run(None, feed)[0])
        worst, total, n = max(worst, float(d.max())), total + float(d.sum()), n + d.size
    return {"max_abs_diff": worst, "mean_abs_diff": total / max(1, n)}
