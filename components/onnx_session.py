"""ONNX Runtime sessions with the project's options (generate, edit, serve, export
checks, bench): one place for the options, the providers and the integrity check."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.errors import InputError


def session_options(threads: int | None = None) -> Any:
    """The project's ONNX Runtime session options (generate, edit, serve, bench).

    Measured in bench/ort_vs_torch.py (docs/benchmarks/ort-vs-torch.md). Peak memory:
    ORT's CPU arena grows in power-of-two chunks and keeps them, and the memory pattern
    planner reserves one block for all activations of a run; for this fully
    convolutional generator at 1024x512 and above both add hundreds of MB over what the
    run needs. With the arena and the pattern off, buffers are malloc'd and freed per
    node: peak RSS 0.63x ORT's defaults at 1024x512 and 0.50x at 2048x1024 (below
    PyTorch's), for 12-33% more time on the 2-core AVX2 bench machine.

    Spinning off: ONNX Runtime's intra-op threads otherwise spin between parallel
    sections, and that CPU time is taken from whatever shares the cores (the service's
    decoding and encoding, other pods under a CPU limit): `pix2pixhd serve --workers 1`
    (two threads) used 76 instead of 91 ms of CPU per 256x128 request. In a tight loop
    the time with and without spinning is not distinguishable (per-round ratios overlap
    at all three sizes).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    return make_sessions(path, device, [threads])[0]


def make_sessions(path: Path, device: str, threads: Sequence[int | None]) -> list[Any]:
    """One InferenceSession on ``path`` per thread count, from one integrity check: the
    file is hashed once, and all of them hold the graph that was checked."""
    import onnxruntime as ort

    from model.onnx_integrity import load_verified

    path = Path(path)
    before = _identity(path)
    load_verified(path)  # content hash checked: flipped bytes are an error
    # ONNX Runtime reads the file itself: the checked copy is gone by then (for the
    # paper's 730 MB generator, peak memory 1.6 GB instead of 4.2 GB with the bytes
    # handed over), and a file replaced or rewritten meanwhile is refused below
    try:
        sessions = [
            ort.InferenceSession(str(path), session_options(n), providers=providers(device))
            for n in threads
        ]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a loadable ONNX model: {exc}") from None
    if _identity(path) != before:
        raise InputError(f"{path}: the file changed while it was being loaded; load it again")
    return sessions


def _identity(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
