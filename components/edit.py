"""Step `edit`: apply semantic edits to one label/instance map pair and generate the
result (the paper's interactive editing, as a reproducible command), and `--samples K`
variations drawing other cluster centres per instance (multi-modal synthesis)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.engine import Engine
from components.generate import Generator, generate_batch, load_generator
from model.checkpoint import build_model, load_checkpoint
from model.editing import apply_edits
from model.errors import ConfigError, InputError
from model.fileio import StagedFiles, prepare_out_dir, read_json, write_json
from model.image_io import (
    label_to_tensor,
    read_instance,
    read_label,
    read_rgb,
    rgb_to_tensor,
    tensor_to_rgb,
    write_png,
)
from model.labels import colorize
from model.model_contract import draw_features

log = logging.getLogger(__name__)


def run(
    checkpoint: Path,
    labels: Path,
    instances: Path,
    out: Path,
    edits: Path | None = None,
    samples: int = 0,
    seed: int = 0,
    engine: Engine = "auto",
) -> dict[str, Any]:
    """Semantic manipulation: edit a label map and generate before/after images.

    Outputs (maps, images, summary) are replaced together, or not at all.

    Args:
        checkpoint: the generator checkpoint.
        labels: one label-id PNG.
        instances: its instance-id PNG.
        out: the output directory (before/after images, edited maps, samples, summary).
        edits: EDITS.json (relabel, add, remove, style; format in ``model/editing.py``);
            None: just render (and sample).
        samples: how many variations with other cluster centres to render.
        seed: the cluster-centre draws.
        engine: ``auto``, ``onnx`` or ``torch`` (see ``components.engine``).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"--samples {samples!r}: expected an integer >= 1")
    prepare_out_dir(out)
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    cfg = model.cfg
    if cfg.label_nc == 0:
        raise InputError("editing needs label ids (label_nc > 0)")
    label, inst = read_label(labels), read_instance(instances)
    if label.shape != inst.shape:
        raise InputError(f"{instances}: size differs from {labels}")
    centres = {
        int(k): torch.as_tensor(v).float().numpy().reshape(len(v), -1)
        for k, v in (ckpt.get("cluster_centers") or {}).items()
    }
    if cfg.use_instance_features and not centres:
        raise InputError(f"{checkpoint}: no cluster centres: run `pix2pixhd features` first")
    if samples and not cfg.use_instance_features:
        raise InputError("--samples needs a model with instance features")
    doc: dict[str, Any] = {"edits": []}
    if edits is not None:
        doc = read_json(edits, "edits file")
    base = Path(edits).parent if edits is not None else Path(".")

    def load_mask(name: str) -> np.ndarray:
        path = base / name
        return read_label(path) > 0

    def encode_reference(edit: dict[str, Any]) -> np.ndarray:
        photo = rgb_to_tensor(read_rgb(base / edit["photo"]))[None]
        ref_inst = label_to_tensor(read_instance(base / edit["photo_instances"]))[None]
        hits = (ref_inst[0, 0] == int(edit["photo_instance"])).nonzero()
        if len(hits) == 0:
            raise InputError(f"{edit['photo_instances']}: no instance {edit['photo_instance']}")
        with torch.inference_mode():
            feats = model.encode_features(photo, ref_inst)
        y, x = hits[0].tolist()
        return feats[0, :, y, x].numpy()

    encoder = encode_reference if cfg.use_instance_features else None
    result = apply_edits(label, inst, doc, cfg.label_nc, load_mask, centres, encoder)
    if engine == "torch":
        gen = Generator.from_model(model, centres, torch.device("cpu"))
    else:  # ONNX Runtime on the checkpoint's cached graph (features are passed in)
        gen = load_generator(checkpoint, engine=engine, device="cpu")

    def render(
        lab: np.ndarray,
        ins: np.ndarray,
        gen_seed: int,
        choice: dict[int, int],
        override: dict[int, np.ndarray],
    ) -> np.ndarray:
        sample = {"label": label_to_tensor(lab), "instance": label_to_tensor(ins)}
        if cfg.use_instance_features:  # as serve's /v1/edit: model.model_contract
            feats = draw_features(ins, centres, cfg.encoder.feat_num, gen_seed, choice, override)
            sample["features"] = torch.from_numpy(feats)
        return tensor_to_rgb(generate_batch(gen, [sample])[0])

    before = render(label, inst, seed, {}, {})
    after = render(
        result.label, result.instance, seed, result.cluster_choice, result.feature_override
    )
    staged = StagedFiles(out)
    write_png(staged.path("labels.png"), result.label.astype(np.uint8))
    write_png(staged.path("instances.png"), result.instance.astype(np.uint16))
    write_png(staged.path("before.png"), before)
    write_png(staged.path("after.png"), after)
    write_png(
        staged.path("before_after.png"),
        np.concatenate(
            [
                np.concatenate([colorize(label), before], 1),
                np.concatenate([colorize(result.label), after], 1),
            ],
            0,
        ),
    )
    for k in range(samples):
        write_png(
            staged.path(f"sample_{k:02d}.png"),
            render(
                result.label,
                result.instance,
                seed + 1 + k,
                result.cluster_choice,
                result.feature_override,
            ),
        )
    summary = {"edits": result.log, "out": str(out), "samples": samples, "engine": gen.engine}
    write_json(staged.path("edit_summary.json"), summary)
    staged.commit()
    return summary
