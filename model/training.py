"""The pix2pixHD training loop: one G step then one D step per iteration, the paper's
learning-rate schedule, the local stage's fixed-global epochs, mixed precision,
data-parallel gradient averaging, exact resume, and atomic checkpoints.

No tracking or CLI code here: progress goes to ``TrainHooks`` callbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from model.checkpoint import (
    NonFiniteWeights,
    config_of,
    load_checkpoint,
    load_weights,
    model_payload,
    save_checkpoint,
)
from model.config import Precision, TrainConfig, to_dict
from model.errors import CheckpointError, Pix2PixHDError
from model.pix2pixhd import Pix2PixHD
from model.progress import progress

log = logging.getLogger(__name__)


def lr_factor(epoch: int, niter: int, niter_decay: int) -> float:
    """Multiplier of the initial lr during (0-based) ``epoch``: 1 for ``niter`` epochs,
    then linear decay by 1/niter_decay per epoch (the reference's schedule)."""
    if epoch < niter:
        return 1.0
    if niter_decay <= 0:
        return 0.0
    return max(0.0, 1.0 - (epoch - niter) / niter_decay)


class TrainingDiverged(Pix2PixHDError):
    """A loss became NaN or Inf."""


class TrainHooks:
    """Callbacks for progress; the default does nothing. Called on rank 0 only."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_samples(
        self, batch: dict[str, torch.Tensor], fake: torch.Tensor, step: int
    ) -> None: ...

    def checkpoint_saved(self, path: Path, step: int) -> None: ...


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass
class TrainState:
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of this epoch already done
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products in hardware (without them PyTorch
    emulates bf16 on the CPU, ~45x slower than fp32 in bench/training.py)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 autocast + grad scaler on CUDA, bf16 autocast on a CPU with native
    bf16, fp32 otherwise. Explicit values are kept (bf16 on a CPU without native bf16
    gets a warning)."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("precision bf16 on a CPU without AVX512-BF16/AMX is emulated (very slow)")
    return precision


def _autocast(device: torch.device, precision: Precision):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients of ``params`` in one flat buffer and average them.

    GAN training runs D forward three times per iteration and backpropagates the G
    loss through D; averaging gradients explicitly keeps every rank's update identical
    without depending on DistributedDataParallel's one-forward-per-backward bookkeeping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


class Trainer:
    """The pix2pixHD training loop for one stage: alternating G and D Adam steps on the
    named losses, the reference's lr schedule (``niter`` constant, ``niter_decay``
    linear to zero), the local stage's ``niter_fix_global`` epochs that train only the
    enhancers, optional AMP / channels_last / torch.compile, data parallel over
    ``torch.distributed``, and checkpoints that resume exactly.

    Args:
        model: a Pix2PixHD built with its discriminator.
        dataset: the training samples (``PairedDataset`` items).
        cfg: the stage's ``TrainConfig`` (epochs, lr, batch size, precision ...).
        out_dir: where ``latest.pth`` and sample grids are written.
        device: the device to train on.
        stage: ``global`` or ``local`` (recorded in checkpoints, checked on resume).
        hooks: where losses, samples and checkpoint events go (default: nowhere).
        dist_info: rank and world size (default: a single process).
        extra_payload: more entries for every checkpoint (image size, dataset hash).
    """

    def __init__(
        self,
        model: Pix2PixHD,
        dataset: Dataset,
        cfg: TrainConfig,
        out_dir: Path,
        device: torch.device,
        stage: str = "global",
        hooks: TrainHooks | None = None,
        dist_info: DistInfo | None = None,
        extra_payload: dict[str, Any] | None = None,
    ) -> None:
        if model.netD is None:
            raise ValueError("training needs a model built with a discriminator")
        self.model = model.to(device)
        self.dataset = dataset
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = device
        self.stage = stage
        self.hooks = hooks or TrainHooks()
        self.dist = dist_info or DistInfo()
        self.extra_payload = extra_payload or {}
        self.state = TrainState()
        self._last_saved_step: int | None = None
        self._total_steps = 0
        self._allreduce_s = 0.0  # time in the gradients' all-reduce (several ranks)
        #: the tracking run a resumed checkpoint was logged to (``mlflow_run_id`` of its
        #: payload): a resumed run continues it instead of opening another
        self.resumed_run_id: str | None = None
        self.precision = resolve_precision(cfg.precision, device)
        if self.precision != cfg.precision:
            log.info("precision %s: %s on %s", cfg.precision, self.precision, device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        g_params = list(model.netG.parameters())
        if model.netE is not None:
            g_params += list(model.netE.parameters())
        betas = (cfg.beta1, cfg.beta2)
        self.opt_G = torch.optim.Adam(g_params, lr=cfg.lr, betas=betas)
        self.opt_D = torch.optim.Adam(model.netD.parameters(), lr=cfg.lr, betas=betas)
        use_scaler = self.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        # the global part of a local generator (its `model.*`): frozen for niter_fix_global
        self.global_params = (
            list(model.netG.model.parameters()) if model.cfg.generator.n_local_enhancers > 0 else []
        )
        self._step_fn: Callable[..., Any] = model.compute_losses
        if cfg.compile:
            # compile the networks, not compute_losses: one compiled graph for the whole
            # step would share saved tensors between the G and the D backward passes.
            # nn.Module.compile() keeps the state_dict keys (no `_orig_mod.` prefix).
            for net in (model.netG, model.netD, getattr(model, "netE", None)):
                if net is not None:
                    net.compile(backend=cfg.compile_backend)
        if self.dist.enabled:
            for p in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(p.data, 0)

    # ------------------------------------------------------------------ state

    def checkpoint_payload(self) -> dict[str, Any]:
        payload = model_payload(self.model)
        payload.update(self.extra_payload)
        payload.update(
            {
                "stage": self.stage,
                "train_config": to_dict(self.cfg),
                "optimizer_G": self.opt_G.state_dict(),
                "optimizer_D": self.opt_D.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()},
                "epoch": self.state.epoch,
                "batch_in_epoch": self.state.batch_in_epoch,
                "global_step": self.state.global_step,
                "history": self.state.history,
            }
        )
        return payload

    def resume(self, path: Path) -> bool:
        """Continue from the checkpoint at ``path`` (a ``latest.pth`` a trainer wrote),
        read with the strict loader (weights only, content hash verified): its model
        configuration and stage must be this trainer's; G, D (and E) load key for key,
        then optimisers, scaler, RNG and counters. Returns False, changing nothing, when
        there is no checkpoint at ``path`` yet."""
        if not Path(path).exists():
            return False
        ckpt = load_checkpoint(path)
        if config_of(ckpt) != self.model.cfg or ckpt.get("stage") != self.stage:
            raise CheckpointError(
                f"{path}: cannot resume: it was trained with another configuration or "
                "stage; use a new --out directory or the same params"
            )
        try:
            load_weights(self.model, ckpt, require_discriminator=True)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: cannot resume: {exc}") from None
        self.load_training_state(ckpt)
        return True

    def load_training_state(self, ckpt: dict[str, Any]) -> None:
        """Restore optimisers, scaler, RNG and counters (weights are loaded separately)."""
        self.opt_G.load_state_dict(ckpt["optimizer_G"])
        self.opt_D.load_state_dict(ckpt["optimizer_D"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        self.state = TrainState(
            epoch=int(ckpt["epoch"]),
            batch_in_epoch=int(ckpt["batch_in_epoch"]),
            global_step=int(ckpt["global_step"]),
            history=list(ckpt.get("history", [])),
        )
        self._last_saved_step = self.state.global_step
        self.resumed_run_id = ckpt.get("mlflow_run_id") or None

    def _non_finite_weight(self) -> str | None:
        for net_name, net in (
            ("G", self.model.netG),
            ("D", self.model.netD),
            ("E", self.model.netE),
        ):
            if net is None:
                continue
            for name, t in net.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"{net_name}.{name}"
        return None

    def _diverged(
        self, what: str, iteration: int | None = None, detail: str = ""
    ) -> TrainingDiverged:
        last = (
            f"the last finite checkpoint ({self.out_dir / 'latest.pth'}, iteration "
            f"{self._last_saved_step}) is kept"
            if self._last_saved_step is not None
            else "no checkpoint was written"
        )
        section = f"train_{self.stage}"  # the params section of this stage
        return TrainingDiverged(
            f"{what} at epoch {self.state.epoch + 1}, iteration "
            f"{self.state.global_step if iteration is None else iteration}{detail}; "
            f"{last}. Try a lower {section}.lr, or {section}.precision fp32 or bf16 "
            "instead of fp16"
        )

    def save(self, name: str = "latest.pth") -> Path | None:
        """Write a checkpoint, only of finite weights (checked on every rank, so all
        ranks stop together); a non-finite weight stops training, keeping the last file."""
        bad = self._non_finite_weight()
        if bad is not None:
            raise self._diverged(f"weight {bad} became NaN or Inf")
        if not self.dist.is_main:
            return None
        try:
            path = save_checkpoint(self.out_dir / name, self.checkpoint_payload())
        except NonFiniteWeights as exc:
            raise self._diverged(str(exc)) from None
        self._last_saved_step = self.state.global_step
        self.hooks.checkpoint_saved(path, self.state.global_step)
        return path

    # ------------------------------------------------------------------ schedule

    def apply_schedule(self, epoch: int) -> float:
        lr = self.cfg.lr * lr_factor(epoch, self.cfg.niter, self.cfg.niter_decay)
        for opt in (self.opt_G, self.opt_D):
            for group in opt.param_groups:
                group["lr"] = lr
        fixed = epoch < self.cfg.niter_fix_global
        for p in self.global_params:
            p.requires_grad_(not fixed)
        return lr

    # ------------------------------------------------------------------ loop

    def _batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.cfg.seed,
        )
        sampler.set_epoch(epoch)
        indices = list(sampler)[skip * self.cfg.batch_size :]
        if self.dist.enabled:  # each rank's shard, in the node's log
            shown = ", ".join(str(i) for i in indices[:32]) + (", ..." if len(indices) > 32 else "")
            log.info(
                "rank %d of %d, epoch %d%s: %d samples [%s]",
                self.dist.rank,
                self.dist.world_size,
                epoch + 1,
                f" from batch {skip + 1}" if skip else "",
                len(indices),
                shown,
            )
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch  # per-epoch augmentation seed
        loader = DataLoader(
            self.dataset,
            batch_size=self.cfg.batch_size,
            sampler=indices,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
        )
        yield from loader

    def batches_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.dist.world_size)
        return math.ceil(per_rank / self.cfg.batch_size)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            v = v.to(self.device, non_blocking=True)
            if self.cfg.channels_last and v.is_floating_point() and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One iteration: G step then D step. Returns the losses when they were read."""
        with _autocast(self.device, self.precision):
            out = self._step_fn(
                batch["label"],
                batch.get("instance"),
                batch["image"],
                boundary=batch.get("boundary"),
            )
        loss_g = out.generator_total.float()
        loss_d = out.discriminator_total.float()
        if not bool(torch.isfinite(loss_g + loss_d)):
            bad = {
                k: float(v.detach())
                for k, v in {**out.generator, **out.discriminator}.items()
                if not math.isfinite(float(v.detach()))
            }
            raise self._diverged(
                "loss became non-finite",
                self.state.global_step + 1,
                f": {bad}; nothing was updated",
            )
        g_params = [p for g in self.opt_G.param_groups for p in g["params"]]
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        if self.dist.enabled:
            began = time.perf_counter()
            _average_gradients(g_params, self.dist.world_size)
            self._allreduce_s += time.perf_counter() - began
        self.scaler.step(self.opt_G)

        self.opt_D.zero_grad(set_to_none=True)
        self.scaler.scale(loss_d).backward()
        if self.dist.enabled:
            began = time.perf_counter()
            _average_gradients(list(self.model.netD.parameters()), self.dist.world_size)
            self._allreduce_s += time.perf_counter() - began
        self.scaler.step(self.opt_D)
        self.scaler.update()
        self._last_fake = out.fake
        step = self.state.global_step + 1
        # the last iteration is always logged: losses.csv exists even when log_every
        # is longer than the run
        last = step == self._total_steps
        if (self.cfg.log_every and step % self.cfg.log_every == 0) or last:
            values = {
                k: float(v.detach()) for k, v in {**out.generator, **out.discriminator}.items()
            }
            values["G_total"] = float(loss_g.detach())
            values["D_total"] = float(loss_d.detach())
            return values
        return None

    def fit(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        per_epoch = self.batches_per_epoch()
        total = cfg.epochs * per_epoch
        self._total_steps = total
        self.model.train()
        bar = progress(
            total=total,
            initial=st.global_step,
            desc=f"train {self.stage}",
            unit="it",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        steps_run = 0
        try:
            while st.epoch < cfg.epochs:
                lr = self.apply_schedule(st.epoch)
                for batch in self._batches(st.epoch, st.batch_in_epoch):
                    batch = self._to_device(batch)
                    losses = self.train_step(batch)
                    st.global_step += 1
                    st.batch_in_epoch += 1
                    steps_run += 1
                    bar.update(1)
                    if losses is not None and self.dist.is_main:
                        losses["lr"] = lr
                        losses["epoch"] = st.epoch + 1
                        st.history.append({"step": st.global_step, **losses})
                        bar.set_postfix(G=f"{losses['G_total']:.3f}", D=f"{losses['D_total']:.3f}")
                        self.hooks.log_metrics(losses, st.global_step)
                    if cfg.sample_every and st.global_step % cfg.sample_every == 0:
                        if self.dist.is_main:
                            self.hooks.log_samples(batch, self._last_fake.detach(), st.global_step)
                    if cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0:
                        self.save()
                st.epoch += 1
                st.batch_in_epoch = 0
                self.save()
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        comm = {}
        if self.dist.enabled:  # the gradients' all-reduce, waits for the slowest rank included
            comm = {
                "allreduce_seconds": round(self._allreduce_s, 2),
                "allreduce_share": round(self._allreduce_s / max(seconds, 1e-9), 4),
            }
        return {
            "stage": self.stage,
            "precision": self.precision,
            "epochs": cfg.epochs,
            "iterations": st.global_step,
            "iterations_this_run": steps_run,
            "seconds": round(seconds, 2),
            "seconds_per_iteration": round(seconds / max(1, steps_run), 4),
            "final_losses": st.history[-1] if st.history else {},
            "world_size": self.dist.world_size,
            **comm,
        }
