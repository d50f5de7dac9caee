"""Container tests: the project images built here, run by the local Docker engine.

Not part of ``pytest tests`` (``norecursedirs`` in pyproject.toml): ``make test-containers``
runs them. The session starts the engine when it can (infra/docker/engine.sh) and builds
the images (infra/docker/build-images.sh: cached layers, only changed code rebuilt);
without an engine every test is skipped with the one-line reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("IMAGE_TAG", "local")
CPU_IMAGE = f"pix2pixhd-cpu:{TAG}"
CUDA_IMAGE = f"pix2pixhd-cuda:{TAG}"


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    engine = subprocess.run(
        [str(ROOT / "infra/docker/engine.sh")], capture_output=True, text=True, timeout=300
    )
    if engine.returncode != 0:
        reason = (engine.stderr.strip().splitlines() or ["engine.sh failed"])[-1]
        pytest.skip(f"no container engine: {reason}")
    if os.environ.get("PIX2PIXHD_SKIP_IMAGE_BUILD") != "1":  # make test-containers built them
        env = {**os.environ, "PYTHON": sys.executable}
        subprocess.run([str(ROOT / "infra/docker/build-images.sh")], check=True, env=env)
    return {"cpu": CPU_IMAGE, "cuda": CUDA_IMAGE}


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A host directory the image's user can write (mounted at the same path)."""
    from pipelines.containers import container_user

    d = tmp_path / "shared"
    container_user(d)
    return d
