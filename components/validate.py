"""Step `validate`: a per-sample manifest checked by a Great Expectations suite.

On failure: a readable report naming each bad file and the reason, plus the Great
Expectations result as JSON and HTML in the output directory; non-zero exit; nothing
else written. On success: ``summary.json`` (counts, class histogram, dataset hash).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from model.datasets import LAYOUTS, SampleFiles, detect_layout, find_samples
from model.errors import InputError

log = logging.getLogger(__name__)

CHECKS = {  # manifest column -> what it means when False
    "complete": "sample lacks a label, instance or photo file",
    "readable": "a file cannot be read as an image",
    "label_8bit": "label map is not an 8-bit single-channel image",
    "photo_rgb": "photo is not 8-bit RGB",
    "sizes_equal": "label, instance and photo sizes differ",
    "label_ids_valid": "label ids outside the dataset's label set",
    "instances_consistent": "instance ids >= 1000 whose id // 1000 differs from the label",
    "size_usable": "size not usable by the configured model",
}


class ValidationFailed(InputError):
    """Raised after the report is written: the dataset has problems."""


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _inspect(
    s: SampleFiles, label_nc: int, multiple: int, use_instance_map: bool, needs_instances: bool
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "split": s.split,
        "stem": s.stem,
        "key": f"{s.split}/{s.stem}",
        "label_path": str(s.label or ""),
        "instance_path": str(s.instance or ""),
        "image_path": str(s.image or ""),
        "complete": s.label is not None
        and s.image is not None
        and (s.instance is not None or not needs_instances),
        "readable": True,
        "label_8bit": True,
        "photo_rgb": True,
        "sizes_equal": True,
        "label_ids_valid": True,
        "instances_consistent": True,
        "size_usable": True,
        "reasons": [],
    }
    sizes = {}
    arrays: dict[str, np.ndarray] = {}
    for role, path in (("label", s.label), ("instance", s.instance), ("image", s.image)):
        if path is None:
            continue
        try:
            with Image.open(path) as img:
                img.load()
                mode, size = img.mode, img.size
                arrays[role] = np.asarray(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            row["readable"] = False
            row["reasons"].append(f"{path}: unreadable ({exc})")
            continue
        row[f"{role}_mode"] = mode
        row[f"{role}_width"], row[f"{role}_height"] = size
        row[f"{role}_sha1"] = _sha1(path)
        sizes[role] = size
        if role == "label" and label_nc > 0 and mode not in ("L", "P"):
            row["label_8bit"] = False
            row["reasons"].append(f"{path}: label map has mode {mode}, expected 8-bit (L)")
        if role == "image" and mode != "RGB":
            row["photo_rgb"] = False
            row["reasons"].append(f"{path}: photo has mode {mode}, expected 8-bit RGB")
    if not row["complete"]:
        missing = [r for r, p in (("label", s.label), ("photo", s.image)) if p is None]
        if needs_instances and s.instance is None:
            missing.append("instance map")
        present = next(p for p in (s.label, s.instance, s.image) if p is not None)
        row["reasons"].append(f"{present}: sample '{s.stem}' has no {', '.join(missing)}")
    if len(set(sizes.values())) > 1:
        row["sizes_equal"] = False
        desc = ", ".join(f"{r} {w}x{h}" for r, (w, h) in sizes.items())
        row["reasons"].append(f"{s.label or s.image}: sizes differ ({desc})")
    if "label" in arrays and label_nc > 0 and row["label_8bit"]:
        ids = np.unique(arrays["label"])
        row["label_ids"] = [int(i) for i in ids]
        bad = [int(i) for i in ids if i >= label_nc]
        if bad:
            row["label_ids_valid"] = False
            row["reasons"].append(
                f"{s.label}: label ids {bad} outside [0, {label_nc - 1}] (label_nc={label_nc})"
            )
    if "instance" in arrays and "label" in arrays and row["sizes_equal"] and label_nc > 0:
        inst = arrays["instance"].astype(np.int64)
        row["instance_count"] = int(np.unique(inst[inst >= 1000]).size)
        things = inst >= 1000
        wrong = things & (inst // 1000 != arrays["label"].astype(np.int64))
        if wrong.any():
            row["instances_consistent"] = False
            row["reasons"].append(
                f"{s.instance}: {int(wrong.sum())} pixels whose instance id // 1000 differs "
                f"from the label (e.g. id {int(inst[wrong][0])})"
            )
    if sizes and use_instance_map is not None:
        w, h = next(iter(sizes.values()))
        if w < 2 * multiple or h < 2 * multiple:  # see model.encoding.check_size
            row["size_usable"] = False
            row["reasons"].append(
                f"{s.label or s.image}: {w}x{h} is smaller than the model's minimum "
                f"{2 * multiple}x{2 * multiple}"
            )
    return row


def build_manifest(
    data: Path,
    layout: str,
    label_nc: int,
    use_instance_map: bool,
    size_multiple: int,
    splits: tuple[str, ...],
) -> tuple[list[dict], list[str]]:
    lay = detect_layout(data) if layout == "auto" else layout
    if lay not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected auto, {', '.join(LAYOUTS)}")
    problems: list[str] = []
    samples = []
    for split in splits:
        samples += find_samples(data, lay, split, use_instance_map and lay != "rgb", problems)
    if not samples:
        raise InputError(f"{data}: no samples found for splits {', '.join(splits)} (layout {lay})")
    needs = use_instance_map and lay != "rgb"
    rows = [
        _inspect(s, label_nc, size_multiple, use_instance_map, needs)
        for s in tqdm(samples, desc="validate", unit="sample")
    ]
    dupes = [p for p in problems if "duplicate stem" in p]
    return rows, dupes


def _suite_result(rows: list[dict], dupes: list[str]) -> tuple[bool, dict]:
    """Run the Great Expectations 1.x suite over the manifest."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    df = pd.DataFrame([{k: v for k, v in r.items() if k in CHECKS or k == "key"} for r in rows])
    for problem in dupes:  # duplicated stems show up as repeated keys
        extra = {"key": problem.split("'")[1], **dict.fromkeys(CHECKS, True)}
        df = pd.concat([df, pd.DataFrame([extra])])
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        ctx.data_sources.add_pandas("manifest")
        .add_dataframe_asset("samples")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name="pix2pixhd_dataset"))
    for column in CHECKS:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True]))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="key"))
    vd = ctx.validation_definitions.add(
        gx.ValidationDefinition(name="dataset", data=batch_def, suite=suite)
    )
    result = vd.run(
        batch_parameters={"dataframe": df.reset_index(drop=True)}, result_format="COMPLETE"
    )
    return bool(result.success), result.to_json_dict()


