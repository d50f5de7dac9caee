"""Content hashes of ONNX files: computed at export, verified on every load.

Torch-free (onnx + hashlib only), so the serving side and the MLflow pyfunc model can
verify a graph without the training stack.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from model.errors import InputError

HASH_KEY = "content_sha256"


def graph_hash(proto: Any) -> str:
    """SHA-256 of the model's graph (nodes and weights), the metadata excluded."""
    return hashlib.sha256(proto.graph.SerializeToString(deterministic=True)).hexdigest()


def load_verified(path: str | Path) -> tuple[Any, bytes]:
    """The ONNX model at ``path`` (proto and file bytes), its content hash checked.
    Files without a hash (exported before hashes existed) are accepted."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(
            f"{path}: not a readable ONNX model (truncated or corrupted?): {exc}"
        ) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    stored = meta.get(HASH_KEY)
    if stored is not None and graph_hash(proto) != stored:
        raise InputError(
            f"{path}: content hash mismatch: the file is corrupted (bytes changed after it "
            "was exported); export it again"
        )
    return proto, data


def stamp(proto: Any) -> Any:
    """Set (or replace) the content hash of ``proto`` in its metadata, for a graph whose
    weights were changed on purpose (quantization, tests); returns ``proto``."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != HASH_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (HASH_KEY, graph_hash(proto))]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto
