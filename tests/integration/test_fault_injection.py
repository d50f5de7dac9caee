"""Fault injection with real processes and devices (issue 11): SIGKILL during checkpoint
writes, a full file system (a small tmpfs; needs root and mount, skipped with the reason
otherwise), and an MLflow server killed in the middle of a run."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.tracking import Tracker
from model.checkpoint import load_checkpoint, save_checkpoint
from model.errors import InputError
from model.fileio import TMP_SUFFIX, prepare_out_dir, write_json
from model.image_io import write_png
from pix2pixhd.cli import main

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys, torch
from model.checkpoint import save_checkpoint
path, step = sys.argv[1], 0
print("ready", flush=True)
while True:
    step += 1
    g = {f"w{i}": torch.full((256, 1024), float(step)) for i in range(4)}  # 4 MiB
    save_checkpoint(path, {"G": g, "step": step})
"""


def test_sigkill_during_checkpoint_writes_never_leaves_a_bad_file(tmp_path):
    path = tmp_path / "latest.pth"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    interrupted = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env
        )
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.5))  # somewhere in a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += any(tmp_path.glob(f".*{TMP_SUFFIX}"))
        ckpt = load_checkpoint(path)  # whole, hash verified
        assert all(bool((t == ckpt["step"]).all()) for t in ckpt["G"].values())
        prepare_out_dir(tmp_path)  # the next start removes the killed writer's temporary
        assert not list(tmp_path.glob(f".*{TMP_SUFFIX}"))
    logging.getLogger(__name__).info("%d of 3 kills landed inside a write", interrupted)


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs: a full disk after half a megabyte."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _big_checkpoint(path):
    save_checkpoint(path, {"G": {"w": torch.rand(512, 1024)}})  # 2 MiB


def _big_png(path):
    write_png(path, np.random.default_rng(0).integers(0, 255, (600, 600, 3), np.uint8))


def _big_json(path):
    write_json(path, {"x": list(range(200_000))})


@pytest.mark.parametrize("writer", [_big_checkpoint, _big_png, _big_json])
def test_full_disk_is_one_line_and_keeps_the_old_file(writer, small_fs):
    target = small_fs / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(InputError, match="out.bin: cannot write: no space left on the device"):
        writer(target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in small_fs.iterdir()) == ["out.bin"]


def test_full_disk_in_a_step_exits_2_with_one_line(small_fs, capsys):
    code = main(["data", "synth", "--out", str(small_fs / "d"), "--num-train", "40"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]  # not progress bars
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "no space left on the device" in lines[0]


def test_read_only_out_found_before_work(small_fs, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    start = time.perf_counter()
    code = main(["data", "synth", "--out", str(small_fs / "d"), "--num-train", "1000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "read-only file system" in err and len(err.splitlines()) == 1, err
    assert time.perf_counter() - start < 5  # refused before rendering 1000 scenes


@pytest.fixture
def _restore_mlflow_uri():
    import mlflow

    yield
    mlflow.set_tracking_uri("")


def test_mlflow_server_killed_mid_run(start_mlflow_server, caplog, _restore_mlflow_uri):
    server = start_mlflow_server("killed-mid-run")
    began = time.perf_counter()
    tracker = Tracker(tracking_uri=server.url)
    tracker.start("fault-injection", "run", {"stage": "test"})
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    assert tracker.run_id is not None and tracker.failure is None
    logging.getLogger(__name__).info("3 logged steps: %.1f s", time.perf_counter() - began)
    server.kill()
    caplog.set_level(logging.WARNING, logger="components.tracking")
    start = time.perf_counter()
    for step in range(3, 200):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    tracker.log_artifact(Path(__file__))
    tracker.end()
    elapsed = time.perf_counter() - start
    assert tracker.failure is not None
    assert len([r for r in caplog.records if "tracking is off" in r.getMessage()]) == 1
    assert elapsed < 20, f"{elapsed:.1f} s after the server died"  # one request timeout
