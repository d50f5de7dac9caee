"""Content hashes of ONNX files: computed at export, verified on every load.

The hash covers everything that decides an output: the graph (nodes and weights) and
every metadata entry but the hash itself (``label_nc``, the cluster centres, the size
multiple ...), so an edited centre or class count is refused like a flipped weight. A
file without a hash, or with the graph-only hash of earlier exports, cannot be checked:
it is refused unless the user says so explicitly (``PIX2PIXHD_ALLOW_UNVERIFIED_ONNX=1``).

Torch-free (onnx + hashlib only), so the serving side and the MLflow pyfunc model can
verify a graph without the training stack.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from model.errors import InputError

HASH_KEY = "content_sha256"
#: the hash covers graph + metadata (earlier exports: the graph alone, no prefix)
SCHEME = "v2:"
ALLOW_UNVERIFIED = "PIX2PIXHD_ALLOW_UNVERIFIED_ONNX"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _update_with_message(h: Any, message: Any) -> None:
    """``h.update(message.SerializeToString(deterministic=True))`` one field at a time:
    the same bytes (fields in number order, each element as tag, length, payload), never
    the whole message in memory at once (a 730 MB graph serialised whole took 2 GB more).
    Every field of an ONNX GraphProto is length-delimited (messages and strings); fields
    this onnx does not know (serialised last) make the caller hash the message whole."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    if len(UnknownFieldSet(message)):
        raise TypeError("unknown fields")
    for field, value in message.ListFields():
        items = value if field.label == field.LABEL_REPEATED else [value]
        tag = _varint(field.number << 3 | 2)
        for item in items:
            if field.type == field.TYPE_MESSAGE:
                payload = item.SerializeToString(deterministic=True)
            elif field.type == field.TYPE_STRING:
                payload = item.encode()
            elif field.type == field.TYPE_BYTES:
                payload = item
            else:  # not in GraphProto: hash the message whole
                raise TypeError(f"field {field.name} of type {field.type}")
            h.update(tag + _varint(len(payload)))
            h.update(payload)


def graph_hash(proto: Any) -> str:
    """``v2:`` + SHA-256 of the graph (nodes and weights) and of every metadata entry
    but the hash itself, in key order."""
    h = hashlib.sha256()
    try:
        _update_with_message(h, proto.graph)
    except (TypeError, NotImplementedError):  # not a plain graph: serialise it whole
        h = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    for key, value in sorted((p.key, p.value) for p in proto.metadata_props):
        if key != HASH_KEY:
            h.update(b"\0" + key.encode() + b"\0" + value.encode())
    return SCHEME + h.hexdigest()


def load_verified(path: str | Path) -> Any:
    """The ONNX model at ``path`` (its proto), its content hash checked. Files without a
    v2 hash are refused unless ``PIX2PIXHD_ALLOW_UNVERIFIED_ONNX=1``."""
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
    del data  # the paper's generator is 730 MB: one copy at a time
    meta = {p.key: p.value for p in proto.metadata_props}
    stored = meta.get(HASH_KEY)
    if stored is None or not stored.startswith(SCHEME):
        if os.environ.get(ALLOW_UNVERIFIED) != "1":
            why = "no content hash" if stored is None else "a graph-only hash (an older export)"
            raise InputError(
                f"{path}: {why}, so its graph and metadata cannot be checked; export it "
                f"again, or set {ALLOW_UNVERIFIED}=1 to use it unverified"
            )
    elif graph_hash(proto) != stored:
        raise InputError(
            f"{path}: content hash mismatch: the graph or its metadata changed after it was "
            "exported; export it again"
        )
    return proto


def stamp(proto: Any) -> Any:
    """Set (or replace) the content hash of ``proto`` in its metadata, for a graph whose
    weights were changed on purpose (quantization, tests); returns ``proto``."""
    digest = graph_hash(proto)  # over the graph and the metadata, the old hash aside
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != HASH_KEY]
    del proto.metadata_props[:]
    for key, value in [*kept, (HASH_KEY, digest)]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto
