"""Colour-coded label maps (what annotation tools export) to label-id maps.

A palette maps RGB colours to label ids: ``cityscapes`` (the official colours of
``model.labels``; where several ids share a colour, the lowest id wins: black is 0
"unlabeled", (153, 153, 153) is 17 "pole", (0, 0, 142) is 26 "car"), or a JSON file::

    {"#804080": 7, "244,35,232": 8}              or
    [{"color": [128, 64, 128], "id": 7}, ...]

Every pixel must have a palette colour: the unknown ones are reported with their pixel
counts and first positions. ``convert --palette`` and the ``rgb`` layout with
``data.palette`` set both decode through ``decode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import InputError, quote
from model.fileio import read_json
from model.labels import LABELS


@dataclass(frozen=True)
class Palette:
    name: str
    keys: np.ndarray  # (n,) int64 colour keys r << 16 | g << 8 | b, sorted
    ids: np.ndarray  # (n,) uint8 label id of each key


def _key(r: int, g: int, b: int) -> int:
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _from_pairs(name: str, pairs: list[tuple[tuple[int, int, int], int]]) -> Palette:
    table: dict[int, int] = {}
    for colour, label in pairs:
        table.setdefault(_key(*colour), label)  # first (lowest id) wins
    keys = np.array(sorted(table), np.int64)
    return Palette(name, keys, np.array([table[k] for k in keys], np.uint8))


def cityscapes_palette() -> Palette:
    pairs = [(lab.color, lab.id) for lab in sorted(LABELS, key=lambda x: x.id) if lab.id >= 0]
    return _from_pairs("cityscapes", pairs)


def _colour(text: str, source: str) -> tuple[int, int, int]:
    t = text.strip()
    try:
        if t.startswith("#") and len(t) == 7:
            rgb = tuple(int(t[i : i + 2], 16) for i in (1, 3, 5))
        else:
            rgb = tuple(int(v) for v in t.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise InputError(f"{source}: colour {quote(text)}: expected '#rrggbb' or 'r,g,b' (0..255)")
    return rgb  # type: ignore[return-value]


def load_palette(spec: str | Path) -> Palette:
    """``cityscapes`` or a JSON palette file."""
    if str(spec) == "cityscapes":
        return cityscapes_palette()
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--palette {quote(str(spec))}: expected 'cityscapes' or a JSON file")
    tree = read_json(path, "JSON palette")
    pairs: list[tuple[tuple[int, int, int], int]] = []
    if isinstance(tree, dict):
        items = [(_colour(str(k), str(path)), v) for k, v in tree.items()]
    elif isinstance(tree, list):
        items = []
        for e in tree:
            c = e.get("color", e.get("colour")) if isinstance(e, dict) else None
            if not (isinstance(c, list) and len(c) == 3):
                raise InputError(
                    f"{path}: entry {quote(e)}: expected {{'color': [r, g, b], 'id': n}}"
                )
            items.append((_colour(",".join(str(v) for v in c), str(path)), e.get("id")))
    else:
        raise InputError(f"{path}: expected an object of colour: id or a list of entries")
    for colour, label in items:
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 255:
            raise InputError(f"{path}: colour {colour}: id {quote(label)} is not an integer 0..255")
        pairs.append((colour, label))
    if not pairs:
        raise InputError(f"{path}: the palette has no colours")
    return _from_pairs(str(path), pairs)


def decode(rgb: np.ndarray, palette: Palette) -> tuple[np.ndarray, list[tuple]]:
    """(H, W, 3) uint8 -> ((H, W) uint8 ids, unknown colours as
    [(r, g, b), pixel count, (x, y) of the first pixel], most frequent first)."""
    h, w = rgb.shape[:2]
    a = rgb.reshape(-1, rgb.shape[-1])[:, :3].astype(np.int64)
    keys = (a[:, 0] << 16) | (a[:, 1] << 8) | a[:, 2]
    idx = np.clip(np.searchsorted(palette.keys, keys), 0, len(palette.keys) - 1)
    known = palette.keys[idx] == keys
    ids = palette.ids[idx].reshape(h, w)
    unknown: list[tuple] = []
    if not known.all():
        bad = np.flatnonzero(~known)
        colours, first, counts = np.unique(keys[bad], return_index=True, return_counts=True)
        for c, f, n in sorted(zip(colours, first, counts, strict=True), key=lambda t: -t[2]):
            y, x = divmod(int(bad[f]), w)
            unknown.append(((int(c) >> 16, (int(c) >> 8) & 255, int(c) & 255), int(n), (x, y)))
    return ids, unknown


def describe_unknown(path: str | Path, unknown: list[tuple], limit: int = 5) -> str:
    shown = ", ".join(f"{c} x{n} first at (x={x}, y={y})" for c, n, (x, y) in unknown[:limit])
    more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    total = sum(n for _, n, _ in unknown)
    return f"{path}: {total} pixels of {len(unknown)} colours not in the palette: {shown}{more}"


def read_colour_label(path: str | Path, palette: Palette) -> np.ndarray:
    """An RGB(A) colour label map -> (H, W) uint8 ids; unknown colours raise InputError."""
    from model.image_io import open_image  # the pixel budget before decoding

    with open_image(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    ids, unknown = decode(rgb, palette)
    if unknown:
        raise InputError(describe_unknown(path, unknown))
    return ids
