"""Dataset layouts, pairing by stem, and the training dataset.

Layouts:
- ``cityscapes``: leftImg8bit/{split}/{city}/*_leftImg8bit.png with
  gtFine/{split}/{city}/*_gtFine_labelIds.png and *_gtFine_instanceIds.png;
- ``folder`` (the reference's): {split}_label/, {split}_inst/, {split}_img/;
- ``rgb`` (label_nc 0): {split}_A/ (input photos) and {split}_B/ (targets).
Files pair by stem (Cityscapes suffixes understood), never by sorted order.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from model.config import Preprocess
from model.errors import InputError
from model.image_io import (
    image_size,
    is_image_file,
    read_instance,
    read_label,
    read_rgb,
    sample_stem,
)
from model.palette import Palette, read_colour_label

Layout = Literal["cityscapes", "folder", "rgb"]
LAYOUTS: tuple[str, ...] = typing.get_args(Layout)


@dataclass(frozen=True)
class SampleFiles:
    split: str
    stem: str
    label: Path | None
    instance: Path | None
    image: Path | None


def detect_layout(root: Path) -> Layout:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset directory")
    if (root / "gtFine").is_dir() or (root / "leftImg8bit").is_dir():
        return "cityscapes"
    names = {p.name for p in root.iterdir() if p.is_dir()}
    if any(n.endswith(("_label", "_img", "_inst")) for n in names):
        return "folder"
    if any(n.endswith(("_A", "_B")) for n in names):
        return "rgb"
    raise InputError(
        f"{root}: cannot tell the dataset layout: expected gtFine/ + leftImg8bit/ (cityscapes), "
        "train_label/ train_inst/ train_img/ (folder) or train_A/ train_B/ (rgb)"
    )


def files_matching(directory: Path, stem_pattern: str = "*") -> list[Path]:
    """Image files whose stem matches ``stem_pattern``; extensions in any case."""
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.rglob("*") if is_image_file(p) and fnmatchcase(p.stem, stem_pattern)
    )


def _by_stem(paths: list[Path], role: str, problems: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        s = sample_stem(p)
        if s in out:
            problems.append(f"{p}: duplicate stem '{s}' (also {out[s]}) in {role} files")
            continue
        out[s] = p
    return out


def role_dirs(root: Path, layout: Layout, split: str) -> dict[str, tuple[Path, str]]:
    """Directory and stem pattern (any image extension) of each role of a split."""
    if layout == "cityscapes":
        return {
            "label": (root / "gtFine" / split, "*_gtFine_labelIds"),
            "instance": (root / "gtFine" / split, "*_gtFine_instanceIds"),
            "image": (root / "leftImg8bit" / split, "*_leftImg8bit"),
        }
    if layout == "folder":
        return {
            "label": (root / f"{split}_label", "*"),
            "instance": (root / f"{split}_inst", "*"),
            "image": (root / f"{split}_img", "*"),
        }
    return {"label": (root / f"{split}_A", "*"), "image": (root / f"{split}_B", "*")}


def find_samples(
    root: Path,
    layout: Layout,
    split: str,
    use_instance_map: bool = True,
    problems: list[str] | None = None,
) -> list[SampleFiles]:
    """Pair a split's files by stem. Incomplete samples are kept (with None) and reported
    in ``problems`` when given, else raise."""
    collect = problems if problems is not None else []
    roles = role_dirs(Path(root), layout, split)
    if layout == "rgb" or not use_instance_map:
        roles.pop("instance", None)
    by_role = {
        role: _by_stem(files_matching(d, pat), role, collect) for role, (d, pat) in roles.items()
    }
    stems = sorted(set().union(*[set(v) for v in by_role.values()]))
    samples = []
    for stem in stems:
        files = {role: by_role[role].get(stem) for role in by_role}
        for role, path in files.items():
            if path is None:
                other = next(p for p in files.values() if p is not None)
                collect.append(f"{other}: sample '{stem}' has no {role} file")
        samples.append(
            SampleFiles(split, stem, files.get("label"), files.get("instance"), files.get("image"))
        )
    if problems is None and collect:
        raise InputError(collect[0])
    return samples


def _sizes_differ(files: SampleFiles, sizes: dict[str, tuple[int, int]]) -> InputError:
    """The error `validate` reports for a sample whose files disagree in size."""
    desc = ", ".join(f"{r} {w}x{h}" for r, (w, h) in sizes.items())
    return InputError(f"{files.label or files.image}: sizes differ ({desc})")


def check_sample_sizes(samples: list[SampleFiles]) -> None:
    """Label, instance and photo of each sample have one size (read from the headers,
    nothing decoded): the same error as `validate`, before any training."""
    for files in samples:
        roles = (("label", files.label), ("instance", files.instance), ("image", files.image))
        sizes = {role: image_size(path) for role, path in roles if path is not None}
        if len(set(sizes.values())) > 1:
            raise _sizes_differ(files, sizes)


def load_sample(
    files: SampleFiles, label_nc: int, palette: Palette | None = None
) -> dict[str, np.ndarray]:
    """Arrays of one sample: label (H, W) ids or (H, W, 3) RGB, instance, image. With a
    palette, colour-coded (RGB) label maps are decoded to ids (``model.palette``)."""
    out: dict[str, np.ndarray] = {}
    if files.label is not None:
        if label_nc == 0:
            out["label"] = read_rgb(files.label)
        elif palette is not None and _is_colour(files.label):
            out["label"] = read_colour_label(files.label, palette).astype(np.int64)
        else:
            out["label"] = read_label(files.label)
    if files.instance is not None:
        out["instance"] = read_instance(files.instance)
    if files.image is not None:
        out["image"] = read_rgb(files.image)
    sizes = {role: (a.shape[1], a.shape[0]) for role, a in out.items()}
    if len(set(sizes.values())) > 1:
        raise _sizes_differ(files, sizes)
    return out


def _is_colour(path: Path) -> bool:
    with Image.open(path) as img:
        return img.mode in ("RGB", "RGBA")


PREPROCESS: tuple[str, ...] = typing.get_args(Preprocess)


def preprocess_size(
    mode: str, w: int, h: int, width: int, height: int, multiple: int = 1
) -> tuple[int, int]:
    """(width, height) a (w, h) sample is resized to before cropping, as the reference's
    ``resize_or_crop``: ``resize*`` to (width, height) (the reference: loadSize square);
    ``scale_width*`` to ``width`` keeping the aspect ratio (height truncated, as the
    reference); ``crop`` unchanged; ``none`` to the nearest multiples of the model's
    size multiple (the reference's __make_power_2)."""
    if mode.startswith("resize"):
        return width, height
    if mode.startswith("scale_width"):
        return width, int(width * h / w)
    if mode == "none":
        return (
            max(multiple, round(w / multiple) * multiple),
            max(multiple, round(h / multiple) * multiple),
        )
    if mode == "crop":
        return w, h
    raise InputError(f"data.preprocess {mode!r}: expected one of {', '.join(PREPROCESS)}")


def resize_sample(arrays: dict[str, np.ndarray], width: int, height: int) -> dict[str, np.ndarray]:
    """NEAREST for label and instance maps, BICUBIC for photos (and RGB labels)."""
    out = {}
    for key, arr in arrays.items():
        if arr.shape[:2] == (height, width):
            out[key] = arr
            continue
        if arr.ndim == 3:
            out[key] = np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC))
        else:
            img = Image.fromarray(arr.astype(np.int32), mode="I")
            out[key] = np.asarray(img.resize((width, height), Image.NEAREST)).astype(np.int64)
    return out


