"""The whole generator as one ONNX graph: raw label ids (+ instance ids, + features) in,
image out. One-hot encoding and the boundary map are computed inside the graph, so
clients send label maps, not prepared tensors.

Inputs: ``label`` int64 (N, 1, H, W); ``instance`` int64 (N, 1, H, W) when the model
uses instance maps; ``features`` float32 (N, feat_num, H, W) when it uses instance
features. Output: ``image`` float32 (N, 3, H, W) in [-1, 1]. N, H, W are dynamic
(H and W multiples of the model's size multiple).

The metadata carries ``content_sha256``, a SHA-256 of the serialised graph (weights
included), verified by ``load_verified``: flipped bytes are an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from model import __version__
from model.encoding import encode_label
from model.errors import InputError
from model.fileio import atomic_open
from model.onnx_integrity import HASH_KEY, graph_hash, load_verified, stamp  # noqa: F401
from model.pix2pixhd import Pix2PixHD


class ExportableGenerator(nn.Module):
    def __init__(self, model: Pix2PixHD) -> None:
        super().__init__()
        self.cfg = model.cfg
        self.netG = model.netG

    def forward(self, label: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        rest_list = list(rest)
        instance = rest_list.pop(0) if cfg.use_instance_map else None
        encoded = encode_label(label, instance, cfg.label_nc, cfg.use_instance_map)
        if cfg.use_instance_features:
            encoded = torch.cat([encoded, rest_list.pop(0)], dim=1)
        return self.netG(encoded)


def input_names(model: Pix2PixHD) -> list[str]:
    names = ["label"]
    if model.cfg.use_instance_map:
        names.append("instance")
    if model.cfg.use_instance_features:
        names.append("features")
    return names


def example_inputs(
    model: Pix2PixHD, n: int = 2, h: int | None = None, w: int | None = None
) -> tuple[torch.Tensor, ...]:
    m = model.cfg.generator.size_multiple
    h, w = h or 2 * m, w or 4 * m
    label = torch.randint(0, max(1, model.cfg.label_nc), (n, 1, h, w))
    if model.cfg.label_nc == 0:
        raise InputError("ONNX export of RGB-label (label_nc 0) models is not supported")
    inputs = [label]
    if model.cfg.use_instance_map:
        inputs.append(label * 1000 + torch.randint(0, 3, (n, 1, h, w)))
    if model.cfg.use_instance_features:
        inputs.append(torch.rand(n, model.cfg.encoder.feat_num, h, w) * 2 - 1)
    return tuple(inputs)


def export_onnx(
    model: Pix2PixHD,
    path: Path,
    fp16: bool = False,
    cluster_centers: dict[int, torch.Tensor] | None = None,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Export, check with onnx.checker, add metadata (``extra_metadata`` too, e.g. the
    source checkpoint's hash; all covered by the content hash); optionally fp16."""
    import onnx

    model = model.eval()
    wrapper = ExportableGenerator(model).eval()
    names = input_names(model)
    m = model.cfg.generator.size_multiple
    batch = torch.export.Dim("batch", min=1, max=1024)
    hd = torch.export.Dim("h_blocks", min=1, max=4096 // m)
    wd = torch.export.Dim("w_blocks", min=1, max=8192 // m)
    spatial = {0: batch, 2: m * hd, 3: m * wd}
    dynamic = {"label": spatial, "rest": tuple(dict(spatial) for _ in names[1:])}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example_inputs(model),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=names,
            output_names=["image"],
            optimize=True,
        )
    proto = program.model_proto
    meta = {
        "label_nc": str(model.cfg.label_nc),
        "size_multiple": str(m),
        "use_instance_map": str(model.cfg.use_instance_map).lower(),
        "use_instance_features": str(model.cfg.use_instance_features).lower(),
        "feat_num": str(model.cfg.encoder.feat_num),
        "producer": "pix2pixhd-pipeline",
        "version": __version__,
    }
    if cluster_centers:  # so ONNX clients can draw instance features without the checkpoint
        meta["cluster_centers"] = json.dumps(
            {str(int(k)): torch.as_tensor(v).tolist() for k, v in cluster_centers.items()}
        )
    meta.update(extra_metadata or {})
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        proto = convert_float_to_float16(proto, keep_io_types=True)
        fixed = OnnxModel(proto)  # the converter appends input casts out of order
        fixed.topological_sort()
        proto = fixed.model
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto, full_check=True)
    stamp(proto)
    with atomic_open(path, "wb") as f:
        onnx.save(proto, f)
    return path