def _html(result: dict, reasons: list[str]) -> str:
    rows = []
    for r in result.get("results", []):
        cfg = r.get("expectation_config", {})
        kw = cfg.get("kwargs", {})
        ok = r.get("success")
        n_bad = r.get("result", {}).get("unexpected_count", 0)
        rows.append(
            f"<tr class={'ok' if ok else 'bad'}><td>{html.escape(cfg.get('type', ''))}"
            f"</td><td>{html.escape(str(kw.get('column', '')))}</td>"
            f"<td>{'pass' if ok else 'FAIL'}</td><td>{n_bad}</td></tr>"
        )
    items = "".join(f"<li>{html.escape(x)}</li>" for x in reasons) or "<li>none</li>"
    return (
        "<!doctype html><meta charset=utf-8><title>pix2pixhd dataset validation</title>"
        "<style>body{font-family:sans-serif}.bad{background:#fdd}.ok{background:#dfd}"
        "td,th{padding:2px 8px}</style><h1>Dataset validation: "
        f"{'passed' if result.get('success') else 'FAILED'}</h1>"
        f"<h2>Problems</h2><ul>{items}</ul><h2>Great Expectations suite</h2><table>"
        "<tr><th>expectation</th><th>column</th><th>result</th><th>unexpected</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def run(
    data: Path,
    out: Path,
    layout: str = "auto",
    label_nc: int = 35,
    use_instance_map: bool = True,
    size_multiple: int = 16,
    splits: tuple[str, ...] = ("train", "val"),
) -> dict[str, Any]:
    rows, dupes = build_manifest(data, layout, label_nc, use_instance_map, size_multiple, splits)
    success, result = _suite_result(rows, dupes)
    reasons = [r for row in rows for r in row["reasons"]] + dupes
    out.mkdir(parents=True, exist_ok=True)
    if not success or reasons:
        (out / "great_expectations_result.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "great_expectations_result.html").write_text(_html(result, reasons))
        (out / "report.txt").write_text("\n".join(reasons) + "\n")
        shown = "\n  ".join(reasons[:20])
        more = f"\n  ... and {len(reasons) - 20} more" if len(reasons) > 20 else ""
        raise ValidationFailed(
            f"{data}: {len(reasons)} problem(s) in {len(rows)} samples "
            f"(report: {out / 'report.txt'}):\n  {shown}{more}"
        )
    hist: dict[int, int] = {}
    for row in rows:
        for i in row.get("label_ids", []):
            hist[i] = hist.get(i, 0) + 1
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        digest.update(row["key"].encode())
        for role in ("label", "instance", "image"):
            digest.update(str(row.get(f"{role}_sha1", "")).encode())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    summary = {
        "data": str(data),
        "counts": counts,
        "samples": len(rows),
        "images_per_class": {str(k): v for k, v in sorted(hist.items())},
        "instances": sum(r.get("instance_count", 0) for r in rows),
        "dataset_hash": digest.hexdigest(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    log.info("validated %d samples: ok (hash %s)", len(rows), summary["dataset_hash"][:12])
    return summary