def crop_flip(
    arrays: dict[str, np.ndarray],
    crop: tuple[int, int] | None,
    flip: bool,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The same random crop (h, w) and horizontal flip for every array of a sample."""
    h, w = next(iter(arrays.values())).shape[:2]
    y0 = x0 = 0
    ch, cw = (h, w) if crop is None else crop
    if crop is not None:
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    do_flip = flip and rng.random() < 0.5
    out = {}
    for key, arr in arrays.items():
        a = arr[y0 : y0 + ch, x0 : x0 + cw]
        out[key] = np.ascontiguousarray(a[:, ::-1] if do_flip else a)
    return out


def to_tensors(arrays: dict[str, np.ndarray], label_nc: int) -> dict[str, torch.Tensor]:
    out = {}
    for key, arr in arrays.items():
        if key == "boundary":
            out[key] = torch.from_numpy(np.array(arr > 0, np.float32)).unsqueeze(0)
        elif key == "image" or (key == "label" and label_nc == 0):
            out[key] = torch.from_numpy(np.array(arr, np.float32)).permute(2, 0, 1) / 127.5 - 1
        else:
            out[key] = torch.from_numpy(np.array(arr, np.int64)).unsqueeze(0)
    return out


def boundary_file(boundaries: Path, split: str, stem: str) -> Path:
    """Where the `boundaries` step writes a sample's precomputed boundary map."""
    return Path(boundaries) / split / f"{stem}_boundary.png"


class PairedDataset(torch.utils.data.Dataset):
    """Training/eval dataset: resize to (width, height), then crop and flip identically.

    With ``boundaries`` (the `boundaries` step's output directory), a precomputed
    boundary map is used when present and the sample needs no resizing (a boundary
    map cannot be resized; otherwise the model computes it from the instance map).
    """

    def __init__(
        self,
        samples: list[SampleFiles],
        label_nc: int,
        width: int,
        height: int,
        crop: tuple[int, int] | None = None,
        flip: bool = False,
        seed: int = 0,
        boundaries: Path | None = None,
        preprocess: str = "resize",
        size_multiple: int = 1,
        palette: Palette | None = None,
    ) -> None:
        self.samples, self.label_nc, self.boundaries = samples, label_nc, boundaries
        self.width, self.height, self.crop, self.flip, self.seed = width, height, crop, flip, seed
        self.preprocess, self.size_multiple, self.palette = preprocess, size_multiple, palette
        preprocess_size(preprocess, 1, 1, 1, 1)  # an unknown mode fails here, not per item
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        files = self.samples[index]
        arrays = load_sample(files, self.label_nc, self.palette)
        h, w = next(iter(arrays.values())).shape[:2]
        tw, th = preprocess_size(self.preprocess, w, h, self.width, self.height, self.size_multiple)
        if self.boundaries is not None and "instance" in arrays:
            path = boundary_file(self.boundaries, files.split, files.stem)
            if path.is_file() and arrays["instance"].shape == (th, tw):
                arrays["boundary"] = read_label(path)
        arrays = resize_sample(arrays, tw, th)
        if self.crop is not None and (self.crop[0] > th or self.crop[1] > tw):
            raise InputError(
                f"{files.label or files.image}: {tw}x{th} after preprocess {self.preprocess} "
                f"is smaller than the {self.crop[1]}x{self.crop[0]} crop (data.crop_size)"
            )
        rng = np.random.default_rng([self.seed, self.epoch, index])
        arrays = crop_flip(arrays, self.crop, self.flip, rng)
        return to_tensors(arrays, self.label_nc)
