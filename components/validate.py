"""Step `validate`: measure every sample, check the measurements with a Great
Expectations suite (the data contract, see ``components.contract``), and optionally
compare the dataset with a training profile (drift).

The manifest holds one row per sample of measured values (``contract.MANIFEST_COLUMNS``); the
suite states what they must be. On a broken contract: ``report.txt`` naming each file
and measured value, the Great Expectations result as JSON and as the library's Data Docs
HTML, and ``manifest.json``; exit 2. On drift only (``--reference``): the same report,
exit 1. On success: ``summary.json`` (counts, class histogram, training profile, dataset
hash; its numbers in ``metrics.json``), ``manifest.json`` and the result JSON/HTML. The
files are replaced as one set (a run that fails while writing leaves the previous set),
and the verdict of an earlier run (``summary.json`` or ``report.txt``) never stays
beside a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components import contract
from components.signature import PositiveInt
from model.config import LayoutOrAuto
from model.datasets import (
    LAYOUTS,
    SampleFiles,
    detect_layout,
    files_matching,
    find_samples,
    role_dirs,
)
from model.errors import InputError, Pix2PixHDError
from model.fileio import StagedFiles, prepare_out_dir, write_json, write_metrics, write_text
from model.image_io import open_image, sample_stem
from model.palette import Palette, decode, describe_unknown, load_palette
from model.progress import progress

log = logging.getLogger(__name__)

_BITS = {"1": 1, "L": 8, "P": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "RGB": 8}


class ValidationFailed(InputError):
    """Raised after the report is written: the dataset breaks the contract (exit 2)."""


class DriftDetected(Pix2PixHDError):
    """Raised after the report is written: the dataset drifted from the training profile
    (exit 3: a finding about the data, told apart from bad input (2) and a bug (1))."""

    exit_code = 3


def min_file_size(preprocess: str, crop_size: int) -> int:
    """The smallest side files need when the training crop is cut from them unresized."""
    return crop_size if preprocess == "crop" else 0


def _measure(s: SampleFiles, label_nc: int, palette: Palette | None = None) -> dict[str, Any]:
    """The measured columns of one sample (None where a file is missing or unreadable)."""
    row: dict[str, Any] = {
        "key": f"{s.split}/{s.stem}",
        "split": s.split,
        "stem": s.stem,
        "label_path": str(s.label) if s.label else None,
        "instance_path": str(s.instance) if s.instance else None,
        "image_path": str(s.image) if s.image else None,
        "read_error": None,
    }
    arrays: dict[str, np.ndarray] = {}
    sizes = []
    for role, path in (("label", s.label), ("instance", s.instance), ("image", s.image)):
        if path is None:
            continue
        try:
            data = path.read_bytes()
            with open_image(path) as img:  # header pixel limit checked before decoding
                mode, size = img.mode, img.size
                if role != "image":
                    arrays[role] = np.asarray(img)
                bands = len(img.getbands())
        except InputError as exc:
            row["read_error"] = str(exc)
            continue
        row[f"{role}_mode"] = mode
        row[f"{role}_width"], row[f"{role}_height"] = size
        row[f"{role}_bytes"] = len(data)
        row[f"{role}_sha1"] = hashlib.sha1(data).hexdigest()
        if role == "image":
            row["image_channels"] = bands
        if role == "instance":
            row["instance_bits"] = _BITS.get(mode, 0)
        sizes.append(size)
    row["sizes_agree"] = len(set(sizes)) <= 1 if sizes else None
    lab = arrays.get("label")
    if lab is not None and palette is not None and lab.ndim == 3 and label_nc > 0:
        lab, unknown = decode(lab, palette)  # the loader's decoding (data.palette)
        row["label_unknown_colours"] = describe_unknown(s.label, unknown) if unknown else None
    if lab is not None and label_nc > 0 and lab.ndim == 2:
        hist = np.bincount(lab.reshape(-1).astype(np.int64), minlength=label_nc)
        present = np.flatnonzero(hist)
        row["label_min"], row["label_max"] = int(present[0]), int(present[-1])
        row["label_classes"] = int(present.size)
        row["histogram"] = {int(k): float(hist[k] / lab.size) for k in present}
    inst = arrays.get("instance")
    if inst is not None and inst.ndim == 2:
        inst = inst.astype(np.int64)
        row["instance_min"], row["instance_max"] = int(inst.min()), int(inst.max())
        things = inst >= 1000
        row["instance_count"] = int(np.unique(inst[things]).size)
        if lab is not None and lab.shape == inst.shape:
            wrong = things & (inst // 1000 != lab.astype(np.int64))
            row["instance_label_mismatch"] = int(wrong.sum())
    return row


def _duplicates(
    data: Path, layout: str, split: str, roles: set[str], found: list[SampleFiles]
) -> list[SampleFiles]:
    """Files whose stem another file of the same role already has: one extra sample each
    (the other roles' files from the first), so the suite's key uniqueness sees them."""
    first = {s.stem: s for s in found}
    out = []
    for role, (directory, pattern) in role_dirs(data, layout, split).items():
        if role not in roles or not directory.is_dir():
            continue
        seen: set[str] = set()
        for p in files_matching(directory, pattern):
            stem = sample_stem(p)
            if stem in seen:
                base = first.get(stem, SampleFiles(split, stem, None, None, None))
                files = {r: getattr(base, r) for r in _ROLES} | {role: p}
                out.append(SampleFiles(split, stem, *(files[r] for r in _ROLES)))
            seen.add(stem)
    return out


_ROLES = ("label", "instance", "image")


def build_manifest(
    data: Path,
    layout: str,
    label_nc: int,
    use_instance_map: bool,
    splits: tuple[str, ...],
    palette: Palette | None = None,
) -> tuple[list[dict[str, Any]], str]:
    lay = detect_layout(data) if layout == "auto" else layout
    if lay not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected auto, {', '.join(LAYOUTS)}")
    needs = use_instance_map and lay != "rgb"
    samples: list[SampleFiles] = []
    for split in splits:
        found = find_samples(data, lay, split, needs, problems=[])
        samples += found
        roles = {"label", "image"} | ({"instance"} if needs else set())
        samples += _duplicates(data, lay, split, roles, found)
    if not samples:
        raise InputError(f"{data}: no samples found for splits {', '.join(splits)} (layout {lay})")
    rows = [
        _measure(s, label_nc, palette) for s in progress(samples, desc="validate", unit="sample")
    ]
    return rows, lay


def _frame(rows: list[dict[str, Any]], label_nc: int, extra: set[str]) -> Any:
    import pandas as pd

    flat = []
    for r in rows:
        d = {k: v for k, v in r.items() if k != "histogram" and not k.endswith("_sha1")}
        for k, f in r.get("histogram", {}).items():
            d[f"frac_{k}"] = f
        flat.append(d)
    df = pd.DataFrame(flat)
    wanted = {f"frac_{k}" for k in range(label_nc)} | {c for c in extra if c.startswith("frac_")}
    for c in sorted(wanted - set(df.columns)):
        df[c] = 0.0
    for c in [c for c in df.columns if c.startswith("frac_")]:  # a class absent is 0 %
        df[c] = df[c].fillna(0.0)
    for role in _ROLES:  # columns the suite may name even when no file of a role exists
        for c in ("path", "mode", "width", "height", "bytes"):
            if f"{role}_{c}" not in df.columns:
                df[f"{role}_{c}"] = None
    for c in (
        "instance_label_mismatch",
        "label_max",
        "read_error",
        "instance_bits",
        "label_unknown_colours",
    ):
        if c not in df.columns:
            df[c] = None
    return df


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Great Expectations logs hundreds of INFO lines at import and run: keep them to
    warnings unless debug logging (``pix2pixhd -v``) is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    names = ["great_expectations"] + [
        n for n in logging.root.manager.loggerDict if n.startswith("great_expectations.")
    ]
    loggers = [logging.getLogger(n) for n in names]  # some set their own level at import
    old = [g.level for g in loggers]
    for g in loggers:
        g.setLevel(max(g.level, logging.WARNING))
    try:
        yield
    finally:
        for g, level in zip(loggers, old, strict=True):
            g.setLevel(level)


def run_suite(df: Any, suite: dict[str, Any], source: str) -> tuple[Any, dict[str, Any]]:
    """Validate the manifest frame with the suite; (result object, result as JSON dict)."""
    with _quiet_gx():
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (
            ctx.data_sources.add_pandas("manifest")
            .add_dataframe_asset("samples")
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": df})
        )
        # Batch.validate: the suite need not be saved in the context's stores (faster)
        result = batch.validate(contract.gx_suite(suite, source), result_format="COMPLETE")
        # through JSON: numpy scalars in observed values become plain numbers
        return result, json.loads(json.dumps(result.to_json_dict(), default=str))


def data_docs(result_json: dict[str, Any]) -> str:
    """The validation result rendered by Great Expectations' Data Docs renderer."""
    with _quiet_gx():
        from great_expectations.core.expectation_validation_result import (
            ExpectationSuiteValidationResultSchema,
        )
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        # from JSON: the renderer cannot format numpy scalars in observed values
        result = ExpectationSuiteValidationResultSchema().load(result_json)
        return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))


