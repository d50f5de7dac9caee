"""The inference engine: ONNX Runtime by default, PyTorch on request or where ONNX cannot.

ONNX Runtime runs the generator's exported graph (``model/export.py``). For a checkpoint,
the graph is exported once and cached beside it as ``<checkpoint>.<hash>.onnx``, where
``hash`` is a prefix of the checkpoint file's SHA-256: a changed checkpoint exports
again, and the stale graph of the same checkpoint name is removed. The write is atomic
(temporary file + rename) and the new graph must agree with PyTorch within
``PARITY_ATOL`` before it is used. Where the checkpoint's folder is not writable, the
graph is cached under ``$PIX2PIXHD_CACHE/onnx`` (default ``~/.cache/pix2pixhd/onnx``).

Which engine runs a piece of work (``auto``, ``onnx``, ``torch``) is decided by
``components.generate.load_generator``; sessions are made by ``components.onnx_session``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

from model.errors import InputError

log = logging.getLogger(__name__)

Engine = Literal["auto", "onnx", "torch"]
ENGINES: tuple[str, ...] = ("auto", "onnx", "torch")
HASH_CHARS = 16


def file_hash(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _cache_root() -> Path:
    root = os.environ.get("PIX2PIXHD_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "pix2pixhd"


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def cached_onnx_path(checkpoint: Path) -> Path:
    """Where the graph of this checkpoint's content lives (whether or not it exists)."""
    checkpoint = Path(checkpoint)
    digest = file_hash(checkpoint)[:HASH_CHARS]
    name = f"{checkpoint.name}.{digest}.onnx"
    if _writable(checkpoint.parent):
        return checkpoint.parent / name
    return _cache_root() / "onnx" / name


SOURCE_KEY = "checkpoint_sha256"  # the cached graph's metadata: whose graph it is


def _stale(path: Path, source: str) -> str | None:
    """Why the cached graph at ``path`` cannot be used for the checkpoint whose SHA-256 is
    ``source`` (None: it can): its content hash (graph and metadata) fails, or it was
    exported from other bytes than the checkpoint's."""
    from model.onnx_integrity import load_verified

    try:
        proto = load_verified(path)
    except InputError as exc:
        return str(exc).split(": ", 1)[-1]
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get(SOURCE_KEY) != source:
        return "not the graph of this checkpoint's content"
    return None


class NotExportable(InputError):
    """This model has no ONNX graph (RGB labels: label_nc 0)."""


def cached_onnx(checkpoint: Path) -> Path:
    """The ONNX graph of ``checkpoint``: exported (and checked) once, then reused."""
    from components.export import PARITY_ATOL, parity
    from model.checkpoint import build_model, load_checkpoint
    from model.export import export_onnx

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint")
    path = cached_onnx_path(checkpoint)
    source = file_hash(checkpoint)
    if path.is_file():
        why = _stale(path, source)
        if why is None:
            return path
        log.warning("%s: %s; exporting it again", path, why)
    ckpt = load_checkpoint(checkpoint)
    model = build_model(ckpt).eval()
    if model.cfg.label_nc == 0:
        raise NotExportable(f"{checkpoint}: models with RGB labels (label_nc 0) have no ONNX graph")
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX once (cached as %s)", checkpoint, path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_onnx(
            model,
            tmp,
            cluster_centers=ckpt.get("cluster_centers") or None,
            extra_metadata={SOURCE_KEY: source},
        )
        m = model.cfg.generator.size_multiple
        diff = parity(model, tmp, ((1, 2 * m, 2 * m),))
        if diff > PARITY_ATOL:
            raise InputError(
                f"{checkpoint}: the exported graph differs from PyTorch by {diff:.2e} "
                f"(> {PARITY_ATOL:.0e}); use --engine torch"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in path.parent.glob(f"{checkpoint.name}.*.onnx"):  # graphs of earlier contents
        if old != path and len(old.name) == len(path.name):
            old.unlink(missing_ok=True)
    return path
