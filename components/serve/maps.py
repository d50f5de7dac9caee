"""Uploaded maps: PNG bytes -> arrays, with the API's limits and errors.

The checks are `pix2pixhd generate`'s (model/image_io.py: label maps 8-bit single
channel, instance maps 8/16/32-bit integers), plus what a service needs: PNG only, the
pixel limit checked from the header before decoding, ids inside the model's label range,
and every problem an ``ApiError`` naming the form part.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from zlib_ng import zlib_ng

from model.errors import InputError
from model.image_io import read_instance, read_label
from model.model_contract import unique_inverse

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Limits:
    """Request limits; above them the answer is 413."""

    max_bytes: int = 32 * 2**20  # one request body
    max_pixels: int = 2048 * 2048  # one map (the paper's 2048x1024 fits twice)
    max_samples: int = 8  # multi-modal samples per edit request
    max_edits: int = 256  # edits in one edit request
    max_instances: int = 10_000  # distinct instance ids in one instance map
    deadline_s: float = 120.0  # a request's whole time, queue included; then 504


class ApiError(Exception):
    """A client error: HTTP status, the request part it concerns, and what was expected."""

    def __init__(self, status: int, part: str, message: str) -> None:
        super().__init__(message)
        self.status, self.part, self.message = status, part, message


class _Part(io.BytesIO):
    """Bytes that print as the form part's name, so image_io's errors name the part."""

    def __init__(self, data: bytes, part: str) -> None:
        super().__init__(data)
        self.part = part

    def __str__(self) -> str:
        return self.part


def _checked(data: bytes, part: str, limits: Limits) -> _Part:
    if not data.startswith(PNG_SIGNATURE):
        raise ApiError(400, part, f"{part}: not a PNG file (expected PNG bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size  # header only: nothing decoded yet
    except Exception as exc:
        raise ApiError(400, part, f"{part}: unreadable PNG: {exc}") from None
    if width * height > limits.max_pixels:
        raise ApiError(
            413,
            part,
            f"{part}: {width}x{height} = {width * height} pixels, above the limit of "
            f"{limits.max_pixels}",
        )
    return _Part(data, part)


def read_label_png(data: bytes, part: str, limits: Limits, label_nc: int) -> np.ndarray:
    """8-bit single-channel label ids in [0, label_nc) -> (H, W) int64."""
    try:
        label = read_label(_checked(data, part, limits))
    except InputError as exc:
        raise ApiError(400, part, str(exc)) from None
    bad = label[label >= label_nc]
    if bad.size:
        raise ApiError(
            400,
            part,
            f"{part}: label ids {sorted(set(np.unique(bad).tolist()))[:8]} are outside the "
            f"model's label range [0, {label_nc - 1}]",
        )
    return label


def check_instances(instance: np.ndarray, part: str, limits: Limits) -> None:
    """The work per request grows with the distinct instance ids: a budget (413)."""
    count = len(unique_inverse(instance)[0])
    if count > limits.max_instances:
        raise ApiError(
            413,
            part,
            f"{part}: {count} distinct instance ids, above the limit of {limits.max_instances}",
        )


def read_instance_png(data: bytes, part: str, limits: Limits, shape: tuple[int, ...]) -> np.ndarray:
    """Instance ids (8/16-bit PNG) of the label map's size -> (H, W) int64."""
    try:
        instance = read_instance(_checked(data, part, limits))
    except InputError as exc:
        raise ApiError(400, part, str(exc)) from None
    if instance.shape != tuple(shape):
        raise ApiError(
            400,
            part,
            f"{part}: size {instance.shape[1]}x{instance.shape[0]} differs from the label "
            f"map's {shape[1]}x{shape[0]}",
        )
    check_instances(instance, part, limits)
    return instance


def read_mask_png(data: bytes, part: str, limits: Limits) -> np.ndarray:
    """An edit's mask, as `pix2pixhd edit` reads it: non-zero pixels of an 8-bit map."""
    try:
        return read_label(_checked(data, part, limits)) > 0
    except InputError as exc:
        raise ApiError(400, part, str(exc)) from None