def _profile(rows: list[dict[str, Any]], split: str | None) -> dict[str, Any]:
    """Mean per-sample class frequencies and the sizes and modes of a split (all: None)."""
    sel = [r for r in rows if split is None or r["split"] == split]
    classes = sorted({k for r in sel for k in r.get("histogram", {})})
    shares = np.array([[r.get("histogram", {}).get(k, 0.0) for k in classes] for r in sel])
    values = {
        c: sorted({r[c] for r in sel if r.get(c) is not None}, key=str)
        for c in ("label_width", "label_height", "label_mode", "image_mode")
    }
    return {
        "split": split or "all",
        "samples": len(sel),
        "class_frequencies": {
            str(k): round(float(shares[:, i].mean()), 6) for i, k in enumerate(classes)
        },
        "class_std": {str(k): round(float(shares[:, i].std()), 6) for i, k in enumerate(classes)},
        "values": values,
    }


def _write_set(
    out: Path,
    result_json: dict[str, Any],
    html: str | None,
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    failures: list[str],
) -> None:
    """Replace the report set as one: the result JSON (and HTML), the manifest and the
    verdict (on success ``summary.json`` and its numbers in ``metrics.json``, on
    failure ``report.txt`` with the ``failures``); the other verdict of an earlier run
    is removed, so a stale one never stays beside the new set."""
    with StagedFiles(out) as staged:
        write_json(staged.path("great_expectations_result.json"), result_json, indent=2)
        if html is not None:
            write_text(staged.path("great_expectations_result.html"), html)
        if summary is not None:  # success: the summary and its numbers
            write_metrics(staged.path("metrics.json"), summary)
            write_json(staged.path("summary.json"), summary, indent=2)
        else:
            write_text(staged.path("report.txt"), "\n".join(failures) + "\n")
        write_json(staged.path("manifest.json"), rows, indent=1)
        stale = ["report.txt"] if summary is not None else ["summary.json", "metrics.json"]
        for name in stale:
            (out / name).unlink(missing_ok=True)
        staged.commit()


