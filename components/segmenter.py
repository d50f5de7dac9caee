"""Step `segmenter train`: train (or load) the frozen segmenter the evaluation uses.

Datasets with a published Cityscapes PSPNet use it (``segmenter.weights``: a semseg
checkpoint, loaded as is). Datasets without one, like the bundled dataset, get a
segmenter trained here on the real photos (the author's recipe: SGD, momentum 0.9,
poly learning rate, cross-entropy with ignore 255 plus 0.4 x the aux loss); it is then
frozen and versioned (DVC output, MLflow artifact of the step's run, which also has the
training loss, the data as input dataset and the oracle scores). Its score on the real
val photos is the oracle row of the evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from components import storage
from components.params import SegmenterParams
from components.tracking import (
    Orchestrator,
    Tracker,
    current,
    dataset_hash,
    tracked_step,
)
from model.checkpoint import _torch_load, load_checkpoint, save_checkpoint
from model.config import LayoutOrAuto
from model.datasets import PairedDataset, detect_layout, find_samples
from model.errors import CheckpointError, InputError
from model.fileio import prepare_out_dir, without_timings, write_json, write_metrics
from model.metrics import ConfusionMatrix, label_ids_to_train_ids, scores
from model.palette import load_palette
from model.progress import progress
from model.pspnet import PSPNet, PSPNetConfig, load_pspnet_state, normalise, segment

log = logging.getLogger(__name__)


def pspnet_config(p: SegmenterParams) -> PSPNetConfig:
    if p.backbone not in ("resnet50", "resnet101", "light"):
        raise InputError(
            f"segmenter.backbone {p.backbone!r}: expected resnet50, resnet101 or light"
        )
    return PSPNetConfig(backbone=p.backbone)  # type: ignore[arg-type]


def load_segmenter(path: Path) -> tuple[PSPNet, SegmenterParams]:
    """A segmenter written by this step."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "segmenter":
        raise CheckpointError(
            f"{path}: not a segmenter checkpoint (run `pix2pixhd segmenter train`)"
        )
    params = SegmenterParams(**ckpt["segmenter_params"])
    model = PSPNet(pspnet_config(params))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), params


