"""Step `boundaries`: precompute instance boundary maps for a whole dataset.

One 8-bit PNG (0 / 255) per instance map, at ``out/<split>/<stem>_boundary.png``.
Idempotent: a map newer than its instance file is skipped. Uses a process pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from components.signature import PositiveInt
from components.tracking import Orchestrator, current, tracked_step
from model.config import LayoutOrAuto
from model.datasets import LAYOUTS, boundary_file, detect_layout, find_samples
from model.errors import InputError
from model.fileio import prepare_out_dir, write_json
from model.progress import progress

log = logging.getLogger(__name__)


def boundary_array(instance: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W) uint8, 255 on instance boundaries (the model's own definition)."""
    import torch

    from model.encoding import boundary_map

    edge = boundary_map(torch.from_numpy(np.asarray(instance, np.int64))[None, None])[0, 0]
    return edge.numpy().astype(np.uint8) * 255


def _one(job: tuple[str, str]) -> str:
    from model.image_io import read_instance, write_png

    src, dst = job
    write_png(dst, boundary_array(read_instance(src)))  # atomic
    return dst


SOURCES = ".sources.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@tracked_step("boundaries")
def run(
    data: Path,
    out: Path,
    layout: LayoutOrAuto = "auto",
    splits: tuple[str, ...] = ("train", "val"),
    workers: PositiveInt | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Write one boundary map per instance map (skipping maps already up to date).

    Up to date is decided by content: ``out/.sources.json`` records the SHA-256 of the
    instance map each boundary map was made from; a map whose source bytes changed (or a
    map made for other data of the same name, e.g. another size) is made again. Maps of
    samples no longer in the dataset are removed.

    Args:
        data: the dataset root.
        out: the output directory (``<split>/<stem>_boundary.png``).
        layout: the dataset layout (``auto``: detected).
        splits: the splits to process.
        workers: worker processes (default: the CPU count).
        tracking: log an MLflow run (nested in the pipeline execution's run).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.

    Returns:
        The summary: maps written and skipped.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected auto, {', '.join(LAYOUTS)}")
    lay = detect_layout(data) if layout == "auto" else layout
    prepare_out_dir(out)
    current().log_input_dataset(str(data), ",".join(splits), "", "boundaries")
    if lay == "rgb":
        raise InputError(f"{data}: the rgb layout has no instance maps, nothing to do")
    record = out / SOURCES
    try:
        known = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        known = {}
    jobs, skipped, sources = [], 0, {}
    for split in splits:
        for s in find_samples(data, lay, split):
            if s.instance is None:
                continue
            dst = boundary_file(out, split, s.stem)
            rel = dst.relative_to(out).as_posix()
            sources[rel] = _sha256(s.instance)
            if dst.exists() and known.get(rel) == sources[rel]:
                skipped += 1
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((str(s.instance), str(dst)))
    for rel in set(known) - set(sources):  # samples gone from the dataset
        (out / rel).unlink(missing_ok=True)
    if not jobs and not skipped:
        raise InputError(f"{data}: no instance maps found in splits {', '.join(splits)}")
    start = time.perf_counter()
    n_workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers) as pool:
            for _ in progress(
                pool.map(_one, jobs, chunksize=16), total=len(jobs), desc="boundaries", unit="img"
            ):
                pass
    else:
        for job in progress(jobs, desc="boundaries", unit="img"):
            _one(job)
    summary = {"written": len(jobs), "skipped_up_to_date": skipped, "layout": lay}
    write_json(record, sources)
    write_json(out / "boundaries_summary.json", {"maps": len(sources), "layout": lay})
    summary["seconds"] = round(time.perf_counter() - start, 2)  # not in the output: DVC
    log.info("boundaries: %d written, %d up to date", len(jobs), skipped)
    return summary
