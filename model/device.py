"""The ``--device`` option of every step: checked before any work."""

from __future__ import annotations

import torch

from model.errors import ConfigError, InputError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
    Anything else, or CUDA where there is none, is one error naming the value."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r}: expected {DEVICE_HELP}") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ConfigError(f"--device {device!r}: expected {DEVICE_HELP}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices"
            )
    return dev