def _train_ids(label: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(label_ids_to_train_ids(label.numpy())).long()


def _rgb255(image: torch.Tensor) -> torch.Tensor:
    return (image + 1) * 127.5


def evaluate_real(model: PSPNet, ds: PairedDataset, p: SegmenterParams) -> dict[str, Any]:
    cm = ConfusionMatrix()
    for i in range(len(ds)):
        item = ds[i]
        probs = segment(model, _rgb255(item["image"])[None], crop=p.crop or None, flip=p.flip)
        cm.update(probs.argmax(1)[0].numpy(), _train_ids(item["label"][0]).numpy())
    return scores(cm).as_dict()


def _track(tracker: Tracker, args: Any, summary: dict[str, Any] | None) -> None:
    """MLflow: the frozen segmenter and its per-class scores on the real val photos."""
    out = Path(args["out"])
    if summary is None:
        return
    tracker.log_artifact(out / "iou_per_class.json")
    tracker.log_artifact(out / "segmenter.pth", "segmenter")


@tracked_step("segmenter", after=_track)
def run(
    data: Path,
    out: Path,
    params: SegmenterParams,
    width: int,
    height: int,
    layout: LayoutOrAuto = "auto",
    palette: str = "",
    data_summary: Path | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Train the frozen evaluation segmenter (a PSPNet) or load published weights.

    Train the evaluation segmenter on the real photos (or load the published PSPNet
    named by ``params.weights``), freeze it and score it on the val photos.

    Args:
        data: the dataset root.
        out: the output directory (``segmenter.pth``, ``metrics.json`` with the oracle
            scores, ``iou_per_class.json``).
        params: backbone, published weights, epochs, optimiser, crops, flip.
        width, height: the size photos are resized to (the generator's).
        layout: the dataset layout (``auto``: detected).
        palette: colour label maps: the palette (data.palette; empty: label ids).
        data_summary: validate's summary.json (its dataset hash: the MLflow input's digest).
        tracking: log an MLflow run (nested in the pipeline execution's run).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.
    """
    prepare_out_dir(out)
    pal = load_palette(palette) if palette else None  # colour label maps (data.palette)
    lay = detect_layout(data) if layout == "auto" else layout
    train = find_samples(data, lay, "train", use_instance_map=False)
    val = find_samples(data, lay, "val", use_instance_map=False)
    if not train and not params.weights:
        raise InputError(f"{data}: no training samples to train the segmenter on")
    splits = "train,val" if train else "val"
    current().log_input_dataset(str(data), splits, dataset_hash(data_summary), "training")
    torch.manual_seed(params.seed)
    model = PSPNet(pspnet_config(params))
    start = time.perf_counter()
    if params.weights:
        weights = storage.localize(params.weights)
        load_pspnet_state(model, _torch_load(weights), params.weights)
        history: list[dict[str, float]] = []
    else:
        side = min(params.train_crop, width, height)  # never larger than the images
        crop = (side, side) if params.train_crop else None
        ds = PairedDataset(
            train, 35, width, height, crop=crop, flip=True, seed=params.seed, palette=pal
        )
        history = _train(model, ds, params)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    save_checkpoint(
        out / "segmenter.pth",
        {
            "kind": "segmenter",
            "segmenter_params": dataclasses.asdict(params),
            "state_dict": model.state_dict(),
            "image_size": [width, height],
        },
    )
    val_ds = PairedDataset(val, 35, width, height, palette=pal)
    oracle = evaluate_real(model, val_ds, params) if val else {}
    summary = {
        "segmenter": str(out / "segmenter.pth"),
        "backbone": params.backbone,
        "trained_here": not params.weights,
        "seconds": round(time.perf_counter() - start, 1),
        "val_real_pixel_accuracy": oracle.get("pixel_accuracy"),
        "val_real_mean_iou": oracle.get("mean_iou"),
        "final_loss": history[-1]["loss"] if history else None,
    }
    kept, timings = without_timings(summary)
    write_json(out / "summary.json", kept)
    write_metrics(out / "metrics.json", kept)  # its numbers only
    write_json(out / "timings.json", timings)  # declared nowhere: not DVC's
    write_json(out / "iou_per_class.json", oracle.get("iou_per_class", {}))
    log.info("segmenter: val mIoU on real photos %.3f", summary["val_real_mean_iou"] or 0)
    return summary


def _train(model: PSPNet, ds: PairedDataset, p: SegmenterParams) -> list[dict[str, float]]:
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=p.batch_size,
        shuffle=True,
        drop_last=len(ds) > p.batch_size,
        generator=torch.Generator().manual_seed(p.seed),
    )
    opt = torch.optim.SGD(
        model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
    )
    total = max(1, p.epochs * len(loader))
    step, history = 0, []
    log_every = max(1, total // 100)  # about 100 points of the loss curve in MLflow
    model.train()
    bar = progress(total=total, desc="segmenter", unit="it")
    for epoch in range(p.epochs):
        ds.epoch = epoch
        for batch in loader:
            for g in opt.param_groups:  # poly schedule, power 0.9
                g["lr"] = p.lr * (1 - step / total) ** 0.9
            target = _train_ids(batch["label"][:, 0])
            main, aux = model(normalise(_rgb255(batch["image"])))
            loss = F.cross_entropy(main, target, ignore_index=255)
            loss = loss + 0.4 * F.cross_entropy(aux, target, ignore_index=255)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"step": step, "loss": float(loss.detach())})
            if step % log_every == 0 or step == total:
                current().log_metrics({"loss": history[-1]["loss"], "lr": g["lr"]}, step)
    bar.close()
    return history
