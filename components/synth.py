"""Step `data synth`: render the bundled street-scene dataset in the Cityscapes layout.

leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png
gtFine/{split}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png
gtFine/{split}/{city}/{city}_{seq:06d}_000019_gtFine_instanceIds.png   (16-bit)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.tracking import Orchestrator, Tracker, tracked_step
from model.errors import InputError
from model.fileio import prepare_out_dir, write_json
from model.image_io import write_png
from model.progress import progress
from model.synth import render_scene

log = logging.getLogger(__name__)

CITIES = {"train": ("synthberg", "pixelstadt"), "val": ("renderheim",)}


def sample_paths(root: Path, split: str, index: int) -> tuple[Path, Path, Path]:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    stem = f"{city}_{index:06d}_000019"
    photo = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
    gt = root / "gtFine" / split / city
    return photo, gt / f"{stem}_gtFine_labelIds.png", gt / f"{stem}_gtFine_instanceIds.png"


def _track(tracker: Tracker, args: Any, summary: dict[str, Any] | None) -> None:
    """MLflow: the summary and the first training scene (photo | label colours)."""
    if summary is None or not summary["counts"].get("train"):
        return
    from model.image_io import read_label, read_rgb
    from model.labels import colorize

    photo, label, _ = sample_paths(Path(args["out"]), "train", 0)
    scene = np.concatenate([read_rgb(photo), colorize(read_label(label))], axis=1)
    tracker.log_image(scene, "synth_samples", 0)
    tracker.log_artifact(Path(args["out"]) / "synth_summary.json")


@tracked_step("synth", after=_track)
def run(
    out: Path,
    num_train: int = 200,
    num_val: int = 40,
    width: int = 256,
    height: int = 128,
    seed: int = 0,
    cars: bool = True,
    trees: float = 1.0,
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Render the bundled procedural street scenes in the Cityscapes layout.

    Args:
        out: the dataset root to write.
        num_train, num_val: images per split.
        width, height: the image size.
        seed: the scene draws.
        cars: draw cars (off: a shifted dataset without them, e.g. to try drift).
        trees: scale the number of trees.
        tracking: log an MLflow run (nested in the pipeline execution's run).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.

    Returns:
        The summary: counts and size.
    """
    if num_train < 0 or num_val < 0:
        raise InputError("--num-train and --num-val must be >= 0")
    if width < 32 or height < 32:
        raise InputError(f"--size {width}x{height}: width and height must be at least 32")
    prepare_out_dir(out)
    start = time.perf_counter()
    counts = {}
    for split, n, offset in (("train", num_train, 0), ("val", num_val, 1)):
        for i in progress(range(n), desc=f"synth {split}", unit="img"):
            # One independent stream per sample: any sample re-renders identically alone.
            rng = np.random.default_rng([seed, offset, i])
            scene = render_scene(rng, width, height, cars=cars, trees=trees)
            photo, label, inst = sample_paths(out, split, i)
            write_png(photo, scene.photo)
            write_png(label, scene.label)
            write_png(inst, scene.instance.astype(np.uint16))
        counts[split] = n
    seconds = time.perf_counter() - start
    # what was rendered, nothing about where or how long: one seed, one md5 for every file
    summary = {"counts": counts, "size": [width, height], "seed": seed}
    summary |= {"cars": cars, "trees": trees}
    write_json(out / "synth_summary.json", summary)
    log.info("rendered %d samples into %s in %.1f s", sum(counts.values()), out, seconds)
    return {"out": str(out), **summary, "seconds": round(seconds, 2)}
