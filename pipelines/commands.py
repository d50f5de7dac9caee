"""The ``pix2pixhd pipeline`` commands (compile, run --local, submit, dvc) as plain
functions whose parameters are the command's options (``pix2pixhd.cli`` derives them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from components.signature import PositiveInt
from model.errors import ConfigError
from pipelines.settings import ClusterSettings

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
        try:
            out[name.strip()] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            raise ConfigError(f"--arg {item[:80]!r}: the value is not valid YAML") from None
    return out


def _settings(cluster: ClusterSettings | dict[str, Any] | None) -> ClusterSettings:
    if isinstance(cluster, ClusterSettings):
        return cluster
    return ClusterSettings(**{k: v for k, v in (cluster or {}).items() if v is not None})


def compile_ir(
    out: Path = Path("pipeline.yaml"),
    params_file: Path | None = None,
    cluster: ClusterSettings | None = None,
) -> dict[str, Any]:
    """Write the kfp v2 IR YAML (the pipeline and its kfp-kubernetes settings) for upload.

    Args:
        out: the YAML file to write.
        params_file: params.yaml compiled in (default: the repo's params.yaml).
        cluster: images, GPUs, nodes, secrets and endpoints of the cluster.
    """
    from pipelines import dag

    path = dag.compile_pipeline(_params_file(params_file), out, _settings(cluster))
    return {"compiled": str(path)}


def run_local(
    local: bool = False,
    pipeline_root: Path = Path("data/kfp"),
    params_file: Path | None = None,
    arguments: list[str] | None = None,
    runner: Literal["subprocess", "docker"] = "subprocess",
    image: str | None = None,
    gpu_image: str | None = None,
    nodes: PositiveInt = 1,
) -> dict[str, Any]:
    """Run the whole DAG on this machine with kfp.local.

    Args:
        local: required, so that a remote run is never started by accident.
        pipeline_root: where the artifacts go.
        params_file: params.yaml (default: the repo's params.yaml).
        arguments: a pipeline parameter as NAME=VALUE (repeatable); see `pipeline compile`'s
            IR or docs/params.md for the names.
        runner: subprocess: every task in this environment; docker: every task in the
            project image (kfp DockerRunner, host network; `make images`).
        image: --runner docker: the CPU steps' image (pix2pixhd-cpu:local).
        gpu_image: --runner docker: training's image (pix2pixhd-cuda:local).
        nodes: --runner docker: train each stage on this many nodes, each a container
            running the stage's TrainJob command (torchrun, c10d rendezvous, gloo), as
            a multi-node cluster run would.
    """
    from pipelines import dag

    if not local:
        raise ConfigError("pipeline run runs on this machine only: add --local")
    params = _params_file(params_file)
    return dag.run_local(
        params,
        Path(pipeline_root).resolve(),
        parse_arguments(arguments),
        runner=runner,
        image=image,
        gpu_image=gpu_image,
        nodes=nodes,
    )


def submit(
    host: str,
    experiment: str = "pix2pixhd",
    run_name: str | None = None,
    kfp_namespace: str | None = None,
    params_file: Path | None = None,
    arguments: list[str] | None = None,
    cluster: ClusterSettings | None = None,
) -> dict[str, Any]:
    """Submit a run to Kubeflow Pipelines.

    Args:
        host: the KFP API endpoint URL.
        experiment: the KFP experiment.
        run_name: the run's name (default: KFP's).
        kfp_namespace: multi-user Kubeflow: the profile namespace.
        params_file: params.yaml compiled in (default: the repo's params.yaml).
        arguments: a pipeline parameter as NAME=VALUE (repeatable).
        cluster: images, GPUs, nodes, secrets and endpoints of the cluster.
    """
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


def write_dvc(out: Path | None = None, check: bool = False) -> dict[str, Any]:
    """Write dvc.yaml from the step declarations (components/steps.py), or check it.

    Args:
        out: the file to write or check (default: the repo's dvc.yaml).
        check: do not write: exit 1 naming the first difference when the file is stale.
    """
    import yaml

    from components import steps
    from model.errors import Pix2PixHDError

    path = Path(out) if out is not None else ROOT / "dvc.yaml"
    text = steps.dvc_text()
    if check:
        try:
            committed = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read ({str(exc).splitlines()[0][:200]})") from None
        diff = steps.first_difference(yaml.safe_load(text), committed)
        if diff is not None:
            err = Pix2PixHDError(
                f"{path} is stale at {diff}; rewrite it: pix2pixhd pipeline dvc --out {path}"
            )
            err.exit_code = 1  # type: ignore[attr-defined]
            raise err
        return {"checked": str(path), "stale": False}
    from model.fileio import write_text

    write_text(path, text)
    return {"written": str(path), "stages": len(steps.TASKS)}
