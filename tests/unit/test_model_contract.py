"""model/model_contract.py against hand-worked values: the class rule, the padded sizes,
the 8-bit rule, the metadata, and the properties the feature draw promises."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from model.errors import InputError
from model.model_contract import (
    ModelInfo,
    class_of,
    crop,
    draw_batch_features,
    draw_features,
    graph_size,
    onnx_feeds,
    pad_to,
    to_rgb,
    to_uint8,
    unique_inverse,
)

CENTRES = {
    26: np.array([[0.9, -0.9], [-0.9, 0.9], [0.1, 0.2]], np.float32),
    7: np.array([[0.3, 0.3], [-0.3, -0.3]], np.float32),
}
META = {
    "producer": "pix2pixhd-pipeline",
    "label_nc": "35",
    "size_multiple": "4",
    "use_instance_map": "true",
    "use_instance_features": "true",
    "feat_num": "2",
    "version": "0.1.0",
    "cluster_centers": json.dumps({k: v.tolist() for k, v in CENTRES.items()}),
}


@pytest.mark.parametrize(
    "instance_id,cls", [(26001, 26), (7, 7), (1000, 1), (999, 999), (0, 0), (33999, 33)]
)
def test_class_rule(instance_id, cls):
    assert class_of(instance_id) == cls


def test_imports_without_torch_onnxruntime_or_mlflow():
    code = (
        "import sys; import model.model_contract; "
        "bad = [m for m in ('torch', 'onnxruntime', 'mlflow') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "size,multiple,expected",
    [
        ((2, 2), 4, (8, 8)),  # below twice the multiple: the graph's smallest input
        ((32, 32), 4, (32, 32)),
        ((30, 50), 4, (32, 52)),
        ((9, 16), 8, (16, 16)),
        ((17, 8), 8, (24, 16)),
        ((1, 1), 32, (64, 64)),
    ],
)
def test_graph_size(size, multiple, expected):
    assert graph_size(*size, multiple) == expected


def test_pad_replicates_the_last_row_and_column_and_crop_undoes_it():
    x = np.array([[[1, 2], [3, 4]]])
    padded = pad_to(x, 3, 4)
    assert padded.tolist() == [[[1, 2, 2, 2], [3, 4, 4, 4], [3, 4, 4, 4]]]
    assert np.array_equal(crop(padded, 2, 2), x)


def test_eight_bit_rule():
    x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], np.float32)
    # (x + 1) * 127.5 = 0, 0, 63.75, 127.5, 191.25, 255, 255 -> rounded (half to even)
    assert to_uint8(x).tolist() == [0, 0, 64, 128, 191, 255, 255]
    image = np.stack([np.full((1, 2), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    assert to_rgb(image).shape == (1, 2, 3) and to_rgb(image)[0, 0].tolist() == [0, 128, 255]


def test_metadata_is_parsed_into_a_frozen_info():
    info = ModelInfo.from_metadata(META, "m.onnx")
    assert (info.label_nc, info.size_multiple, info.feat_num) == (35, 4, 2)
    assert info.use_instance_map and info.use_instance_features
    assert info.input_names == ("label", "instance", "features")
    assert info.centres[26].shape == (3, 2) and info.centres[26].dtype == np.float32
    assert info.styles()["7"] == CENTRES[7].tolist()
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.label_nc = 3
    with pytest.raises(InputError, match=r"^m\.onnx: not exported by `pix2pixhd export`$"):
        ModelInfo.from_metadata({**META, "producer": "someone-else"}, "m.onnx")
    with pytest.raises(InputError, match="m.onnx: not exported by `pix2pixhd export`"):
        ModelInfo.from_metadata({k: v for k, v in META.items() if k != "label_nc"}, "m.onnx")


def _scene() -> np.ndarray:
    inst = np.full((6, 8), 7)  # road (stuff: the class id itself)
    inst[:3, :3] = 26001  # two cars
    inst[3:, 5:] = 26002
    inst[0, 7] = 23  # sky: no centres
    return inst


def _feature_of(features: np.ndarray, inst: np.ndarray, instance_id: int) -> np.ndarray:
    vectors = features[:, inst == instance_id].T
    assert (vectors == vectors[0]).all()  # one feature per instance
    return vectors[0]


def test_draw_gives_each_instance_one_centre_of_its_class_or_zeros():
    inst = _scene()
    feats = draw_features(inst, CENTRES, 2, seed=3)
    assert feats.shape == (2, 6, 8) and feats.dtype == np.float32
    for i, cls in ((26001, 26), (26002, 26), (7, 7)):
        assert any(np.array_equal(_feature_of(feats, inst, i), c) for c in CENTRES[cls])
    assert np.array_equal(_feature_of(feats, inst, 23), [0, 0])


def test_draw_of_an_instance_depends_on_seed_and_id_only():
    inst = _scene()
    feats = draw_features(inst, CENTRES, 2, seed=5)
    edited = inst.copy()
    edited[3:, 5:] = 7  # remove one car: the other instances keep their looks
    edited[5, 0] = 26077  # add another one
    again = draw_features(edited, CENTRES, 2, seed=5)
    for i in (26001, 7):
        assert np.array_equal(_feature_of(feats, inst, i), _feature_of(again, edited, i))
    # the documented convention (clients in other languages reproduce it)
    k = int(np.random.default_rng([5, 26001]).integers(3))
    assert np.array_equal(_feature_of(feats, inst, 26001), CENTRES[26][k])
    # a map's draw does not depend on the other maps of its batch
    batch = draw_batch_features(np.stack([inst, edited])[:, None], CENTRES, 2, seed=5)
    assert np.array_equal(batch[0], feats) and np.array_equal(batch[1], again)
    # seeds vary the looks: over a few seeds the first car takes more than one centre
    looks = {tuple(_feature_of(draw_features(inst, CENTRES, 2, s), inst, 26001)) for s in range(8)}
    assert len(looks) > 1


def test_choice_and_override_win_over_the_draw():
    inst = _scene()
    vec = np.array([0.25, -0.75], np.float32)
    feats = draw_features(inst, CENTRES, 2, seed=0, choice={26001: 2, 7: 1}, override={26002: vec})
    assert np.array_equal(_feature_of(feats, inst, 26001), CENTRES[26][2])
    assert np.array_equal(_feature_of(feats, inst, 7), CENTRES[7][1])
    assert np.array_equal(_feature_of(feats, inst, 26002), vec)


def test_feeds_are_padded_to_the_graph_size_and_checked():
    info = ModelInfo.from_metadata(META, "m.onnx")
    label = np.array([[[[7, 26], [7, 7]]]])
    inst = np.array([[[[7, 26001], [7, 7]]]])
    feeds = onnx_feeds(info, label, inst, seed=1)
    assert list(feeds) == ["label", "instance", "features"]
    assert feeds["label"].shape == feeds["instance"].shape == (1, 1, 8, 8)
    assert feeds["features"].shape == (1, 2, 8, 8) and feeds["label"].dtype == np.int64
    # the last row and column, replicated
    assert (feeds["instance"][0, 0, 0, 1:] == 26001).all() and (
        feeds["instance"][0, 0, 1:] == 7
    ).all()
    with pytest.raises(InputError, match=r"label id 35 is outside \[0, 34\]"):
        onnx_feeds(info, label + 9, inst)
    with pytest.raises(InputError, match="uses instance maps"):
        onnx_feeds(info, label)
    with pytest.raises(InputError, match="differs from label"):
        onnx_feeds(info, label, inst[..., :1])


@pytest.mark.parametrize(
    "ids",
    [
        np.random.default_rng(0).integers(0, 40000, (64, 96)),  # Cityscapes-like ids
        np.random.default_rng(1).integers(0, 40000, (32, 48)).astype(np.uint16),
        np.array([[7, 7], [0, 3]]),
        np.array([[2**40, 3], [3, 0]]),  # beyond the lookup table: np.unique's path
        np.zeros((0, 4), np.int64),
    ],
)
def test_unique_inverse_is_numpys(ids):
    unique, inverse = unique_inverse(ids)
    expected, expected_inverse = np.unique(ids, return_inverse=True)
    assert unique.dtype == expected.dtype and np.array_equal(unique, expected)
    assert np.array_equal(inverse, expected_inverse.reshape(ids.shape))
    assert np.array_equal(unique[inverse], ids)
