import copy
import math

import pytest
import torch

from model.checkpoint import (
    init_local_from_global,
    load_checkpoint,
    model_payload,
    save_checkpoint,
)
from model.config import DiscriminatorConfig, EncoderConfig, GeneratorConfig
from model.errors import CheckpointError
from model.pix2pixhd import Pix2PixHD
from model.training import TrainConfig, Trainer, TrainHooks, TrainingDiverged, lr_factor
from tests.conftest import tiny_config

LOCAL = tiny_config(
    use_instance_features=True,
    generator=GeneratorConfig(
        ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    ),
    discriminator=DiscriminatorConfig(num_D=2, n_layers_D=2, ndf=4),
    encoder=EncoderConfig(nef=4, n_downsample_E=2),
)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, n, h=32, w=64, label_nc=6, seed=0, nan_at=None):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            label = torch.randint(0, label_nc, (1, h, w), generator=g)
            inst = label * 1000 + torch.randint(0, 2, (1, h, w), generator=g)
            image = torch.rand(3, h, w, generator=g) * 2 - 1
            self.items.append({"label": label, "instance": inst, "image": image})
        self.nan_at = nan_at  # (epoch, index)
        self.epoch = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = dict(self.items[i])
        if self.nan_at == (self.epoch, i):
            item["image"] = torch.full_like(item["image"], float("nan"))
        return item


class Recorder(TrainHooks):
    def __init__(self, trainer_ref):
        self.trainer_ref = trainer_ref
        self.lrs = []  # per logged step: (epoch, lr_G groups, lr_D)
        self.snapshots = []  # state of netG at each checkpoint

    def log_metrics(self, metrics, step):
        t = self.trainer_ref[0]
        self.lrs.append(
            (
                metrics["epoch"],
                [g["lr"] for g in t.opt_G.param_groups],
                [g["lr"] for g in t.opt_D.param_groups],
            )
        )

    def checkpoint_saved(self, path, step):
        self.snapshots.append(copy.deepcopy(self.trainer_ref[0].model.netG.state_dict()))


def test_lr_factor_matches_reference_schedule():
    # 2 constant epochs, then decay by 1/3 per epoch: 1, 1, 1, 2/3, 1/3, then 0
    got = [lr_factor(e, 2, 3) for e in range(6)]
    assert got == pytest.approx([1, 1, 1, 2 / 3, 1 / 3, 0])


def test_fixed_global_epochs_then_joint_training_with_schedule(tmp_path):
    ref = [None]
    rec = Recorder(ref)
    torch.manual_seed(0)
    tc = TrainConfig(
        niter=2,
        niter_decay=2,
        niter_fix_global=1,
        batch_size=2,
        checkpoint_every=0,
        log_every=1,
        sample_every=0,
        flip=False,
    )
    trainer = Trainer(
        Pix2PixHD(LOCAL),
        ListDataset(4),
        tc,
        tmp_path,
        torch.device("cpu"),
        stage="local",
        hooks=rec,
    )
    ref[0] = trainer
    start = copy.deepcopy(trainer.model.netG.state_dict())
    trainer.fit()
    # every optimiser group (G with E, and D) follows the same schedule, epoch by epoch
    expected = {1: 2e-4, 2: 2e-4, 3: 2e-4, 4: 1e-4}
    for epoch, g_lrs, d_lrs in rec.lrs:
        assert all(math.isclose(lr, expected[epoch]) for lr in g_lrs + d_lrs)
    assert sorted({e for e, _, _ in rec.lrs}) == [1, 2, 3, 4]
    n_e = sum(p.numel() for p in trainer.model.netE.parameters())
    assert n_e > 0 and any(
        p is q
        for g in trainer.opt_G.param_groups
        for p in g["params"]
        for q in trainer.model.netE.parameters()
    )
    after_fixed, after_joint = rec.snapshots[0], rec.snapshots[1]
    global_keys = [k for k in start if k.startswith("model.")]
    local_keys = [k for k in start if k.startswith("model1_")]
    assert all(torch.equal(start[k], after_fixed[k]) for k in global_keys)
    assert any(not torch.equal(start[k], after_fixed[k]) for k in local_keys)
    assert all(
        not torch.equal(after_fixed[k], after_joint[k]) for k in global_keys if k.endswith("weight")
    )


