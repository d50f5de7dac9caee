"""ONNX Runtime sessions with the project's options (generate, edit, serve, export
checks, bench): one place for the options, the providers and the integrity check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.errors import InputError


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

    path = Path(path)
    before = _identity(path)
    load_verified(path)  # content hash checked: flipped bytes are an error
    # ONNX Runtime reads the file itself: the checked copy is gone by then (for the
    # paper's 730 MB generator, peak memory 1.6 GB instead of 4.2 GB with the bytes
    # handed over), and a file replaced or rewritten meanwhile is refused below
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads), providers=providers(device)
        )
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a loadable ONNX model: {exc}") from None
    if _identity(path) != before:
        raise InputError(f"{path}: the file changed while it was being loaded; load it again")
    return session


def _identity(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
