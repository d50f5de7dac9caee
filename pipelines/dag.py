"""The Kubeflow DAG: the steps of ``dvc.yaml`` as kfp lightweight components, wired by
their artifacts, with GPU, node and secret settings on the tasks that need them.

``build_pipeline(settings)`` returns the pipeline function; its typed parameters (the
main params: dataset URI, sizes, epochs, width, promotion threshold) default to the
values of the params.yaml it was compiled with, which also travels whole as the
``params_yaml`` constant. ``overrides`` (``section.key=value`` strings) reach everything
else without recompiling. Which params key each typed parameter sets is defined once,
in ``pipelines.parameters.PARAM_KEYS``.
"""

import inspect
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.params import params_from_text
from pipelines import steps
from pipelines.parameters import PARAM_KEYS, pipeline_defaults

ROOT = Path(__file__).resolve().parents[1]
GPU_TASKS = ("train-global", "train-local")


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time settings: images, accelerators, secrets, multi-node training."""

    image: str = ""  # required to compile/submit: a digest or a release tag, not :latest
    gpu_image: str = ""
    accelerator: str = "nvidia.com/gpu"
    gpus: int = 1  # per training pod (or per node with num_nodes > 1)
    gpu_node_selector: Mapping[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    s3_secret: str = "pix2pixhd-s3"  # keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    s3_endpoint: str = ""  # AWS_ENDPOINT_URL on every task (MinIO / Ceph); empty: AWS
    mlflow_uri: str = ""  # MLFLOW_TRACKING_URI on every task; empty: the tracking_uri param
    shm_size: str = "16Gi"
    num_nodes: int = 1  # > 1: training tasks launch a TrainJob / PyTorchJob and wait
    engine: str = "trainjob"  # or pytorchjob (Training Operator v1)
    namespace: str = "kubeflow"

    def distributed(self) -> str:
        if self.num_nodes <= 1:
            return json.dumps({"num_nodes": 1, "gpus_per_node": self.gpus})
        return json.dumps(
            {
                "num_nodes": self.num_nodes,
                "gpus_per_node": self.gpus,
                "engine": self.engine,
                "image": self.gpu_image,
                "namespace": self.namespace,
                "secret": self.s3_secret,
            }
        )


def _components(settings: ClusterSettings) -> dict[str, Any]:
    from kfp import dsl

    def make(fn: Callable[..., None], image: str) -> Any:
        return dsl.component(fn, base_image=image, install_kfp_package=False)

    names = ["synth", "validate", "drift", "boundaries", "features", "segmenter", "evaluate"]
    out = {n: make(getattr(steps, n), settings.image) for n in [*names, "export", "promote"]}
    train_image = settings.gpu_image if settings.num_nodes <= 1 else settings.image
    for stage in ("global", "local"):  # one step function, a component (task) per stage
        component = make(steps.train, train_image)
        component.component_spec.name = f"train-{stage}"
        out[f"train_{stage}"] = component
    return out


def _configure(task: Any, settings: ClusterSettings, gpu: bool) -> Any:
    from kfp import kubernetes

    if settings.s3_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=settings.s3_secret,
            secret_key_to_env={
                "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            },
        )
    if settings.s3_endpoint:
        task.set_env_variable("AWS_ENDPOINT_URL", settings.s3_endpoint)
        task.set_env_variable("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint)
    if settings.mlflow_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", settings.mlflow_uri)
    if gpu:
        task.set_accelerator_type(settings.accelerator).set_accelerator_limit(settings.gpus)
        task.set_cpu_request("4").set_memory_request("32G")
        for key, value in settings.gpu_node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        kubernetes.add_toleration(
            task, key=settings.accelerator, operator="Exists", effect="NoSchedule"
        )
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=settings.shm_size,
        )
    return task


LOCAL_IMAGE = "pix2pixhd-local:unused"  # kfp.local's SubprocessRunner runs no image
NO_CACHE = ("synth", "evaluate", "export", "promote")  # side effects or a changing source


def check_images(settings: ClusterSettings) -> None:
    """A cluster run must say which build it runs: both images given, each pinned by
    digest (``@sha256:...``) or by a tag other than ``latest``."""
    from model.errors import ConfigError

    for flag, image in (("--image", settings.image), ("--gpu-image", settings.gpu_image)):
        if not image:
            raise ConfigError(
                f"{flag} is required: the project image pinned by digest "
                "(REGISTRY/pix2pixhd-...@sha256:...) or by a release tag"
            )
        name = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in name or name.endswith(":latest")):
            raise ConfigError(
                f"{flag} {image}: pin it by digest (@sha256:...) or a tag other than latest"
            )


def build_pipeline(params_yaml: str, settings: ClusterSettings | None = None) -> Any:
    """The pipeline function for ``params_yaml`` (text) and the cluster settings."""
    from kfp import dsl

    settings = settings or ClusterSettings(image=LOCAL_IMAGE, gpu_image=LOCAL_IMAGE)
    p = params_from_text(params_yaml, [])  # fail at compile time on a bad params file
    c = _components(settings)
    distributed = settings.distributed()
    default = pipeline_defaults(p)

    @dsl.pipeline(
        name="pix2pixhd",
        description="pix2pixHD: validate, drift, boundaries, two-stage training, features, "
        "segmentation-based evaluation, ONNX export and registry promotion.",
    )
    def pix2pixhd(
        dataset_uri: str = "",
        num_train: int = default["num_train"],
        num_val: int = default["num_val"],
        width: int = default["width"],
        height: int = default["height"],
        ngf: int = default["ngf"],
        niter_global: int = default["niter_global"],
        niter_decay_global: int = default["niter_decay_global"],
        niter_local: int = default["niter_local"],
        niter_decay_local: int = default["niter_decay_local"],
        min_delta: float = default["min_delta"],
        segmenter_weights: str = default["segmenter_weights"],
        tracking_uri: str = "",
        overrides: list = [],  # noqa: B006 (kfp reads the default as the parameter's)
    ) -> None:
        common = {"params_yaml": params_yaml, "overrides": overrides}
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # MLflow runs of this execution share it
        size = {"width": width, "height": height}
        synth = c["synth"](
            **common, dataset_uri=dataset_uri, num_train=num_train, num_val=num_val, **size
        )
        validate = c["validate"](**common, **size, data=synth.outputs["data"])
        drift = c["drift"](  # the val split, the data evaluated on, vs the training profile
            **common, **size, data=synth.outputs["data"], reference=validate.outputs["report"]
        )
        bounds = c["boundaries"](**common, data=synth.outputs["data"]).after(validate)
        train = {
            **common,
            **size,
            "ngf": ngf,
            "niter_global": niter_global,
            "niter_decay_global": niter_decay_global,
            "niter_local": niter_local,
            "niter_decay_local": niter_decay_local,
            "tracking_uri": tracking_uri,
            "distributed": distributed,
            "pipeline_run": run_id,
            "data": synth.outputs["data"],
            "boundaries": bounds.outputs["out"],
            "report": validate.outputs["report"],
        }
        train_g = c["train_global"](stage="global", **train)
        train_l = c["train_local"](
            stage="local", **train, global_checkpoint=train_g.outputs["checkpoint"]
        )
        feats = c["features"](
            **common, data=synth.outputs["data"], checkpoint=train_l.outputs["checkpoint"]
        )
        seg = c["segmenter"](
            **common, **size, segmenter_weights=segmenter_weights, data=synth.outputs["data"]
        )
        ev = c["evaluate"](
            **common,
            tracking_uri=tracking_uri,
            pipeline_run=run_id,
            data=synth.outputs["data"],
            report=validate.outputs["report"],
            generator=feats.outputs["model"],
            segmenter=seg.outputs["model"],
        ).after(drift)
        exp = c["export"](
            **common,
            tracking_uri=tracking_uri,
            pipeline_run=run_id,
            generator=feats.outputs["model"],
            evaluation=ev.outputs["evaluation"],
        )
        prom = c["promote"](
            **common,
            tracking_uri=tracking_uri,
            min_delta=min_delta,
            exported=exp.outputs["onnx_model"],  # after export: the servable version
        )
        for task in (synth, validate, drift, bounds, feats, seg, ev, exp, prom):
            _configure(task, settings, gpu=False)
        for task in (train_g, train_l):
            _configure(task, settings, gpu=settings.num_nodes <= 1)
        for task in (synth, ev, exp, prom):  # NO_CACHE: register/promote/log, or a URI
            task.set_caching_options(False)

    missing = set(PARAM_KEYS) - set(inspect.signature(pix2pixhd.pipeline_func).parameters)
    if missing:  # the map and the signature are one definition read twice
        raise RuntimeError(f"pipeline parameters missing from the DAG: {sorted(missing)}")
    return pix2pixhd


def compile_pipeline(params_file: Path, out: Path, settings: ClusterSettings | None = None) -> Path:
    from kfp import compiler

    check_images(settings or ClusterSettings())
    pipeline = build_pipeline(Path(params_file).read_text(), settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, package_path=str(out))
    return out


def run_local(
    params_file: Path,
    pipeline_root: Path,
    arguments: Mapping[str, Any] | None = None,
    runner: str = "subprocess",
    image: str | None = None,
    gpu_image: str | None = None,
) -> dict[str, Any]:
    """The whole DAG on this machine with kfp.local: ``runner="subprocess"`` in the
    current environment, ``"docker"`` every task in the project images (``image``, and
    ``gpu_image`` for training; see pipelines.containers). Returns the run's state."""
    from kfp import local

    from pipelines import containers

    if runner == "docker":
        image = image or containers.DEFAULT_IMAGE
        gpu_image = gpu_image or containers.DEFAULT_GPU_IMAGE
        kfp_runner = containers.docker_runner(pipeline_root, [image, gpu_image])
    else:
        image = gpu_image = LOCAL_IMAGE
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(pipeline_root))
    settings = ClusterSettings(image=image, gpu_image=gpu_image, s3_secret="", gpus=1)
    pipeline = build_pipeline(Path(params_file).read_text(), settings)
    # expected here, once per task: the project image is this environment, and cluster
    # resources do not apply to local subprocesses
    warnings.filterwarnings("ignore", message="You may be attemping to run a task")
    warnings.filterwarnings("ignore", message=r"Task '.*': settings \[")
    try:
        pipeline(**dict(arguments or {}))
    except RuntimeError as exc:  # kfp.local: "... Inner task failed: 'name'." (log above)
        from model.errors import Pix2PixHDError

        raise Pix2PixHDError(f"{exc} The task's log is above.") from None
    return {"pipeline_root": str(pipeline_root), "state": "SUCCEEDED"}


def submit(
    host: str,
    params_file: Path,
    arguments: Mapping[str, Any] | None = None,
    experiment: str = "pix2pixhd",
    run_name: str | None = None,
    settings: ClusterSettings | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    import kfp

    from model.errors import Pix2PixHDError

    check_images(settings or ClusterSettings())
    pipeline = build_pipeline(Path(params_file).read_text(), settings)
    try:
        client = kfp.Client(host=host, namespace=namespace)
        result = client.create_run_from_pipeline_func(
            pipeline,
            arguments=dict(arguments or {}),
            experiment_name=experiment,
            run_name=run_name,
        )
    except Exception as exc:  # connection, auth, unknown parameter: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Pix2PixHDError(f"cannot submit to {host}: {first[:300]}") from None
    return {"run_id": result.run_id, "host": host, "experiment": experiment}
