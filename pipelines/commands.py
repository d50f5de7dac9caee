"""The ``pix2pixhd pipeline`` commands (compile, run --local, submit) as plain functions
whose parameters are the command's options; ``components.cli`` dispatches to them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _params_file(params_file: Path | None) -> Path:
    path = Path(params_file) if params_file is not None else ROOT / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    return path


def parse_arguments(items: list[str] | None) -> dict[str, Any]:
    """``NAME=VALUE`` strings (values read as YAML) -> pipeline arguments."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--arg {item!r}: expected NAME=VALUE, e.g. --arg niter_global=10")
        name, text = item.split("=", 1)
        out[name.strip()] = yaml.safe_load(text) if text else ""
    return out


def _settings(cluster: dict[str, Any]) -> Any:
    """``ClusterSettings`` from the CLI's cluster options (None: the field's default)."""
    from pipelines.dag import ClusterSettings

    return ClusterSettings(**{k: v for k, v in cluster.items() if v is not None})


def compile_ir(
    out: Path = Path("pipeline.yaml"),
    params_file: Path | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """Write the kfp IR YAML for ``params_file`` (default: the repo's params.yaml) and
    ``cluster`` (``ClusterSettings`` fields: image, gpu_image, gpus, num_nodes, engine,
    namespace, s3_secret, s3_endpoint, mlflow_uri; None keeps the default)."""
    from pipelines import dag

    path = dag.compile_pipeline(_params_file(params_file), out, _settings(cluster))
    return {"compiled": str(path)}


def run_local(
    local: bool = True,
    pipeline_root: Path = Path("data/kfp"),
    params_file: Path | None = None,
    arguments: list[str] | None = None,
    runner: str = "subprocess",
    image: str | None = None,
    gpu_image: str | None = None,
) -> dict[str, Any]:
    """Run the whole DAG on this machine with kfp.local (``local``: a required flag so
    that a remote run is never started by accident; ``runner``: subprocess, or docker
    with the project ``image`` and ``gpu_image``, see pipelines.containers)."""
    from pipelines import dag

    params = _params_file(params_file)
    return dag.run_local(
        params,
        Path(pipeline_root).resolve(),
        parse_arguments(arguments),
        runner=runner,
        image=image,
        gpu_image=gpu_image,
    )


def submit(
    host: str,
    experiment: str = "pix2pixhd",
    run_name: str | None = None,
    kfp_namespace: str | None = None,
    params_file: Path | None = None,
    arguments: list[str] | None = None,
    **cluster: Any,
) -> dict[str, Any]:
    """Submit a run to the Kubeflow Pipelines endpoint ``host`` (``arguments``: pipeline
    parameters as NAME=VALUE; ``cluster``: as for :func:`compile_ir`)."""
    from pipelines import dag

    params = _params_file(params_file)
    return dag.submit(
        host,
        params,
        parse_arguments(arguments),
        experiment=experiment,
        run_name=run_name,
        settings=_settings(cluster),
        namespace=kfp_namespace,
    )
