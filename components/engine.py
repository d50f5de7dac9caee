"""The inference engine: ONNX Runtime by default, PyTorch on request or where ONNX cannot.

ONNX Runtime runs the generator's exported graph (``model/export.py``). For a checkpoint,
the graph is exported once and cached beside it as ``<checkpoint>.<hash>.onnx``, where
``hash`` is a prefix of the checkpoint file's SHA-256: a changed checkpoint exports
again, and the stale graph of the same checkpoint name is removed. The write is atomic
(temporary file + rename) and the new graph must agree with PyTorch within
``PARITY_ATOL`` before it is used. Where the checkpoint's folder is not writable, the
graph is cached under ``$PIX2PIXHD_CACHE/onnx`` (default ``~/.cache/pix2pixhd/onnx``).

``load_generator`` is the one entry point for ``generate``, ``edit`` and serving:

    gen = load_generator(checkpoint=Path("model.pth"))           # ONNX Runtime (cached graph)
    gen = load_generator(onnx=Path("model.onnx"))                 # ONNX Runtime
    gen = load_generator(checkpoint=..., engine="torch")          # PyTorch eager

``engine="auto"`` (the default) is ONNX Runtime unless the work needs PyTorch: features
encoded from photos (the encoder is not in the graph), RGB-label models (``label_nc``
0, not exportable), or a CUDA device without onnxruntime's CUDA provider.
``engine="onnx"`` in those cases is an error that says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from model.errors import InputError

if TYPE_CHECKING:
    from components.generate import Generator

log = logging.getLogger(__name__)

Engine = Literal["auto", "onnx", "torch"]
ENGINES: tuple[str, ...] = ("auto", "onnx", "torch")
HASH_CHARS = 16


def session_options(threads: int | None = None) -> Any:
    """The project's ONNX Runtime session options (generate, edit, serve, bench).

    Peak memory (measured in bench/ort_vs_torch.py): ORT's CPU arena grows in
    power-of-two chunks and keeps them, and the memory pattern planner reserves one
    block for all activations of a run; for this fully convolutional generator at
    1024x512 and above both add hundreds of MB over what the run needs. With the arena
    and the pattern off, buffers are malloc'd and freed per node, and peak RSS drops
    below PyTorch's at no measurable time cost (the convolutions dominate).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def providers(device: str = "cpu") -> list[str]:
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(
                f"device {device!r} with the onnx engine needs onnxruntime-gpu "
                "(CUDAExecutionProvider): install it, or pass --engine torch"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path: Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An InferenceSession on ``path`` with the project's options; a bad file is an
    InputError naming it."""
    import onnxruntime as ort

    from model.onnx_integrity import load_verified

    _, data = load_verified(path)  # content hash checked: flipped bytes are an error
    try:
        return ort.InferenceSession(data, session_options(threads), providers=providers(device))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a loadable ONNX model: {exc}") from None


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
    if path.is_file():
        return path
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
        export_onnx(model, tmp, cluster_centers=ckpt.get("cluster_centers") or None)
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


def choose(engine: str, *, onnx: Path | None, device: str, encode_photos: bool = False) -> str:
    """Resolve ``engine`` (auto | onnx | torch) to ``onnx`` or ``torch`` for this work
    (what the model itself allows is checked when its graph is made)."""
    import onnxruntime as ort

    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if onnx is not None:
        if engine == "torch":
            raise InputError("--engine torch needs --checkpoint (an ONNX file runs in onnxruntime)")
        return "onnx"
    if engine == "torch":
        return "torch"
    why_not = None
    if encode_photos:
        why_not = "features encoded from photos need the encoder, which is not in the graph"
    elif device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        why_not = "onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
    if why_not is None:
        return "onnx"
    if engine == "onnx":
        raise InputError(f"--engine onnx: {why_not}; use --engine torch")
    log.info("engine auto: PyTorch (%s)", why_not)
    return "torch"


def load_generator(
    checkpoint: Path | None = None,
    onnx: Path | None = None,
    engine: str = "auto",
    device: str = "auto",
    encode_photos: bool = False,
    threads: int | None = None,
) -> Generator:
    """A ready ``components.generate.Generator`` for a checkpoint or an ONNX file.

    ``encode_photos``: the caller will pass photos to encode instance features from
    (needs PyTorch). The engine that runs is ``gen.engine`` (``onnx`` or ``torch``)."""
    from components.generate import Generator, resolve_device

    if (checkpoint is None) == (onnx is None):
        raise InputError("give exactly one of --checkpoint and --onnx")
    dev = resolve_device(device)
    chosen = choose(engine, onnx=onnx, device=dev.type, encode_photos=encode_photos)
    if chosen == "onnx":
        try:
            path = onnx if onnx is not None else cached_onnx(checkpoint)
        except NotExportable as exc:
            if engine == "onnx":
                raise
            log.info("engine auto: PyTorch (%s)", exc)
        else:
            return Generator.from_onnx(path, device=dev.type, threads=threads)
    return Generator.from_checkpoint(checkpoint, dev)
