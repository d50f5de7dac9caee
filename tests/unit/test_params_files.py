"""params.quality.yaml (issue 17): the longer run is a params change. It loads, and it
names every key params.yaml names (a key it left out would silently fall back to the
paper's Cityscapes default, e.g. 2048x1024 images)."""

from __future__ import annotations

from pathlib import Path

import yaml

from components.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def test_quality_params_name_every_demo_key_and_train_longer():
    demo = yaml.safe_load((ROOT / "params.yaml").read_text())
    quality = yaml.safe_load((ROOT / "params.quality.yaml").read_text())
    assert _keys(demo) <= _keys(quality)
    d, q = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.quality.yaml")
    assert (q.data.width, q.data.height, q.model) == (d.data.width, d.data.height, d.model)
    assert q.train_global.epochs > d.train_global.epochs
    assert q.train_local.epochs > d.train_local.epochs
