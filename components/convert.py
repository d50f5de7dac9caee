"""Step `data convert`: colour-coded label maps to 8-bit label-id maps.

Every file is decoded first; if any has a colour the palette lacks, the error lists
each such file with the colours, their pixel counts and first positions, and nothing is
written (exit 2). Output names keep the relative path; Cityscapes ``*_gtFine_color``
files become ``*_gtFine_labelIds.png``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.errors import InputError
from model.image_io import list_images
from model.palette import decode, describe_unknown, load_palette

log = logging.getLogger(__name__)


def _rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("L", "I", "I;16", "1"):
                raise InputError(f"{path}: mode {img.mode} is not a colour label map")
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise InputError(f"{path}: unreadable image: {exc}") from None


def _out_name(rel: Path) -> Path:
    stem = rel.stem
    if stem.endswith("_gtFine_color"):
        stem = stem[: -len("_color")] + "_labelIds"
    return rel.with_name(stem + ".png")


def run(palette: str | Path, labels: Path, out: Path) -> dict[str, Any]:
    """Convert colour label maps to label-id PNGs with a palette.

    Args:
        palette: the palette (a name or a file) mapping colours to label ids.
        labels: a directory of colour label maps.
        out: the output directory (one label-id PNG per map, same stem).

    Returns:
        The summary of the conversion.
    """
    pal = load_palette(palette)
    files = list_images(labels)
    if not files:
        raise InputError(f"{labels}: no images")
    problems = []
    for path in files:
        _, unknown = decode(_rgb(path), pal)
        if unknown:
            problems.append(describe_unknown(path, unknown))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more files" if len(problems) > 20 else ""
        raise InputError(
            f"{len(problems)} of {len(files)} files have colours not in palette "
            f"{pal.name} (nothing written):\n  {shown}{more}"
        )
    present: set[int] = set()
    for path in files:
        ids, _ = decode(_rgb(path), pal)
        present.update(int(i) for i in np.unique(ids))
        target = out / _out_name(path.relative_to(labels))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        Image.fromarray(ids).save(tmp, format="PNG")
        os.replace(tmp, target)
    log.info("converted %d colour label maps into %s", len(files), out)
    return {"converted": len(files), "out": str(out), "palette": pal.name, "ids": sorted(present)}
