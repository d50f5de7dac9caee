"""The Kubeflow DAG, generated from ``components.steps`` (the steps and tasks declared
once): one lightweight component per task, wired by its artifacts, with GPU, node and
secret settings on the tasks that need them.

A component is Python source written from the task's declaration: typed parameters
(the compiled ``params_yaml``, ``overrides``, the typed pipeline parameters whose params
keys the step reads, the tracking inputs), its input artifacts, its output ``out`` and
the extra outputs of its Kubeflow hook (``pipelines.hooks``); the body is one call of
``pipelines.executor.execute``. kfp ships that source to the project image
(``base_image``, kfp installed there, ``install_kfp_package=False``), so the DAG runs
unchanged with ``kfp.local`` and in a cluster.

``build_pipeline(params_yaml, settings)`` returns the pipeline function; its typed
parameters (``pipelines.parameters.PARAM_KEYS``) default to the compiled params.yaml's
values, which also travels whole as ``params_yaml``; ``overrides`` (``section.key=value``
strings) reach everything else without recompiling.
"""

import linecache
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from components import steps
from components.params import params_from_text, resolved_yaml
from pipelines.hooks import HOOKS, Hook
from pipelines.parameters import PARAM_KEYS, pipeline_defaults
from pipelines.settings import ClusterSettings

ROOT = Path(__file__).resolve().parents[1]
GPU_STEPS = ("train",)
KFP_TYPES = {"dataset": "Dataset", "model": "Model", "artifact": "Artifact"}
TRACKING_INPUTS = {
    "tracking_uri": "MLflow tracking URI of the steps (empty: $MLFLOW_TRACKING_URI of the pods)",
    "pipeline_run": "this execution's id, shared by its MLflow runs",
}
TRAINING_INPUTS = {"distributed": "launch settings fixed at compile time (JSON)"}


def task_parameters(task: steps.Task) -> list[str]:
    """The typed pipeline parameters a task receives: those whose params key it reads."""
    keys = task.keys()

    def reads(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in keys)

    return [name for name, key in PARAM_KEYS.items() if reads(key)]


def _doc(text: str) -> str:
    return " ".join(text.split()).replace('"', "'")


def component_source(task: steps.Task, defaults: Mapping[str, Any]) -> str:
    """The Python source of task ``task``'s component (see the module doc)."""
    step = task.spec
    hook = HOOKS.get(step.name, Hook())
    names = {p.name for p in step.parameters()}
    docs = {p.name: p.doc for p in step.parameters()}
    params: list[tuple[str, str, str]] = [
        ("params_yaml", "str", "the compiled params.yaml (text)"),
        ("overrides", "list", "section.key=value strings applied last"),
    ]
    for name in task_parameters(task):
        params.append((name, type(defaults[name]).__name__, f"sets {PARAM_KEYS[name]}"))
    for name, (kind, doc) in hook.inputs.items():
        params.append((name, kind, doc))
    if "tracking_uri" in names:
        params += [(n, "str", d) for n, d in TRACKING_INPUTS.items()]
    if step.name in GPU_STEPS:
        params += [(n, "str", d) for n, d in TRAINING_INPUTS.items()]
    for arg in task.inputs:
        params.append((arg, f"Input[{KFP_TYPES[step.reads[arg].kind]}]", docs.get(arg, "")))
    params.append(("out", f"Output[{KFP_TYPES[step.writes['out'].kind]}]", docs.get("out", "")))
    for name, kind in hook.outputs.items():
        params.append((name, f"Output[{kind}]", f"Kubeflow {kind}"))
    fn = task.name
    lines = [f"def {fn}("]
    lines += [f"    {n}: {t}," for n, t, _ in params]
    lines += [") -> None:", f'    """{_doc(step.help)}', "", "    Args:"]
    lines += [f"        {n}: {_doc(d) or n}" for n, _, d in params]
    lines += ['    """', "    from pipelines.executor import execute", ""]
    lines += [f"    execute({task.name!r}, locals())", ""]
    return "\n".join(lines)


def _define(source: str, name: str) -> Any:
    """The function defined by ``source``, with its source where ``inspect`` (and so
    kfp, which ships it to the container) finds it."""
    filename = f"<pix2pixhd component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec("from kfp.dsl import *", namespace)  # noqa: S102 (the names kfp's executor gives)
    code = compile(source, filename, "exec")
    exec(code, namespace)  # noqa: S102 (source written above from the declarations)
    return namespace[name]


def _components(settings: ClusterSettings, defaults: Mapping[str, Any]) -> dict[str, Any]:
    from kfp import dsl

    out = {}
    for task in steps.TASKS:
        gpu = task.spec.name in GPU_STEPS and settings.num_nodes <= 1
        image = settings.gpu_image if gpu else settings.image
        fn = _define(component_source(task, defaults), task.name)
        out[task.name] = dsl.component(fn, base_image=image, install_kfp_package=False)
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
    if not gpu:  # the CPU steps: the scheduler must know what they need
        task.set_cpu_request(CPU_REQUEST[0]).set_memory_request(CPU_REQUEST[1])
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


def _resumable(task: Any, settings: ClusterSettings) -> None:
    """Training is the ideal retry target: it resumes exactly from its last checkpoint,
    which a PersistentVolumeClaim keeps across pods (``checkpoint_pvc``)."""
    from kfp import kubernetes

    if settings.retries:
        task.set_retry(settings.retries, backoff_duration="30s", backoff_factor=2)
    if settings.checkpoint_pvc:
        kubernetes.mount_pvc(task, settings.checkpoint_pvc, mount_path=settings.checkpoint_dir())