def run(
    data: Path,
    out: Path,
    layout: LayoutOrAuto = "auto",
    label_nc: int = 35,
    use_instance_map: bool = True,
    size_multiple: PositiveInt = 16,
    splits: tuple[str, ...] = ("train", "val"),
    suite: Path | None = None,
    reference: Path | None = None,
    drift_ratio: float = 1.5,
    drift_min_delta: float = 0.01,
    drift_z: float = 3.0,
    min_size: int = 0,
    palette: str | None = None,
    write_suite: Path | None = None,
    html: bool = True,
) -> dict[str, Any]:
    """Check a dataset with the Great Expectations suite (and drift from a training profile).

    Validate ``data`` (see the module docstring). ``suite``: a suite file, else the
    one generated from the arguments; ``write_suite``: save that suite there first.

    Args:
        data: the dataset root.
        out: the report directory (``summary.json``, ``manifest.json``, the result
            JSON/HTML; on failure ``report.txt`` instead of ``summary.json``).
        layout: the dataset layout (``auto``: detected).
        label_nc: label ids allowed (0: RGB labels).
        use_instance_map: instance maps are required.
        size_multiple: image sides must be multiples of this (the model's).
        splits: the splits to check.
        suite: a suite file (default: generated from these arguments).
        reference: a training profile (a summary.json) to compare with (drift).
        drift_ratio, drift_min_delta, drift_z: the drift thresholds.
        min_size: the smallest image side allowed (crop training).
        palette: colour label maps: the palette file.
        write_suite: write the generated suite here first.
        html: write the Data Docs HTML.
    """
    prepare_out_dir(out)  # writable, before any work
    timings: dict[str, float] = {}
    pal = load_palette(palette) if palette else None
    if suite is not None:  # a bad suite file fails before the files are read
        spec, source = contract.load_suite(suite), str(suite)
    t0 = time.perf_counter()
    rows, lay = build_manifest(data, layout, label_nc, use_instance_map, tuple(splits), pal)
    timings["read_files"] = time.perf_counter() - t0
    needs = use_instance_map and lay != "rgb"
    if suite is None:
        spec = contract.default_suite(
            label_nc, needs, size_multiple, splits, min_size, pal is not None
        )
        source = "default suite"
    if write_suite is not None:
        contract.write_suite(spec, write_suite)
    ref = None
    if reference is not None:
        try:
            ref = json.loads(Path(reference).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"--reference {reference}: cannot read ({exc})") from None
        spec = {
            **spec,
            "expectations": spec["expectations"]
            + contract.drift_expectations(
                ref, label_nc, drift_ratio, drift_min_delta, drift_z, len(rows)
            ),
        }
    columns = {e["kwargs"].get("column", "") for e in spec["expectations"]}
    df = _frame(rows, label_nc, columns)
    t1 = time.perf_counter()
    with _quiet_gx():
        import great_expectations  # noqa: F401  (timed apart: a fixed cost per process)
    timings["gx_import"] = time.perf_counter() - t1
    t2, c2 = time.perf_counter(), time.process_time()
    _, result_json = run_suite(df, spec, source)
    timings["gx_validate"] = time.perf_counter() - t2
    timings["gx_validate_cpu"] = time.process_time() - c2
    t3, c3 = time.perf_counter(), time.process_time()
    page = data_docs(result_json) if html else None
    timings["gx_data_docs"] = time.perf_counter() - t3
    timings["gx_data_docs_cpu"] = time.process_time() - c3
    lines = contract.failures(result_json, rows, str(data))
    if not result_json.get("success"):
        _write_set(out, result_json, page, rows, None, lines)
        shown = "\n  ".join(lines[:20])
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        if contract.is_drift(result_json):
            raise DriftDetected(
                f"{data}: drift from the training profile {reference} "
                f"(report: {out / 'report.txt'}):\n  {shown}{more}"
            )
        raise ValidationFailed(
            f"{data}: {len(lines)} problem(s) in {len(rows)} samples "
            f"(report: {out / 'report.txt'}):\n  {shown}{more}"
        )
    hist: dict[int, int] = {}
    for row in rows:
        for i in row.get("histogram", {}):
            hist[i] = hist.get(i, 0) + 1
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        digest.update(row["key"].encode())
        for role in _ROLES:
            digest.update(str(row.get(f"{role}_sha1", "")).encode())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    train = "train" if "train" in counts else None
    summary = {
        "data": str(data),
        "suite": source,
        "counts": counts,
        "samples": len(rows),
        "images_per_class": {str(k): v for k, v in sorted(hist.items())},
        "instances": sum(r.get("instance_count", 0) for r in rows),
        "profile": _profile(rows, train),  # what --reference compares new data with
        "dataset_hash": digest.hexdigest(),
        "expectations": len(spec["expectations"]),
    }
    if ref is not None:
        summary["reference"] = str(reference)
    _write_set(out, result_json, page, rows, summary, [])
    timings = {k: round(v, 3) for k, v in timings.items()}
    log.info(
        "validated %d samples against %d expectations: ok (hash %s); read %.2f s, "
        "Great Expectations import %.2f s, validation %.2f s, Data Docs %.2f s",
        len(rows),
        len(spec["expectations"]),
        summary["dataset_hash"][:12],
        timings["read_files"],
        timings["gx_import"],
        timings["gx_validate"],
        timings["gx_data_docs"],
    )
    return {**summary, "timings_s": timings}
