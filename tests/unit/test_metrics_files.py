"""Metrics files hold numbers only; the summary beside them keeps paths, ids and text."""

from __future__ import annotations

import json

from model.fileio import numbers_only, write_metrics


def test_numbers_are_kept_at_every_level_and_nothing_else():
    summary = {
        "iterations": 36,
        "seconds": 1.5,
        "stage": "global",
        "promoted": True,  # a flag, not a number
        "image_size": [32, 16],
        "final_losses": {"G_total": 2.0, "note": "x"},
        "registered": {"name": "m", "version": "1"},
        "champion_score_before": None,
    }
    expected = {"iterations": 36, "seconds": 1.5, "final_losses": {"G_total": 2.0}}
    assert numbers_only(summary) == expected


def test_write_metrics_writes_the_numbers(tmp_path):
    path = tmp_path / "metrics.json"
    assert write_metrics(path, {"a": 1, "run_id": "r", "b": {"c": 0.5}}) == {
        "a": 1,
        "b": {"c": 0.5},
    }
    assert json.loads(path.read_text()) == {"a": 1, "b": {"c": 0.5}}
