"""Reading and writing label maps, instance maps and photos; tensor conversions.

Data contract: label maps are 8-bit single-channel PNGs of label ids;
instance maps are read as 32-bit integers (Cityscapes ids reach 33xxx: never int16);
photos are 8-bit RGB. Files pair by stem, never by sorted order.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.errors import InputError
from model.fileio import atomic_open
from model.model_contract import to_rgb

# Decompression bombs: an image whose header declares more pixels than this is refused
# before it is decoded. PIX2PIXHD_MAX_IMAGE_PIXELS raises (or lowers) the limit.
DEFAULT_MAX_IMAGE_PIXELS = 16384 * 8192

if TYPE_CHECKING:  # torch is imported where tensors are made: serving reads maps without it
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Cityscapes file name suffixes, longest first, so that one sample's files share a stem.
_STEM_SUFFIXES = (
    "_gtFine_instanceIds",
    "_gtFine_labelIds",
    "_gtFine_color",
    "_gtCoarse_instanceIds",
    "_gtCoarse_labelIds",
    "_leftImg8bit",
    "_boundary",
)


def sample_stem(path: str | Path) -> str:
    """The name a sample's files share: the file stem minus Cityscapes suffixes."""
    stem = Path(path).stem
    for suffix in _STEM_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def list_images(directory: str | Path) -> list[Path]:
    """Image files under ``directory`` (recursively), sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    return sorted(p for p in directory.rglob("*") if is_image_file(p))


def is_image_file(path: Path) -> bool:
    """An image by its extension, in any case (``.PNG``, ``.Png`` and ``.png`` alike)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


_CITYSCAPES_ROLE_SUFFIX = {
    "label": "_labelIds",
    "instance": "_instanceIds",
    "image": "_leftImg8bit",
}


def list_role(directory: str | Path, role: str) -> list[Path]:
    """Images of one role under ``directory``. Where Cityscapes names are present (labels
    and instance maps share gtFine/), only the files of this role are kept."""
    files = list_images(directory)
    suffix = _CITYSCAPES_ROLE_SUFFIX[role]
    tagged = [p for p in files if p.stem.endswith(suffix)]
    return tagged or files


def index_by_stem(paths: list[Path], what: str) -> dict[str, Path]:
    """Map stem -> path; two files with one stem is an error naming both."""
    out: dict[str, Path] = {}
    for p in paths:
        s = sample_stem(p)
        if s in out:
            raise InputError(f"two {what} files share the stem '{s}': {out[s]} and {p}")
        out[s] = p
    return out


def max_image_pixels() -> int:
    text = os.environ.get("PIX2PIXHD_MAX_IMAGE_PIXELS", "")
    try:
        value = int(text) if text else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        raise InputError(
            f"PIX2PIXHD_MAX_IMAGE_PIXELS={text!r}: expected a positive integer"
        ) from None
    if value < 1:
        raise InputError(f"PIX2PIXHD_MAX_IMAGE_PIXELS={text!r}: expected a positive integer")
    return value


def open_image(path: str | Path, load: bool = True) -> Image.Image:
    """Open an image, refusing headers that declare more than ``max_image_pixels()``
    pixels before anything is decoded. Every problem is one InputError naming the file."""
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # PIL's own limit: replaced by ours, below
            try:
                img = Image.open(path)  # reads the header only
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            w, h = img.size
            if w * h > limit:
                img.close()
                raise InputError(
                    f"{path}: image header declares {w}x{h} = {w * h} pixels, more than the "
                    f"limit of {limit} (a decompression bomb?); set PIX2PIXHD_MAX_IMAGE_PIXELS "
                    "to allow larger images"
                )
            if load:
                img.load()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image (truncated or not an image?): {exc}") from None
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding."""
    with open_image(path, load=False) as img:
        return img.size


_open = open_image


def read_label(path: str | Path) -> np.ndarray:
    """8-bit single-channel label ids -> (H, W) int64."""
    img = _open(path)
    if img.mode not in ("L", "P"):
        raise InputError(
            f"{path}: label map has mode {img.mode}; expected an 8-bit single-channel PNG "
            "of label ids (mode L or P)"
        )
    return np.asarray(img, dtype=np.uint8).astype(np.int64)


def read_instance(path: str | Path) -> np.ndarray:
    """Instance ids as 32-bit integers -> (H, W) int64 (no 16-bit wrap at 32768)."""
    img = _open(path)
    if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L", "P"):
        raise InputError(
            f"{path}: instance map has mode {img.mode}; expected a single-channel "
            "8/16/32-bit integer PNG"
        )
    # PIL gives uint16 for 16-bit PNGs: widen, never reinterpret as int16.
    return np.asarray(img).astype(np.int64)


def read_rgb(path: str | Path) -> np.ndarray:
    """8-bit RGB photo -> (H, W, 3) uint8."""
    img = _open(path)
    if img.mode != "RGB":
        raise InputError(f"{path}: photo has mode {img.mode}; expected 8-bit RGB")
    return np.asarray(img, dtype=np.uint8)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a PNG atomically (temporary + rename in the same directory)."""
    img = Image.fromarray(array)
    with atomic_open(path, "wb") as f:
        img.save(f, format="PNG")


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """(H, W) ids -> (1, H, W) int64."""
    import torch

    return torch.from_numpy(np.array(label, dtype=np.int64)).unsqueeze(0)


def rgb_to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    import torch

    t = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)
    return t / 127.5 - 1.0


def tensor_to_rgb(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 (``model.model_contract.to_rgb``)."""
    return to_rgb(image.detach().float().cpu().numpy())
