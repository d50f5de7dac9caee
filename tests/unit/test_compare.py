"""A rerun judged against the reproducibility band (issue 24, outcome 5)."""

from __future__ import annotations

import json

import pytest

from components.compare import run, tolerances
from pix2pixhd.cli import main


def _metrics(miou: float, kid: float, ci: list[float] | None = None) -> dict:
    gen = {"mean_iou": miou, "pixel_accuracy": 0.88, "kid_seg": kid}
    if ci:
        gen["mean_iou_ci"] = ci
    return {"generated": gen, "real": {"mean_iou": 0.326}, "images": 40}


@pytest.fixture
def files(tmp_path):
    band = {"runs": [_metrics(0.310, 0.0033), _metrics(0.322, 0.0118), _metrics(0.316, 0.006)]}
    paths = {}
    for name, data in {
        "band": band,
        "old": _metrics(0.310, 0.0033),
        "near": _metrics(0.321, 0.0100),  # a seed's worth of difference
        "far": _metrics(0.360, 0.0040),  # more than any seed or CPU moved it
    }.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    return paths


def test_tolerance_is_the_widest_spread_or_two_sd():
    tol = tolerances({"runs": [_metrics(0.30, 0.0), _metrics(0.31, 0.0), _metrics(0.32, 0.0)]})
    assert tol["generated.mean_iou"] == pytest.approx(0.02)  # range 0.02 = 2 sd (sd 0.01)
    assert tol["generated.kid_seg"] == 0.0


def test_within_the_band_is_the_same_result(files):
    out = run(files["old"], files["near"], files["band"])
    assert out["same_result"] and out["scores"]["generated.mean_iou"]["verdict"] == (
        "within the band"
    )


def test_beyond_the_band_is_a_real_change_and_strict_exits_3(files, capsys):
    out = run(files["old"], files["far"], files["band"])
    assert out["changed"] == ["generated.mean_iou"]
    argv = ["metrics", "compare", "--old", str(files["old"]), "--new", str(files["far"])]
    assert main([*argv, "--band", str(files["band"]), "--strict"]) == 3
    assert "generated.mean_iou" in capsys.readouterr().err


def test_a_wide_bootstrap_interval_widens_the_tolerance(files, tmp_path):
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps(_metrics(0.360, 0.0040, ci=[0.30, 0.42])))
    assert run(files["old"], wide, files["band"])["same_result"]
