"""The data contract: a Great Expectations suite over validate's per-sample manifest.

The suite is a plain JSON file (``data/expectations/pix2pixhd.json``), one entry per
expectation in Great Expectations' own vocabulary::

    {"type": "expect_column_values_to_be_between",
     "kwargs": {"column": "label_max", "min_value": 0, "max_value": 34},
     "meta": {"explain": "label ids outside the dataset's label set"}}

``default_suite`` generates it from the params (label_nc, instance maps, the model's
size multiple, the crop); ``drift_expectations`` adds the checks of a new dataset against
a training profile (``summary.json``): per-class pixel frequency ranges and the sizes and
modes seen in training. ``failures`` turns a validation result into lines that name the
file and the measured value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.errors import InputError
from model.labels import LABELS

#: the manifest's measured columns (one row per sample), as the suite file lists them
MANIFEST_COLUMNS = {
    "key / split / stem": "the sample (split/stem) and its parts",
    "label_path / instance_path / image_path": "the files (null when missing)",
    "read_error": "why a file could not be read (null when all were read)",
    "<role>_mode / _width / _height / _bytes": "PIL mode, size and file size of each file",
    "label_min / label_max / label_classes": "label id range and number of ids present",
    "instance_min / instance_max / instance_bits": "instance id range and bit depth",
    "instance_count": "number of instances (ids >= 1000)",
    "instance_label_mismatch": "pixels whose instance id >= 1000 has id // 1000 != label",
    "image_channels": "photo channels",
    "sizes_agree": "all files of the sample have one size",
    "frac_<id>": "share of the sample's pixels with label id <id>",
    "label_unknown_colours": "colours of a colour label map not in data.palette (null: none)",
}

ROLE_FILE = {"label": "label_path", "instance": "instance_path", "image": "image_path"}
INSTANCE_MODES = ["L", "P", "I;16", "I;16B", "I;16L", "I"]
_NAMES = {lab.id: lab.name for lab in LABELS if lab.id >= 0}


def class_name(k: int, label_nc: int) -> str:
    return _NAMES.get(k, f"class {k}") if label_nc == 35 else f"class {k}"


def _e(kind: str, explain: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"explain": explain}}


def default_suite(
    label_nc: int,
    needs_instances: bool,
    size_multiple: int,
    splits: Sequence[str] = ("train", "val"),
    min_size: int = 0,
    palette: bool = False,
) -> dict[str, Any]:
    """The contract implied by the params. ``min_size``: the smallest side the training
    crop needs on the files themselves (preprocess ``crop`` / ``none``), else 0."""
    smallest = max(2 * size_multiple, min_size)
    ex = [
        _e(
            "expect_column_values_to_be_unique",
            "two samples share a key (duplicate stem)",
            column="key",
        ),
        _e("expect_column_values_to_not_be_null", "sample has no label map", column="label_path"),
        _e("expect_column_values_to_not_be_null", "sample has no photo", column="image_path"),
    ]
    if needs_instances:
        ex.append(
            _e(
                "expect_column_values_to_not_be_null",
                "sample has no instance map",
                column="instance_path",
            )
        )
    ex.append(
        _e(
            "expect_column_values_to_be_null",
            "a file cannot be read as an image",
            column="read_error",
        )
    )
    if label_nc > 0:
        modes = ["L", "P"] + (["RGB", "RGBA"] if palette else [])
        what = "of label ids" + (" or a colour label map (data.palette)" if palette else "")
        ex += [
            _e(
                "expect_column_values_to_be_in_set",
                f"label map is not an 8-bit single-channel image {what}",
                column="label_mode",
                value_set=modes,
            ),
            _e(
                "expect_column_values_to_be_between",
                f"label ids outside [0, {label_nc - 1}] (label_nc={label_nc})",
                column="label_max",
                min_value=0,
                max_value=label_nc - 1,
            ),
        ]
        if palette:
            ex.append(
                _e(
                    "expect_column_values_to_be_null",
                    "colours not in the palette",
                    column="label_unknown_colours",
                )
            )
    else:
        ex.append(
            _e(
                "expect_column_values_to_be_in_set",
                "input image (label_nc 0) is not 8-bit RGB",
                column="label_mode",
                value_set=["RGB"],
            )
        )
    ex.append(
        _e(
            "expect_column_values_to_be_in_set",
            "photo is not 8-bit RGB",
            column="image_mode",
            value_set=["RGB"],
        )
    )
    pairs = [("label", "image")] + ([("label", "instance")] if needs_instances else [])
    for a, b in pairs:
        for dim in ("width", "height"):
            ex.append(
                _e(
                    "expect_column_pair_values_to_be_equal",
                    f"{a} and {b} sizes differ",
                    column_A=f"{a}_{dim}",
                    column_B=f"{b}_{dim}",
                    ignore_row_if="either_value_is_missing",
                )
            )
    if needs_instances:
        ex += [
            _e(
                "expect_column_values_to_be_in_set",
                "instance map is not a single-channel 8/16/32-bit integer image",
                column="instance_mode",
                value_set=INSTANCE_MODES,
            ),
            _e(
                "expect_column_values_to_be_between",
                "pixels whose instance id >= 1000 has id // 1000 different from the label",
                column="instance_label_mismatch",
                min_value=0,
                max_value=0,
            ),
        ]
    for dim in ("width", "height"):
        ex.append(
            _e(
                "expect_column_values_to_be_between",
                f"{dim} smaller than {smallest} (the model's minimum / the training crop)",
                column=f"label_{dim}",
                min_value=smallest,
            )
        )
    ex.append(
        _e(
            "expect_column_values_to_be_in_set",
            "sample of an unexpected split",
            column="split",
            value_set=list(splits),
        )
    )
    for split in splits:
        ex.append(
            _e(
                "expect_table_row_count_to_be_between",
                f"too few '{split}' samples",
                min_value=1 if split == "train" else 0,
                row_condition=f'split=="{split}"',
                condition_parser="pandas",
            )
        )
    return {
        "name": "pix2pixhd_dataset",
        "meta": {
            "generated_from": {
                "label_nc": label_nc,
                "instance_maps": needs_instances,
                "size_multiple": size_multiple,
                "min_size": min_size,
                "splits": list(splits),
                "palette": palette,
            },
            "columns": MANIFEST_COLUMNS,
        },
        "expectations": ex,
    }


def drift_expectations(
    reference: dict[str, Any],
    label_nc: int,
    ratio: float,
    min_delta: float,
    z: float = 3.0,
    samples: int = 1,
) -> list[dict[str, Any]]:
    """Class frequencies of a dataset of ``samples`` samples: the mean pixel share of a
    class with training frequency f (per-sample standard deviation sd) must lie within
    [f / ratio, f * ratio], widened to f +- min_delta (rare classes) and to
    f +- z * sd / sqrt(samples) (what sampling alone moves); and only the sizes and modes
    seen in training."""
    profile = reference.get("profile")
    if not isinstance(profile, dict) or "class_frequencies" not in profile:
        raise InputError(
            "--reference: no training profile in it (expected validate's summary.json, "
            "with a 'profile' section)"
        )
    ex = []
    std = profile.get("class_std", {})
    for k, f in sorted(profile["class_frequencies"].items(), key=lambda kv: int(kv[0])):
        f = float(f)
        slack = max(min_delta, z * float(std.get(k, 0.0)) / max(1, samples) ** 0.5)
        lo, hi = min(f / ratio, f - slack), max(f * ratio, f + slack)
        name = class_name(int(k), label_nc)
        ex.append(
            {
                "type": "expect_column_mean_to_be_between",
                "kwargs": {
                    "column": f"frac_{int(k)}",
                    "min_value": round(max(0.0, lo), 6),
                    "max_value": round(min(1.0, hi), 6),
                },
                "meta": {
                    "explain": f"drift: pixel frequency of {name} differs from training",
                    "drift": True,
                    "class": name,
                    "reference_frequency": round(f, 6),
                },
            }
        )
    for column in ("label_width", "label_height", "label_mode", "image_mode"):
        seen = profile.get("values", {}).get(column)
        if seen:
            ex.append(
                {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": column, "value_set": seen},
                    "meta": {"explain": f"drift: {column} not seen in training", "drift": True},
                }
            )
    return ex


def load_suite(path: Path) -> dict[str, Any]:
    try:
        suite = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"--suite {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"--suite {path}: not valid JSON ({exc})") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise InputError(f"--suite {path}: expected an object with an 'expectations' list")
    for i, e in enumerate(suite["expectations"]):
        if not isinstance(e, dict) or "type" not in e or not isinstance(e.get("kwargs"), dict):
            raise InputError(f"--suite {path}: expectation {i}: expected 'type' and 'kwargs'")
    return suite


def write_suite(suite: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(suite, indent=2) + "\n")
    tmp.replace(path)
    return path


def gx_suite(suite: dict[str, Any], source: str = "suite") -> Any:
    """The Great Expectations ExpectationSuite of a suite dictionary."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for i, e in enumerate(suite["expectations"]):
        try:
            cfg = ExpectationConfiguration(
                type=e["type"], kwargs=e["kwargs"], meta={**e.get("meta", {}), "index": i}
            )
            expectations.append(cfg.to_domain_obj())
        except Exception as exc:  # unknown type, bad kwargs: one line naming the entry
            raise InputError(
                f"{source}: expectation {i} ({e['type']}): {str(exc).splitlines()[0][:200]}"
            ) from None
    return gx.ExpectationSuite(
        name=suite.get("name", "pix2pixhd_dataset"), expectations=expectations
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return repr(v) if isinstance(v, str) else str(v)


def _expected(kind: str, kw: dict[str, Any]) -> str:
    if kind.endswith("_to_be_in_set"):
        return f"one of {kw.get('value_set')}"
    if kind.endswith("_to_be_between"):
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if lo is not None and hi is not None:
            return f"{_fmt(lo)}" if lo == hi else f"in [{_fmt(lo)}, {_fmt(hi)}]"
        return f">= {_fmt(lo)}" if lo is not None else f"<= {_fmt(hi)}"
    if kind == "expect_column_pair_values_to_be_equal":
        return f"{kw.get('column_A')} == {kw.get('column_B')}"
    if kind.endswith("_to_be_unique"):
        return "unique"
    if kind.endswith("_to_not_be_null"):
        return "present"
    if kind.endswith("_to_be_null"):
        return "none"
    return kind


def _entry(r: dict[str, Any], suite: dict[str, Any] | None) -> tuple[str, dict, dict]:
    """A result's expectation in the suite's own words (type, kwargs, meta): the suite
    entry its ``meta.index`` names (``gx_suite`` sets it), else what the result carries
    less Great Expectations' internal forms (a row condition as a filter object)."""
    cfg = r.get("expectation_config", {})
    index = cfg.get("meta", {}).get("index")
    entries = (suite or {}).get("expectations", [])
    if isinstance(index, int) and 0 <= index < len(entries):
        e = entries[index]
        return e["type"], e["kwargs"], e.get("meta", {})
    kw = {k: v for k, v in cfg.get("kwargs", {}).items() if k != "batch_id"}
    if not isinstance(kw.get("row_condition"), str | None):
        kw.pop("row_condition")
    return cfg.get("type", ""), kw, cfg.get("meta", {})


def failures(
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    data: str,
    suite: dict[str, Any] | None = None,
) -> list[str]:
    """One line per failing sample (its file, the column and measured value, what was
    expected and why) or table check (the dataset, the measured value), worded from the
    ``suite`` entries rather than from Great Expectations' result text."""
    lines: list[str] = []
    for r in result.get("results", []):
        if r.get("success"):
            continue
        kind, kw, meta = _entry(r, suite)
        why = meta.get("explain", kind)
        res = r.get("result", {})
        exc = r.get("exception_info", {})
        if exc.get("raised_exception"):
            msg = str(exc.get("exception_message", "")).splitlines()[0][:200]
            what = kw.get("column", kw.get("column_A", "the table"))
            lines.append(f"{data}: cannot check {what} ({why}): {msg}")
            continue
        expected = _expected(kind, kw)
        idx = res.get("unexpected_index_list")
        if idx is not None:
            for i in idx:
                i = i if isinstance(i, int) else int(next(iter(i.values())))
                row = rows[i]
                if "column_A" in kw:
                    a, b = kw["column_A"], kw["column_B"]
                    what = f"{a} = {_fmt(row.get(a))}, {b} = {_fmt(row.get(b))}"
                else:
                    col = kw.get("column", "")
                    what = f"{col} = {_fmt(row.get(col))}"
                    if kind.endswith("_to_not_be_null"):
                        what = f"sample '{row['stem']}' ({row['split']}): {col} missing"
                    elif kind.endswith("_to_be_null"):
                        what = f"{row.get(col)}"
                col = kw.get("column", kw.get("column_A", ""))
                role = col.split("_")[0]
                path = row.get(ROLE_FILE.get(role, "")) or next(
                    (row[c] for c in ROLE_FILE.values() if row.get(c)), row["key"]
                )
                lines.append(f"{path}: {what}, expected {expected} ({why})")
            continue
        observed = res.get("observed_value")
        label = kw.get("column", "rows")
        if meta.get("drift") and "reference_frequency" in meta:
            lines.append(
                f"{data}: drift: {meta.get('class')} ({label}) frequency {_fmt(observed)}, "
                f"training {_fmt(meta['reference_frequency'])}, expected {expected}"
            )
            continue
        where = f" where {kw['row_condition']}" if kw.get("row_condition") else ""
        if kind == "expect_table_row_count_to_be_between":
            lines.append(f"{data}: {_fmt(observed)} samples{where}, expected {expected} ({why})")
            continue
        if kind.endswith("_to_be_in_set") and res.get("partial_unexpected_list") is not None:
            observed = sorted({str(v) for v in res.get("partial_unexpected_list", [])})
        lines.append(f"{data}: {label}{where} = {_fmt(observed)}, expected {expected} ({why})")
    return lines


def is_drift(result: dict[str, Any]) -> bool:
    """True when every failing expectation is a drift check."""
    bad = [r for r in result.get("results", []) if not r.get("success")]
    return bool(bad) and all(
        r.get("expectation_config", {}).get("meta", {}).get("drift") for r in bad
    )