#: PNG colour type by channel count: grey, RGB, RGBA
_COLOUR_TYPE = {1: 0, 3: 2, 4: 6}


def _chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib_ng.crc32(tag + body))


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 (H, W) / (H, W, 3) / (H, W, 4) or uint16 (H, W) -> PNG bytes: every row
    with PNG's Sub filter (each byte minus the byte one pixel to its left), deflated by
    zlib's run-length strategy at level 1, libpng's advice for photos.

    Pillow's encoder has no filter option: it tries all five filters on every row and
    keeps the best, which is two thirds of its time on a generated photo. One fixed
    filter gives files 1% larger at 2.4x the speed (a 256x128 answer 1.3 ms instead of
    3.0 ms, a 1024x512 one 21 ms instead of 47 ms; the demo's trained model, 2-core
    EPYC). zlib-ng's deflate gave zlib's very bytes for the demo's answer, 2.1x faster
    (0.54 instead of 1.16 ms at 256x128). Any PNG decoder reads them (tested against
    Pillow's)."""
    a = np.asarray(array)
    if a.dtype not in (np.uint8, np.uint16) or a.ndim not in (2, 3):
        raise ValueError(f"png_bytes: expected uint8/uint16 (H, W[, C]), got {a.dtype} {a.shape}")
    height, width = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    if channels not in _COLOUR_TYPE or (a.dtype == np.uint16 and channels != 1):
        raise ValueError(f"png_bytes: unsupported {a.dtype} image of {channels} channels")
    step = channels * a.itemsize  # bytes per pixel: the Sub filter's distance
    x = np.ascontiguousarray(a, a.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)
    rows = np.empty((height, x.shape[1] + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1 : 1 + step] = x[:, :step]
    np.subtract(x[:, step:], x[:, :-step], out=rows[:, 1 + step :])  # modulo 256
    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 9, zlib_ng.Z_RLE)
    header = struct.pack(">IIBBBBB", width, height, 8 * a.itemsize, _COLOUR_TYPE[channels], 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", deflate.compress(rows) + deflate.flush()),
            _chunk(b"IEND", b""),
        )
    )


def list_samples(data: Path) -> dict[str, dict[str, Path]]:
    """``split/stem`` -> {label, instance[, image]} paths of a dataset directory in the
    Cityscapes layout (gtFine/, leftImg8bit/) or the reference's folder layout
    ({split}_label/, {split}_inst/, {split}_img/). Samples without an instance map are
    left out (the editor needs both maps)."""
    from model.image_io import list_images, sample_stem

    data = Path(data)
    if not data.is_dir():
        raise InputError(f"--data {data}: not a directory")
    roles: dict[str, dict[str, dict[str, Path]]] = {"label": {}, "instance": {}, "image": {}}
    suffixes = {"_labelIds": "label", "_instanceIds": "instance", "_leftImg8bit": "image"}
    folders = {"_label": "label", "_inst": "instance", "_img": "image"}
    for path in list_images(data):
        rel = path.relative_to(data).parts
        if rel[0] in ("gtFine", "leftImg8bit") and len(rel) > 2:
            split = rel[1]
            role = next((r for s, r in suffixes.items() if path.stem.endswith(s)), None)
        else:
            split, _, kind = rel[0].rpartition("_")
            role = folders.get(f"_{kind}") if len(rel) > 1 else None
        if role is not None:
            roles[role].setdefault(split, {})[sample_stem(path)] = path
    out = {}
    for split, labels in sorted(roles["label"].items()):
        for stem, label in sorted(labels.items()):
            inst = roles["instance"].get(split, {}).get(stem)
            if inst is not None:
                files = {"label": label, "instance": inst}
                image = roles["image"].get(split, {}).get(stem)
                if image is not None:
                    files["image"] = image
                out[f"{split}/{stem}"] = files
    return out
