"""What is served is exactly what was exported (issue 22, class 2): the content hash
covers the graph and every metadata entry; no hash is refused unless the user says so;
non-finite outputs are an error, never a black image; a cached graph beside a
checkpoint is used only when it is that checkpoint's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from components import engine
from components.generate import load_generator
from model.errors import InputError, ModelOutputError
from model.model_contract import to_uint8
from model.onnx_integrity import ALLOW_UNVERIFIED, HASH_KEY, load_verified, stamp
from tests.integration.test_engine import _checkpoint


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    ckpt = _checkpoint(tmp_path_factory.mktemp("integrity") / "model.pth", 0)
    return engine.cached_onnx(ckpt)


def _edited(graph, tmp_path, edit) -> str:
    proto = onnx.load(str(graph))
    edit(proto)
    out = tmp_path / "edited.onnx"
    onnx.save(proto, str(out))
    return out


def _set_meta(proto, key, value):
    for p in proto.metadata_props:
        if p.key == key:
            p.value = value


@pytest.mark.parametrize(
    ("key", "value"), [("label_nc", "200"), ("cluster_centers", '{"2": [[9.0, 9.0, 9.0]]}')]
)
def test_edited_metadata_is_refused(graph, tmp_path, key, value):
    edited = _edited(graph, tmp_path, lambda p: _set_meta(p, key, value))
    with pytest.raises(InputError, match="content hash mismatch"):
        load_verified(edited)


def test_no_hash_is_refused_unless_allowed(graph, tmp_path, monkeypatch):
    def drop(proto):
        kept = [(p.key, p.value) for p in proto.metadata_props if p.key != HASH_KEY]
        del proto.metadata_props[:]
        for k, v in kept:
            e = proto.metadata_props.add()
            e.key, e.value = k, v

    bare = _edited(graph, tmp_path, drop)
    with pytest.raises(InputError, match=f"no content hash.*{ALLOW_UNVERIFIED}=1"):
        load_verified(bare)
    monkeypatch.setenv(ALLOW_UNVERIFIED, "1")
    assert load_verified(bare) is not None


def test_nan_weights_with_a_valid_hash_are_an_error_not_a_black_image(graph, tmp_path):
    def poison(proto):
        init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(init).copy()
        w.flat[0] = np.nan
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        stamp(proto)  # a self-consistent file: the hash cannot catch it

    bad = _edited(graph, tmp_path, poison)
    gen = load_generator(onnx=bad)
    label = np.zeros((1, 1, 16, 16), np.int64)
    inst = np.zeros_like(label)
    import torch

    with pytest.raises(ModelOutputError, match="non-finite"):
        out = gen.fn(torch.from_numpy(label), torch.from_numpy(inst), None, None)
        to_uint8(out.numpy())


def test_a_cached_graph_that_is_not_the_checkpoints_is_exported_again(tmp_path):
    a = _checkpoint(tmp_path / "a" / "model.pth", 0)
    b = _checkpoint(tmp_path / "b" / "model.pth", 1)
    graph_b = engine.cached_onnx(b)
    target = engine.cached_onnx_path(a)
    target.write_bytes(graph_b.read_bytes())  # a valid graph, of another checkpoint
    served = engine.cached_onnx(a)
    assert served == target and served.read_bytes() != graph_b.read_bytes()
    meta = {p.key: p.value for p in load_verified(served).metadata_props}
    assert meta[engine.SOURCE_KEY] == engine.file_hash(a)


def test_the_graph_is_hashed_field_by_field_as_serialised_whole(graph):
    """graph_hash streams the graph one field at a time (a 730 MB generator serialised
    whole needed 2 GB more): the bytes hashed are the whole serialisation's."""
    import hashlib

    from model.onnx_integrity import _update_with_message

    proto = onnx.load(str(graph))
    streamed = hashlib.sha256()
    _update_with_message(streamed, proto.graph)
    whole = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    assert len(proto.graph.initializer) > 10 and len(proto.graph.node) > 10
    assert streamed.hexdigest() == whole.hexdigest()
