"""The service's PNG encoder (``maps.png_bytes``): what it writes, Pillow reads back
exactly, for every kind of array the service answers with."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.serve.maps import png_bytes


def decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


@pytest.mark.parametrize(
    ("shape", "dtype", "mode"),
    [
        ((37, 53, 3), np.uint8, "RGB"),  # a photo
        ((37, 53, 4), np.uint8, "RGBA"),
        ((37, 53), np.uint8, "L"),  # a label map
        ((37, 53), np.uint16, "I;16"),  # an instance map: byte order matters
        ((1, 1, 3), np.uint8, "RGB"),
        ((5, 1), np.uint16, "I;16"),  # one column: no left neighbour anywhere
    ],
)
def test_round_trip_through_pillow(shape, dtype, mode):
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    array = rng.integers(0, top, shape, dtype=dtype, endpoint=True)
    array.flat[0], array.flat[-1] = 0, top  # the extremes, where the Sub filter wraps
    data = png_bytes(array)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode and img.size == (shape[1], shape[0])
    assert np.array_equal(decoded(data), array)


def test_smooth_images_compress():
    ramp = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (64, 256, 3))
    assert len(png_bytes(np.ascontiguousarray(ramp))) < ramp.size / 20  # Sub: all ones
    assert np.array_equal(decoded(png_bytes(ramp[:, ::-1])), ramp[:, ::-1])  # any strides


@pytest.mark.parametrize(
    "array",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.uint16)],
)
def test_unsupported_arrays_are_refused(array):
    with pytest.raises(ValueError, match="png_bytes"):
        png_bytes(array)
