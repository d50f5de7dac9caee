"""Running the local DAG's tasks in the project images (``pipeline run --runner docker``).

``kfp.local.DockerRunner`` starts one container per task and bind-mounts the pipeline
root at the same path. Here every container also gets:

- the host network (``network_mode="host"``): loopback S3 / MLflow servers are reachable
  and no container is attached to a bridge;
- the working directory set to the pipeline root, so what a step writes relative to its
  working directory (MLflow's default ``mlflow.db`` and ``mlruns/``) outlives the
  container, as the subprocess runner's working directory does;
- the image's unprivileged user (uid 1000) when this process runs as root, which then
  hands it the pipeline root; otherwise this process's own uid:gid, so what the tasks
  write belongs to the user who ran the pipeline;
- the S3, MLflow and pix2pixhd settings of this process's environment (credentials stay
  in the environment: they are not written to the pipeline or a log).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

IMAGE_USER = (1000, 1000)  # the `pix2pixhd` user of infra/docker/Dockerfile.*
DEFAULT_IMAGE = "pix2pixhd-cpu:local"  # what `make images` tags
DEFAULT_GPU_IMAGE = "pix2pixhd-cuda:local"
FORWARDED_ENV_PREFIXES = ("AWS_", "MLFLOW_", "PIX2PIXHD_")


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that configure storage, tracking and the steps."""
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def container_user(pipeline_root: Path, uid: int | None = None, gid: int | None = None) -> str:
    """The ``uid:gid`` the tasks run as; makes ``pipeline_root`` writable for it."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    pipeline_root.mkdir(parents=True, exist_ok=True)  # else the engine creates it, root-owned
    if uid != 0:
        return f"{uid}:{gid}"
    os.chown(pipeline_root, *IMAGE_USER)
    return f"{IMAGE_USER[0]}:{IMAGE_USER[1]}"


def check_images(images: list[str]) -> None:
    """One clear line when the engine does not answer or an image is not built here
    (kfp would otherwise try to pull it from a registry)."""
    import docker

    from model.errors import Pix2PixHDError

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # no socket, permission, engine down
        raise Pix2PixHDError(
            f"no Docker engine answers ({type(exc).__name__}): start one "
            "(infra/docker/engine.sh) or use --runner subprocess"
        ) from None
    try:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                raise Pix2PixHDError(
                    f"image {image} is not built here: run `make images` (or pass --image)"
                ) from None
    finally:
        client.close()


DOCKER_SOCKET = "/var/run/docker.sock"


def docker_runner(pipeline_root: Path, images: list[str], engine_access: bool = False) -> Any:
    """A ``kfp.local.DockerRunner`` set up as described in the module docstring.

    ``engine_access``: the tasks also get the engine's socket (and its group), so that a
    training task can start its nodes as sibling containers (``pipelines.local_nodes``);
    that is root on this machine for the task: only for local multi-node runs."""
    from kfp import local

    check_images(images)
    extra: dict[str, Any] = {}
    if engine_access:
        import docker

        extra["mounts"] = [docker.types.Mount(DOCKER_SOCKET, DOCKER_SOCKET, type="bind")]
        extra["group_add"] = [str(os.stat(DOCKER_SOCKET).st_gid)]
    return local.DockerRunner(
        network_mode="host",
        user=container_user(pipeline_root),
        working_dir=str(pipeline_root),
        environment=forwarded_env(os.environ),
        **extra,
    )