CPU_REQUEST = ("1", "4G")  # the CPU steps' requests (cores, memory)
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


def build_pipeline(
    params_yaml: str, settings: ClusterSettings | None = None, distributed: str | None = None
) -> Any:
    """The pipeline function for ``params_yaml`` (text) and the cluster settings
    (``distributed``: the training tasks' launch settings instead of the settings')."""
    import inspect

    from kfp import dsl

    settings = settings or ClusterSettings(image=LOCAL_IMAGE, gpu_image=LOCAL_IMAGE)
    p = params_from_text(params_yaml, [])  # fail at compile time on a bad params file
    default = pipeline_defaults(p)
    components = _components(settings, default)
    distributed = distributed or settings.distributed()

    # the pipeline's parameters: the hooks' inputs, the typed ones, tracking, overrides
    P = inspect.Parameter
    signature: list[inspect.Parameter] = []
    docs: dict[str, str] = {}
    for hook in HOOKS.values():
        for name, (_, doc) in hook.inputs.items():
            signature.append(P(name, P.POSITIONAL_OR_KEYWORD, default="", annotation=str))
            docs[name] = doc
    for name, key in PARAM_KEYS.items():
        kind = type(default[name])
        signature.append(P(name, P.POSITIONAL_OR_KEYWORD, default=default[name], annotation=kind))
        docs[name] = f"{key} ({_field_doc(key)})" if _field_doc(key) else key
    signature.append(P("tracking_uri", P.POSITIONAL_OR_KEYWORD, default="", annotation=str))
    docs["tracking_uri"] = TRACKING_INPUTS["tracking_uri"]
    signature.append(P("overrides", P.POSITIONAL_OR_KEYWORD, default=[], annotation=list))
    docs["overrides"] = "section.key=value strings for any other params key, applied last"
    names = [q.name for q in signature]

    def pix2pixhd(*args: Any) -> None:
        arg = dict(zip(names, args, strict=True))
        made: dict[str, Any] = {}
        for task in steps.TASKS:
            step = task.spec
            hook = HOOKS.get(step.name, Hook())
            kwargs: dict[str, Any] = {"params_yaml": params_yaml, "overrides": arg["overrides"]}
            kwargs.update({n: arg[n] for n in task_parameters(task)})
            kwargs.update({n: arg[n] for n in hook.inputs})
            if "tracking_uri" in {q.name for q in step.parameters()}:
                kwargs["tracking_uri"] = arg["tracking_uri"]
                kwargs["pipeline_run"] = dsl.PIPELINE_JOB_ID_PLACEHOLDER
            if step.name in GPU_STEPS:
                kwargs["distributed"] = distributed
            for name, ref in task.inputs.items():
                kwargs[name] = made[steps.split_ref(ref)[0]].outputs["out"]
            t = components[task.name](**kwargs)
            t.set_display_name(task.name.replace("_", " "))
            for upstream in task.after:
                t.after(made[upstream])
            _configure(t, settings, gpu=step.name in GPU_STEPS and settings.num_nodes <= 1)
            if step.name in GPU_STEPS:
                _resumable(t, settings)
            if task.name in NO_CACHE:  # register/promote/log, or a dataset URI
                t.set_caching_options(False)
            made[task.name] = t

    pix2pixhd.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    pix2pixhd.__doc__ = (
        "pix2pixHD: validate, drift, boundaries, two-stage training, features, "
        "segmentation-based evaluation, ONNX export and registry promotion.\n\nArgs:\n"
        + "".join(f"    {n}: {_doc(d)}\n" for n, d in docs.items())
    )
    return dsl.pipeline(name="pix2pixhd")(pix2pixhd)


def _field_doc(key: str) -> str:
    """The schema's meaning of params key ``key`` (docs/params.md's)."""
    from components.params_doc import params_reference

    return next((row.meaning for row in params_reference() if row.key == key), "")


def compile_pipeline(params_file: Path, out: Path, settings: ClusterSettings | None = None) -> Path:
    from kfp import compiler

    check_images(settings or ClusterSettings())
    pipeline = build_pipeline(resolved_yaml(params_file), settings)
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
    nodes: int = 1,
) -> dict[str, Any]:
    """The whole DAG on this machine with kfp.local: ``runner="subprocess"`` in the
    current environment, ``"docker"`` every task in the project images (``image``, and
    ``gpu_image`` for training; see pipelines.containers). ``nodes`` > 1 (docker only):
    each training stage runs as a TrainJob of that many nodes, each a container
    (``pipelines.local_nodes``). Returns the run's state."""
    from kfp import local

    from pipelines import containers
    from pipelines.settings import local_distributed

    distributed = None
    if nodes > 1 and runner != "docker":
        from model.errors import ConfigError

        raise ConfigError(f"--nodes {nodes}: several nodes need --runner docker")
    if runner == "docker":
        image = image or containers.DEFAULT_IMAGE
        gpu_image = gpu_image or containers.DEFAULT_GPU_IMAGE
        kfp_runner = containers.docker_runner(pipeline_root, [image, gpu_image], nodes > 1)
        if nodes > 1:
            distributed = local_distributed(nodes, gpu_image, str(pipeline_root))
    else:
        image = gpu_image = LOCAL_IMAGE
        kfp_runner = local.SubprocessRunner(use_venv=False)
    local.init(runner=kfp_runner, pipeline_root=str(pipeline_root))
    settings = ClusterSettings(image=image, gpu_image=gpu_image, s3_secret="", gpus=1)
    pipeline = build_pipeline(resolved_yaml(params_file), settings, distributed)
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
    pipeline = build_pipeline(resolved_yaml(params_file), settings)
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
