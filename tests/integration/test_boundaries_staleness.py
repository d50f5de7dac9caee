"""Boundary maps are up to date by content, not by time stamps (issue 22, class 6): maps
of a re-rendered dataset at another size are made again, those of removed samples go."""

from __future__ import annotations

import os
import shutil

from PIL import Image

from components import boundaries, synth


def test_maps_follow_the_instance_maps_content(tmp_path):
    data, out = tmp_path / "data", tmp_path / "bounds"
    synth.run(data, 3, 1, 64, 32, seed=0)
    assert boundaries.run(data, out, workers=1)["written"] == 4
    assert boundaries.run(data, out, workers=1)["skipped_up_to_date"] == 4
    maps = sorted(out.rglob("*_boundary.png"))
    old = maps[0].stat().st_mtime + 3600
    for m in maps:  # boundary maps that look newer than anything: mtime would skip them
        os.utime(m, (old, old))
    shutil.rmtree(data)
    synth.run(data, 2, 1, 128, 64, seed=1)  # same names, other size; one sample fewer
    result = boundaries.run(data, out, workers=1)
    assert result["written"] == 3 and result["skipped_up_to_date"] == 0
    left = sorted(out.rglob("*_boundary.png"))
    assert len(left) == 3
    assert {Image.open(m).size for m in left} == {(128, 64)}
