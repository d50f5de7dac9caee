"""`precision: auto`: bf16 autocast only on CPUs with native bf16, fp16 (+ grad scaler)
on CUDA, fp32 otherwise."""

import pytest
import torch

from components.params import params_from_text
from model import training
from model.pix2pixhd import Pix2PixHD
from model.training import TrainConfig, Trainer, resolve_precision
from tests.conftest import tiny_config


@pytest.mark.parametrize(
    ("native", "device", "expected"),
    [(True, "cpu", "bf16"), (False, "cpu", "fp32"), (False, "cuda", "fp16")],
)
def test_auto_resolves_by_hardware(monkeypatch, native, device, expected):
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", torch.device(device)) == expected
    assert resolve_precision("fp32", torch.device(device)) == "fp32"  # explicit values stay


def test_bf16_without_native_support_warns(monkeypatch, caplog):
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "emulated" in caplog.text


@pytest.mark.parametrize("native", [True, False])
def test_trainer_runs_in_the_resolved_precision(monkeypatch, tmp_path, native):
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    cfg = params_from_text("", ["train_global.precision=auto"]).train_global
    assert cfg.precision == "auto"
    model = Pix2PixHD(tiny_config())
    trainer = Trainer(
        model, [None], TrainConfig(precision=cfg.precision), tmp_path, torch.device("cpu")
    )
    assert trainer.precision == ("bf16" if native else "fp32")
    assert not trainer.scaler.is_enabled()
    label = torch.randint(0, 6, (1, 1, 32, 64))
    batch = {"label": label, "instance": label * 1000, "image": torch.rand(1, 3, 32, 64) * 2 - 1}
    seen = []
    model.netG.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.train_step(batch)
    assert seen[0] == (torch.bfloat16 if native else torch.float32)
