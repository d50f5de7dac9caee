"""Step `features`: encode every training instance with the trained E and cluster the
features per class (k-means); the centres go into a copy of the checkpoint, for
generation and editing without a reference photo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from components.signature import PositiveInt
from components.tracking import Orchestrator, Tracker, current, file_sha256, tracked_step
from model.checkpoint import build_model, load_checkpoint, save_checkpoint
from model.config import LayoutOrAuto
from model.datasets import PairedDataset, detect_layout, find_samples
from model.errors import InputError
from model.features import FeatureConfig, cluster_features, instance_features
from model.fileio import prepare_out_dir, write_json, write_metrics
from model.labels import LABELS
from model.palette import load_palette
from model.progress import progress

log = logging.getLogger(__name__)
_NAMES = {lab.id: lab.name for lab in LABELS}


def _track(tracker: Tracker, args: Any, summary: dict[str, Any] | None) -> None:
    """MLflow: the checkpoint written (the one export serves and links to: tags
    ``checkpoint_sha256`` and ``checkpoint_artifact``) and the summary."""
    out = Path(args["out"])
    if summary is None or not (out / "model.pth").is_file():
        return
    tracker.log_artifact(out / "features_summary.json")
    tracker.log_artifact(out / "model.pth", "checkpoint")
    tracker.set_tags(
        {
            "checkpoint_sha256": file_sha256(out / "model.pth"),
            "checkpoint_artifact": "checkpoint/model.pth",
            "dataset_hash": str(summary.get("dataset_hash") or ""),
        }
    )


@tracked_step("features", after=_track)
def run(
    checkpoint: Path,
    data: Path,
    out: Path,
    cfg: FeatureConfig | None = None,
    layout: LayoutOrAuto = "auto",
    batch_size: PositiveInt = 4,
    palette: str = "",
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Cluster instance features into the checkpoint (the encoder E, k-means per class).

    Encode every training instance with the encoder E, cluster the features per class
    (k-means) and write ``out/model.pth``: the checkpoint plus its cluster centres (a
    model without E is copied as it is).

    Args:
        checkpoint: the local stage's ``latest.pth``.
        data: the dataset root (its train split is encoded).
        out: the output directory (``model.pth``, ``features_summary.json`` and its
            numbers in ``metrics.json``).
        cfg: clusters per class, the minimum instance area, the seed.
        layout: the dataset layout (``auto``: detected).
        batch_size: images per encoder batch.
        palette: colour label maps: the palette (data.palette; empty: label ids).
        tracking: log an MLflow run (nested in the pipeline execution's run).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.
    """
    cfg = cfg or FeatureConfig()
    prepare_out_dir(out)
    ckpt = load_checkpoint(checkpoint)
    target = out / "model.pth"
    model = build_model(ckpt).eval()
    if model.netE is None:
        save_checkpoint(
            target, {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}
        )
        summary = {
            "skipped": "the model has no instance feature encoder",
            "checkpoint": str(target),
            "dataset_hash": str(ckpt.get("dataset_hash") or ""),
        }
        write_json(out / "features_summary.json", summary)
        write_metrics(out / "metrics.json", summary)
        return summary
    width, height = ckpt.get("image_size") or (None, None)
    lay = detect_layout(data) if layout == "auto" else layout
    samples = find_samples(data, lay, "train")
    if not samples:
        raise InputError(f"{data}: no training samples")
    if width is None:
        raise InputError(
            f"{checkpoint}: the checkpoint does not record its training size; "
            "it was not written by `pix2pixhd train`"
        )
    pal = load_palette(palette) if palette else None  # colour label maps (data.palette)
    ds = PairedDataset(samples, model.cfg.label_nc, int(width), int(height), palette=pal)
    data_hash = str(ckpt.get("dataset_hash") or "")  # the data the checkpoint trained on
    current().log_input_dataset(str(data), "train", data_hash, context="training")
    encoded = []
    for start in progress(range(0, len(ds), batch_size), desc="encode instances", unit="batch"):
        items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
        image = torch.stack([it["image"] for it in items])
        inst = torch.stack([it["instance"] for it in items])
        encoded += instance_features(model, image, inst)
    centres = cluster_features(encoded, cfg)
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "format_version")}
    payload["cluster_centers"] = {int(c): torch.from_numpy(v) for c, v in centres.items()}
    payload["feature_config"] = {
        "n_clusters": cfg.n_clusters,
        "min_area": cfg.min_area,
        "seed": cfg.seed,
    }
    save_checkpoint(target, payload)
    summary = {
        "checkpoint": str(target),
        "instances_encoded": len(encoded),
        "instances_clustered": sum(1 for _, a, _ in encoded if a > cfg.min_area),
        "classes": {_NAMES.get(c, str(c)): int(v.shape[0]) for c, v in centres.items()},
        "dataset_hash": data_hash,
    }
    write_json(out / "features_summary.json", summary)
    write_metrics(out / "metrics.json", summary)  # its numbers only
    log.info("clustered %d classes into %s", len(centres), target)
    return summary