def _fit(tmp_path, stop_after=None, resume=False):
    class Stop(Exception):
        pass

    class Killer(TrainHooks):
        def log_metrics(self, metrics, step):
            if stop_after is not None and step == stop_after:
                raise Stop

    torch.manual_seed(0)
    tc = TrainConfig(
        niter=1,
        niter_decay=1,
        batch_size=1,
        checkpoint_every=3,
        log_every=1,
        sample_every=0,
        flip=True,
    )
    trainer = Trainer(
        Pix2PixHD(LOCAL), ListDataset(5), tc, tmp_path, torch.device("cpu"), hooks=Killer()
    )
    if resume:
        assert trainer.resume(tmp_path / "latest.pth")
    try:
        trainer.fit()
    except Stop:
        pass
    return trainer


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full = _fit(tmp_path / "a")
    _fit(tmp_path / "b", stop_after=5)  # dies after step 5; last checkpoint at step 3
    ckpt = load_checkpoint(tmp_path / "b" / "latest.pth")
    assert (ckpt["global_step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (3, 0, 3)
    resumed = _fit(tmp_path / "b", resume=True)
    assert resumed.state.global_step == full.state.global_step == 10
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    for a, b in zip(
        full.opt_G.state_dict()["state"].values(),
        resumed.opt_G.state_dict()["state"].values(),
        strict=True,
    ):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    tc = TrainConfig(
        niter=2,
        niter_decay=0,
        batch_size=1,
        checkpoint_every=0,
        log_every=1,
        sample_every=0,
        flip=False,
    )
    ds = ListDataset(3, nan_at=(1, 2))
    trainer = Trainer(Pix2PixHD(LOCAL), ds, tc, tmp_path, torch.device("cpu"))
    with pytest.raises(TrainingDiverged, match="non-finite at epoch 2"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "latest.pth")
    assert ckpt["global_step"] == 3 and ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["G"].values())


def test_local_initialised_from_global(tmp_path):
    global_cfg = tiny_config(
        generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=1),
        discriminator=DiscriminatorConfig(num_D=1, n_layers_D=2, ndf=4),
        use_instance_features=True,
        encoder=EncoderConfig(nef=4, n_downsample_E=2),
    )
    source = Pix2PixHD(global_cfg)
    local = Pix2PixHD(LOCAL)
    copied = init_local_from_global(local, model_payload(source))
    g_src, g_dst = source.netG.state_dict(), local.netG.state_dict()
    shared = [k for k in g_dst if k.startswith("model.")]
    assert copied["G"] == len(shared) and all(torch.equal(g_src[k], g_dst[k]) for k in shared)
    # the global D's only scale is the local D's coarsest scale0; scale1 starts fresh
    d_src, d_dst = source.netD.state_dict(), local.netD.state_dict()
    assert all(torch.equal(d_src[k], d_dst[k]) for k in d_src)
    assert copied["D"] == len(d_src) and any(k.startswith("scale1_") for k in d_dst)
    assert copied["E"] == len(source.netE.state_dict())


def test_compiled_networks_train_like_eager(tmp_path):
    # torch.compile of the whole step shared saved tensors between the G and D backward
    # passes ("backward through the graph a second time"); the networks are compiled one
    # by one instead. aot_eager goes through the same AOTAutograd path as inductor,
    # without the C++ build, so the result must match eager training closely.
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Pix2PixHD(LOCAL)
        tc = TrainConfig(
            niter=1,
            niter_decay=0,
            batch_size=2,
            flip=False,
            compile=compiled,
            compile_backend="aot_eager",
            checkpoint_every=0,
            log_every=0,
            sample_every=0,
        )
        Trainer(model, ListDataset(4), tc, tmp_path / str(compiled), torch.device("cpu")).fit()
        results.append(model.state_dict())
        assert not any("_orig_mod" in k for k in model.state_dict())  # checkpoint keys kept
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_resume_refuses_another_stage_or_architecture_and_waits_for_a_checkpoint(tmp_path):
    tc = TrainConfig(niter=1, niter_decay=1, log_every=0, sample_every=0)

    def trainer(stage: str = "global") -> Trainer:
        return Trainer(Pix2PixHD(LOCAL), ListDataset(5), tc, tmp_path, torch.device("cpu"), stage)

    trainer().save()  # a "global" stage checkpoint
    other = trainer("local")
    with pytest.raises(CheckpointError, match="cannot resume"):
        other.resume(tmp_path / "latest.pth")
    assert not other.resume(tmp_path / "missing.pth") and other.state.global_step == 0
    ckpt = load_checkpoint(tmp_path / "latest.pth")  # same config, a D of another shape
    ckpt["D"] = {k: v[..., :1] if v.ndim == 4 else v for k, v in ckpt["D"].items()}
    save_checkpoint(tmp_path / "bad.pth", {k: v for k, v in ckpt.items() if k != "content_sha256"})
    with pytest.raises(CheckpointError, match=r"bad.pth: cannot resume: discriminator"):
        trainer().resume(tmp_path / "bad.pth")
    assert trainer().resume(tmp_path / "latest.pth")
