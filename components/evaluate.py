"""Step `evaluate`: generate the val split, segment generated and real photos with the
frozen segmenter and score both against the input label maps. The scores go to
`export`, which registers the servable model with them.

Writes ``metrics.json`` (pixel accuracy and mean IoU for generated and real photos),
``iou_per_class.csv``, ``confusion_matrix.json`` (19 train ids, generated images),
``samples.png`` (label | generated | real | segmentation of the generated image) and
``evaluation.json`` (the scores, the checkpoint's sha256, the
dataset hash and the MLflow run: what `export` registers the servable model with).
The MLflow run logs the step's params, the scores as metrics, the val split as an input
dataset (validate's hash as its digest) and the sample grid.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from components.export import file_sha256
from components.params import EvaluateParams
from components.segmenter import load_segmenter
from components.tracking import Tracker, git_sha, orchestrator_tag
from model.checkpoint import build_model, load_checkpoint
from model.datasets import PairedDataset, detect_layout, find_samples
from model.errors import InputError
from model.features import features_from_clusters
from model.fileio import atomic_open, prepare_out_dir, write_json
from model.image_io import tensor_to_rgb, write_png
from model.labels import LABELS, colorize
from model.metrics import TRAIN_NAMES, ConfusionMatrix, label_ids_to_train_ids, scores
from model.palette import load_palette
from model.pspnet import segment

log = logging.getLogger(__name__)

MEAN_IOU_CONVENTION = (
    "mean over classes with TP+FP+FN > 0 (absent and never predicted classes are NaN and "
    "skipped, as the official Cityscapes evaluator does)"
)


def _train_id_colours() -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for lab in LABELS:
        if 0 <= lab.train_id < 255:
            lut[lab.train_id] = lab.color
    return lut


def run(
    checkpoint: Path,
    segmenter: Path,
    data: Path,
    out: Path,
    params: EvaluateParams | None = None,
    layout: str = "auto",
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: str | None = None,
    experiment: str = "pix2pixhd",
    data_summary: Path | None = None,
    palette: str = "",
) -> dict[str, Any]:
    """Score a generator on the val split with the frozen segmenter.

    Args:
        checkpoint: the generator checkpoint (features' ``model.pth``).
        segmenter: the frozen segmenter (``segmenter.pth`` of the segmenter step).
        data: the dataset root; its val split is generated and scored.
        out: the output directory (metrics.json, evaluation.json, iou_per_class.csv,
            confusion_matrix.json, samples.png).
        params: batch size, seed, sample rows and the model name export registers.
        layout: the dataset layout (``auto``: detected).
        tracking: log an MLflow run (off: files only).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.
        data_summary: validate's summary.json, whose dataset hash is recorded
            (default: the one in the checkpoint).
        palette: colour label maps: the palette (data.palette; empty: label ids).
    """
    params = params or EvaluateParams()
    prepare_out_dir(out)  # writable, before any work; temporaries of killed runs go
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    seg, seg_params = load_segmenter(segmenter)
    width, height = ckpt.get("image_size") or (None, None)
    if width is None:
        raise InputError(f"{checkpoint}: the checkpoint does not record its image size")
    lay = detect_layout(data) if layout == "auto" else layout
    val = find_samples(data, lay, "val", model.cfg.use_instance_map)
    if not val:
        raise InputError(f"{data}: no val samples to evaluate on")
    pal = load_palette(palette) if palette else None  # colour label maps (data.palette)
    ds = PairedDataset(val, model.cfg.label_nc, int(width), int(height), palette=pal)
    centres = {int(k): v for k, v in (ckpt.get("cluster_centers") or {}).items()}
    rng = torch.Generator().manual_seed(params.seed)
    cm_fake, cm_real = ConfusionMatrix(), ConfusionMatrix()
    grid_rows = []
    colours = _train_id_colours()
    for start in tqdm(range(0, len(ds), params.batch_size), desc="evaluate", unit="batch"):
        items = [ds[i] for i in range(start, min(len(ds), start + params.batch_size))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        feats = None
        if model.cfg.use_instance_features and centres:
            feats = features_from_clusters(
                batch["instance"], centres, model.cfg.encoder.feat_num, rng
            )
        fake = model.generate(
            batch["label"], batch.get("instance"), image=batch["image"], features=feats
        )
        pred_fake = segment(
            seg, (fake + 1) * 127.5, crop=seg_params.crop or None, flip=seg_params.flip
        ).argmax(1)
        pred_real = segment(
            seg, (batch["image"] + 1) * 127.5, crop=seg_params.crop or None, flip=seg_params.flip
        ).argmax(1)
        for i in range(len(items)):
            target = label_ids_to_train_ids(batch["label"][i, 0].numpy())
            cm_fake.update(pred_fake[i].numpy(), target)
            cm_real.update(pred_real[i].numpy(), target)
            if len(grid_rows) < params.samples:
                grid_rows.append(
                    np.concatenate(
                        [
                            colorize(batch["label"][i, 0].numpy()),
                            tensor_to_rgb(fake[i]),
                            tensor_to_rgb(batch["image"][i]),
                            colours[pred_fake[i].numpy()],
                        ],
                        axis=1,
                    )
                )
    s_fake, s_real = scores(cm_fake), scores(cm_real)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "generated": {"pixel_accuracy": s_fake.pixel_accuracy, "mean_iou": s_fake.mean_iou},
        "real": {"pixel_accuracy": s_real.pixel_accuracy, "mean_iou": s_real.mean_iou},
        "images": len(ds),
        "mean_iou_convention": MEAN_IOU_CONVENTION,
    }
    with atomic_open(out / "iou_per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "generated", "real"])
        for name in TRAIN_NAMES:
            w.writerow(
                [name, f"{s_fake.iou_per_class[name]:.4f}", f"{s_real.iou_per_class[name]:.4f}"]
            )
    write_png(out / "samples.png", np.concatenate(grid_rows, axis=0))
    dataset_hash = ckpt.get("dataset_hash", "")
    if data_summary is not None and Path(data_summary).is_file():
        dataset_hash = json.loads(Path(data_summary).read_text()).get("dataset_hash", "")
    scores_flat = {
        "generated_pixel_accuracy": s_fake.pixel_accuracy,
        "generated_mean_iou": s_fake.mean_iou,
        "real_pixel_accuracy": s_real.pixel_accuracy,
        "real_mean_iou": s_real.mean_iou,
        "mean_iou_ratio": s_fake.mean_iou / s_real.mean_iou if s_real.mean_iou else 0.0,
    }
    evaluation: dict[str, Any] = {
        "model_name": params.model_name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "dataset_hash": dataset_hash,
        "run_id": None,
        # the registry's scores (registry.promote compares `mean_iou` by default)
        "scores": {
            "mean_iou": s_fake.mean_iou,
            "pixel_accuracy": s_fake.pixel_accuracy,
            **scores_flat,
        },
    }
    if tracking:
        tracker = Tracker(tracking_uri=tracking_uri)
        tags = {
            "stage": "evaluate",
            "git_sha": git_sha(),
            "dataset_hash": dataset_hash,
            "orchestrator": orchestrator_tag(orchestrator),
        }
        tracker.start(experiment, "evaluate", tags)
        tracker.log_params(
            {
                **{f"evaluate.{k}": v for k, v in asdict(params).items()},
                "checkpoint": str(checkpoint),
                "segmenter": str(segmenter),
                "segmenter.crop": seg_params.crop,
                "segmenter.flip": seg_params.flip,
                "data": str(data),
                "layout": lay,
                "images": len(ds),
            }
        )
        tracker.log_input_dataset(str(data), "val", dataset_hash, context="evaluation")
        tracker.log_metrics(scores_flat, step=0)
        tracker.log_artifact(out / "iou_per_class.csv")
        tracker.log_artifact(out / "samples.png")
        tracker.end()
        evaluation["run_id"] = tracker.run_id
    write_json(out / "evaluation.json", evaluation)
    write_json(out / "metrics.json", metrics)
    confusion = {  # generated images: rows ground truth, columns prediction (train ids)
        "categories": list(TRAIN_NAMES),
        "matrix": cm_fake.matrix[:, : len(TRAIN_NAMES)].tolist(),
    }
    write_json(out / "confusion_matrix.json", confusion, indent=None)
    metrics["scores"] = scores_flat  # flat, for orchestrators' metric outputs (kfp)
    log.info(
        "generated: pixel acc %.4f mIoU %.4f | real: pixel acc %.4f mIoU %.4f",
        s_fake.pixel_accuracy,
        s_fake.mean_iou,
        s_real.pixel_accuracy,
        s_real.mean_iou,
    )
    return metrics
