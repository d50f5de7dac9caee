"""DVC around the pipeline: the project's default remote is a local directory outside
every clone (a fresh clone sees what another pushed), an S3 remote with ``endpointurl``
pushes and pulls against the loopback S3 server, and dvc.yaml declares each plot once
(loss curves as top-level plots, sample images as image plots)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components import steps

ROOT = Path(__file__).resolve().parents[2]
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(cmd[2:])}: {done.stderr[-2000:]}"
    return done.stdout


def _project(path: Path, env: dict[str, str], config: str) -> Path:
    """A git repository with DVC, the given .dvc/config and one tracked directory."""
    path.mkdir()
    _run(["git", "init", "-q"], path, env)
    _run([*DVC, "init", "-q"], path, env)
    (path / ".dvc" / "config").write_text(config)
    rng = np.random.default_rng(0)
    (path / "data").mkdir()
    for i in range(2):
        img = rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(path / "data" / f"{i}.png")
    _run([*DVC, "add", "-q", "data"], path, env)
    _run(["git", "add", "-A"], path, env)
    _run(["git", "commit", "-q", "-m", "data"], path, env)
    return path


def _git_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GIT_"))}
    env.update(
        HOME=str(home),
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
        GIT_CONFIG_NOSYSTEM="1",
    )
    return env


def _status_cloud(repo: Path, env: dict[str, str]) -> str:
    return _run([*DVC, "status", "--cloud"], repo, env)


def test_default_remote_is_outside_the_repository():
    from configobj import ConfigObj  # DVC's own config reader

    cfg = ConfigObj(str(ROOT / ".dvc" / "config"))
    name = cfg["core"]["remote"]
    url = cfg[f'remote "{name}"']["url"]
    assert "://" not in url and url.startswith("~/"), url  # local, the same for every clone


def test_a_fresh_clone_sees_what_was_pushed_to_the_default_remote(tmp_path):
    """Push from one clone; a second clone's `dvc status --cloud` lists nothing as new
    (nothing is missing from the remote), `dvc pull` restores the data, and then the
    cache and the remote are in sync."""
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = _git_env(tmp_path / "home")  # the remote's ~ is this temporary home
    (tmp_path / "home").mkdir()
    first = _project(tmp_path / "a", env, (ROOT / ".dvc" / "config").read_text())
    assert "new:" in _status_cloud(first, env)  # before the push
    _run([*DVC, "push", "-q"], first, env)
    assert (tmp_path / "home" / ".cache" / "pix2pixhd" / "dvc-remote").is_dir()
    assert "new:" not in _status_cloud(first, env)
    _run(["git", "clone", "-q", str(first), str(tmp_path / "b")], tmp_path, env)
    clone = tmp_path / "b"
    assert "new:" not in _status_cloud(clone, env)
    _run([*DVC, "pull", "-q"], clone, env)
    for i in range(2):
        a, b = (p / "data" / f"{i}.png" for p in (first, clone))
        assert b.read_bytes() == a.read_bytes()
    assert "in sync" in _status_cloud(clone, env)


def test_s3_remote_with_endpointurl_pushes_and_pulls(s3, tmp_path):
    """The S3 remote as data/README.md documents it: `endpointurl` in the config (the
    AWS_ENDPOINT_URL the fixture sets is removed, so only the config points at the
    loopback server), credentials from the environment."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    server, bucket = s3
    (tmp_path / "home").mkdir()
    env = _git_env(tmp_path / "home")
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    env.update(AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    config = (
        "[core]\n    remote = store\n"
        "['remote \"store\"']\n"
        f"    url = s3://{bucket}/pix2pixhd\n    endpointurl = {server}\n"
    )
    first = _project(tmp_path / "a", env, config)
    _run([*DVC, "push", "-q"], first, env)
    from components import storage

    keys = [o["Key"] for o in storage.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith("pix2pixhd/files/md5/") for k in keys)
    _run(["git", "clone", "-q", str(first), str(tmp_path / "b")], tmp_path, env)
    clone = tmp_path / "b"
    assert "new:" not in _status_cloud(clone, env)
    _run([*DVC, "pull", "-q"], clone, env)
    assert (clone / "data" / "1.png").read_bytes() == (first / "data" / "1.png").read_bytes()
    assert "in sync" in _status_cloud(clone, env)


def test_each_plot_is_declared_once():
    """DVC draws a stage's plot entries and the top-level plots: a file in both is drawn
    twice. Loss tables: one top-level plot each (several columns), a plain output of the
    stage; sample images: image plots of their stage, not outputs."""
    doc = steps.dvc_yaml()
    top = {path for p in doc["plots"] for d in p.values() for path in d["y"]}
    stage_plots: list[str] = []
    outs: list[str] = []
    for stage in doc["stages"].values():
        stage_plots += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get("plots", [])]
        outs += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get("outs", [])]
    assert not top & set(stage_plots)
    assert len(stage_plots) == len(set(stage_plots))
    for name in ("train_global", "train_local", "evaluate"):
        assert f"data/{name}/samples.png" in stage_plots
        assert f"data/{name}/samples.png" not in outs
    for name in ("train_global", "train_local"):
        assert f"data/{name}/losses.csv" in top and f"data/{name}/losses.csv" in outs
