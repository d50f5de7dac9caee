"""Step `train`: one stage of pix2pixHD training (global, then local), tracked in MLflow.

Writes into ``out``: ``latest.pth`` (the checkpoint: weights, optimisers, scaler, RNG,
counters), ``losses.csv`` (for DVC plots), ``metrics.json`` (numbers only: epochs,
iterations, time, final losses), ``summary.json`` (the same with the checkpoint path,
image size, precision and MLflow run), ``samples.png``.
Under ``torchrun`` it trains data-parallel (NCCL on GPU, gloo on CPU); rank 0 logs and
writes checkpoints.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from components import storage
from components.params import Params, flatten, stage_crop, stage_model_config, stage_size
from components.tracking import Orchestrator, Tracker, dataset_hash, file_sha256, run_tags
from model.checkpoint import (
    init_from_checkpoint,
    init_local_from_global,
    load_checkpoint,
    load_vgg19_state_dict,
)
from model.config import to_dict
from model.datasets import PairedDataset, check_sample_sizes, detect_layout, find_samples
from model.device import resolve_device
from model.encoding import check_size
from model.errors import ConfigError, InputError
from model.fileio import (
    OutputLock,
    atomic_open,
    prepare_out_dir,
    without_timings,
    write_json,
    write_metrics,
)
from model.image_io import write_png
from model.palette import load_palette
from model.pix2pixhd import Pix2PixHD
from model.training import DistInfo, Trainer, TrainHooks
from model.visualize import sample_grid

log = logging.getLogger(__name__)

LOSS_COLUMNS = [
    "step",
    "epoch",
    "lr",
    "G_GAN",
    "G_GAN_Feat",
    "G_VGG",
    "D_real",
    "D_fake",
    "G_total",
    "D_total",
]


class PipelineHooks(TrainHooks):
    """Losses to MLflow and to ``losses.csv`` (rewritten whole, atomically, at each log:
    a killed run never leaves half a row); sample grids to MLflow's image history
    (key ``train_samples``, at their iteration)."""

    def __init__(self, tracker: Tracker, csv_path: Path, label_nc: int) -> None:
        self.tracker, self.csv_path, self.label_nc = tracker, csv_path, label_nc
        self.rows: list[dict[str, Any]] = []

    def truncate_after(self, step: int) -> None:
        """Start the file: on resume, keep the rows up to the checkpoint's step and forget
        those the interrupted run wrote after it; a new run starts with the header."""
        self.rows = []
        if step > 0 and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= step]
        self._write()

    def _write(self) -> None:
        with atomic_open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOSS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append({"step": step, **metrics})
        self._write()
        self.tracker.log_metrics(metrics, step)

    def log_samples(self, batch: dict[str, torch.Tensor], fake: torch.Tensor, step: int) -> None:
        grid = sample_grid(batch["label"], fake, batch["image"], self.label_nc)
        self.tracker.log_image(grid, "train_samples", step)


def _dist_from_env(device: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    resolve_device(device)  # checks the value before any work
    if world > 1:
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        rank = dist.get_rank()
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return DistInfo(rank, world), torch.device("cuda", local)
        return DistInfo(rank, world), torch.device("cpu")
    return DistInfo(), resolve_device(device)


def _final_samples(
    model: Pix2PixHD, dataset: PairedDataset, device: torch.device, n: int = 4
) -> np.ndarray:
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
    model.eval()
    fake = model.generate(batch["label"], batch.get("instance"), image=batch["image"])
    return sample_grid(batch["label"], fake, batch["image"], model.cfg.label_nc, max_rows=n)


def run(
    params: Params,
    stage: Literal["global", "local"],
    data: Path,
    out: Path,
    init_checkpoint: Path | None = None,
    resume: bool = False,
    boundaries: Path | None = None,
    data_summary: Path | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Train one stage and write its checkpoint, losses, samples and metrics.

    Args:
        params: all parameters (the stage's model, size, crop and ``train_<stage>``).
        stage: ``global`` (the global generator at 1/2**n_local_enhancers of the data
            size) or ``local`` (the whole generator, initialised from ``init_checkpoint``).
        data: the dataset root.
        out: the output directory (``latest.pth``, ``losses.csv``, ``samples.png``,
            ``metrics.json``, ``summary.json``).
        init_checkpoint: the global stage's ``latest.pth`` (stage local).
        resume: continue from ``out/latest.pth`` when it exists (``init_checkpoint`` is
            then not used: a job whose workers may restart gives both).
        boundaries: precomputed instance boundary maps (optional).
        data_summary: validate's summary.json (the dataset hash for tags and checkpoint).
        tracking: log to MLflow (rank 0 only).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: the local rank).
    """
    if stage not in ("global", "local"):
        raise ConfigError(f"--stage {stage!r}: expected global or local")
    tcfg = params.train_global if stage == "global" else params.train_local
    cfg = stage_model_config(params, stage)
    width, height = stage_size(params, stage)
    crop = stage_crop(params, stage)
    if crop is not None:
        try:
            check_size(crop[0], crop[1], cfg.generator.size_multiple)
        except InputError as exc:
            raise ConfigError(f"data.crop_size {params.data.crop_size} ({stage}): {exc}") from None
    elif params.data.preprocess == "resize":
        check_size(height, width, cfg.generator.size_multiple)
    dinfo, dev = _dist_from_env(device)
    lock = None
    if dinfo.is_main:
        prepare_out_dir(out)  # writable, before any work; temporaries of killed runs go
        lock = OutputLock(out)  # one writer: held until this function returns
        for name in ("summary.json", "metrics.json", "samples.png"):  # the last run's set
            (out / name).unlink(missing_ok=True)  # never beside this run's losses.csv

    vgg = None
    if cfg.loss.use_vgg_loss:
        if not params.tracking.vgg_weights:
            raise ConfigError(
                "model.loss.use_vgg_loss is on but tracking.vgg_weights is empty: download "
                "torchvision's vgg19-dcbb9e9d.pth once and set "
                "--set tracking.vgg_weights=/path/vgg19-dcbb9e9d.pth, or turn the loss off "
                "with --set model.loss.use_vgg_loss=false"
            )
        vgg = load_vgg19_state_dict(storage.localize(params.tracking.vgg_weights))

    layout = detect_layout(data) if params.data.layout == "auto" else params.data.layout
    samples = find_samples(data, layout, "train", cfg.use_instance_map and layout != "rgb")
    if not samples:
        raise InputError(f"{data}: no training samples (layout {layout})")
    check_sample_sizes(samples)
    torch.manual_seed(tcfg.seed)
    model = Pix2PixHD(cfg, with_discriminator=True, vgg_state_dict=vgg)
    dataset = PairedDataset(
        samples,
        cfg.label_nc,
        width,
        height,
        crop=crop,
        flip=tcfg.flip,
        seed=tcfg.seed,
        boundaries=boundaries,
        preprocess=params.data.preprocess,
        size_multiple=cfg.generator.size_multiple,
        palette=load_palette(params.data.palette) if params.data.palette else None,
    )
    latest = out / "latest.pth"
    data_hash = dataset_hash(data_summary)
    extra = {"image_size": [width, height], "dataset_hash": data_hash}
    trainer = Trainer(
        model, dataset, tcfg, out, dev, stage=stage, dist_info=dinfo, extra_payload=extra
    )
    if resume and trainer.resume(latest):
        log.info(
            "resuming %s at epoch %d, iteration %d",
            latest,
            trainer.state.epoch + 1,
            trainer.state.global_step,
        )
    elif init_checkpoint is not None:
        # exact: every tensor of the target networks, or an error naming what differs
        source = load_checkpoint(init_checkpoint)
        if stage == "local":
            copied = init_local_from_global(model, source, init_checkpoint)
        else:  # fine-tuning, e.g. an imported official generator
            copied = init_from_checkpoint(model, source, init_checkpoint)
        log.info("initialised from %s: %s tensors copied", init_checkpoint, copied)
    elif stage == "local":
        raise InputError(
            "--stage local needs --init CHECKPOINT (the global stage's latest.pth), or --resume"
        )
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting fresh", out)

    tracker = Tracker(enabled=tracking and dinfo.is_main, tracking_uri=tracking_uri)
    hooks = PipelineHooks(tracker, out / "losses.csv", cfg.label_nc)
    if dinfo.is_main:
        hooks.truncate_after(trainer.state.global_step)
    trainer.hooks = hooks
    tags = run_tags(stage, orchestrator, dataset_hash=data_hash, world_size=str(dinfo.world_size))
    tracker.start(
        params.tracking.experiment,
        f"train_{stage}",
        tags,
        system_metrics=True,
        resume_run_id=trainer.resumed_run_id,  # a resumed run's metrics go on in its run
    )
    if tracker.run_id is not None:  # where a run resumed from the checkpoint logs
        trainer.extra_payload["mlflow_run_id"] = tracker.run_id
    tracker.log_input_dataset(str(data), "train", data_hash, context="training")
    tracker.log_params(
        {
            **flatten(to_dict(cfg), "model."),
            **flatten(tcfg, "train."),
            "train.width": width,
            "train.height": height,
        }
    )
    status = "FAILED"
    try:
        summary = trainer.fit()
        if dinfo.is_main:
            grid = _final_samples(model, dataset, dev)
            write_png(out / "samples.png", grid)
            summary.update(
                checkpoint=str(latest), image_size=[width, height], mlflow_run_id=tracker.run_id
            )
            kept, timings = without_timings(summary)
            write_json(out / "summary.json", kept)
            write_metrics(out / "metrics.json", kept)  # its numbers only
            write_json(out / "timings.json", timings)  # declared nowhere: not DVC's
            tracker.log_image(grid, "final_samples", trainer.state.global_step)
            tracker.log_artifact(out / "samples.png", "samples")
            tracker.log_artifact(latest, "checkpoint")
            # export links the model it serves to this artifact (not copied into it)
            link = {"checkpoint_sha256": file_sha256(latest)}
            tracker.set_tags({**link, "checkpoint_artifact": "checkpoint/latest.pth"})
            tracker.log_artifact(out / "metrics.json")
            tracker.log_artifact(out / "summary.json")
        status = "FINISHED"
    finally:
        tracker.end(status)
        if dinfo.enabled:
            dist.destroy_process_group()
        if lock is not None:
            lock.release()
    return summary
