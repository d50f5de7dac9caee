"""Is a rerun the same result? Each score of two evaluate ``metrics.json`` files judged
against the measured reproducibility band.

The band (``bench/band.py``, committed as ``docs/band.json``) holds, for every score,
the spread of the demo's scores over training seeds and CPUs: two runs of one
configuration differ by up to that much without any change. A difference is a real
change only when it is larger than the band's tolerance (the largest difference seen
between the band's runs, or two standard deviations of them if that is larger) and
larger than the bootstrap interval's half width where the files hold one.

    pix2pixhd metrics compare --old OLD/metrics.json --new data/evaluate/metrics.json

``dvc metrics diff`` lists the numbers; this command says which differences matter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from model.errors import Pix2PixHDError
from model.fileio import read_json

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BAND = ROOT / "docs" / "band.json"


class RealChange(Pix2PixHDError):
    """A score moved beyond the band: a finding, exit 3 (as drift)."""

    exit_code = 3


def _flat(tree: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}{i}."))
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        out[prefix[:-1]] = float(tree)
    return out


def tolerances(band: dict[str, Any]) -> dict[str, float]:
    """Per score: the largest difference between two band runs, or two standard
    deviations if larger (``band["runs"]``: the metrics.json of each run)."""
    runs = [_flat(r) for r in band.get("runs", [])]
    keys = set().union(*runs) if runs else set()
    out = {}
    for key in keys:
        vals = [r[key] for r in runs if key in r and math.isfinite(r[key])]
        if len(vals) < 2:
            continue
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        out[key] = max(max(vals) - min(vals), 2 * sd)
    return out


def run(old: Path, new: Path, band: Path = DEFAULT_BAND, strict: bool = False) -> dict[str, Any]:
    """Judge every score of ``new`` against ``old`` and the band.

    Args:
        old: the metrics.json of the reference run (e.g. the committed one).
        new: the metrics.json of the rerun.
        band: the reproducibility band (default docs/band.json, written by
            ``bench/band.py --report``).
        strict: exit 3 when a score moved beyond the band (default: only report it).
    """
    a = _flat(read_json(old, "metrics file"))
    b = _flat(read_json(new, "metrics file"))
    tol = tolerances(read_json(band, "band file"))
    rows: dict[str, Any] = {}
    for key in sorted(set(a) & set(b)):
        if "_ci." in key or key.endswith("_std_error") or key == "images":
            continue
        diff = b[key] - a[key]
        limit = tol.get(key)
        ci = [b.get(f"{key}_ci.0"), b.get(f"{key}_ci.1")]
        if None not in ci:
            half = (ci[1] - ci[0]) / 2
            limit = half if limit is None else max(limit, half)
        if limit is None:
            verdict = "no band measured"
        elif abs(diff) <= limit:
            verdict = "within the band"
        else:
            verdict = "a real change"
        rows[key] = {
            "old": a[key],
            "new": b[key],
            "difference": diff,
            "tolerance": limit,
            "verdict": verdict,
        }
    changed = sorted(k for k, r in rows.items() if r["verdict"] == "a real change")
    result = {"same_result": not changed, "changed": changed, "scores": rows, "band": str(band)}
    if strict and changed:
        raise RealChange(
            f"{new}: {', '.join(changed)} moved beyond the reproducibility band of {band}"
        )
    return result
