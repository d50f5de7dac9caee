"""Every step, declared once; the pipeline's tasks, declared once.

A ``Step`` names its function (``module:run``), the locations it reads and writes
(with their kinds: dataset, model or artifact), how its ``run()`` arguments come from
params.yaml (``bind``: a params key, or a function of the params), the params keys those
read, and the files its output holds (for DVC: outputs, metrics, plots). Everything else
about the step is read from ``run()`` itself (names, types, defaults, docstring).

From these declarations the project produces:

- the ``pix2pixhd`` subcommands (``pix2pixhd.cli``),
- the dvc.yaml stages (``dvc_yaml``, written by ``pix2pixhd pipeline dvc``),
- the Kubeflow components and DAG (``pipelines.dag``, ``pipelines.executor``).

All three call ``arguments`` to turn params + locations + flags into ``run()``'s
keyword arguments, so for the same params and paths every driver passes the same
arguments. ``TASKS`` is the DAG: one entry per DVC stage / Kubeflow task.

Light on purpose (no torch, no kfp): ``pix2pixhd --help`` reads it.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components.params import Params
from components.signature import Param, module_path, parameters, summary

Binding = str | Callable[[Params], Any]  # a params key ("data.width") or a function


@dataclass(frozen=True)
class Loc:
    """A location a step reads or writes: its kind (the Kubeflow artifact type) and, for
    an output, the file the argument names inside the task's output directory ("" = the
    directory itself)."""

    kind: str  # dataset | model | artifact
    file: str = ""


@dataclass(frozen=True)
class Out:
    """A file in a step's output directory as DVC tracks it: ``out`` (cached), ``summary``
    (small JSON kept in git, ``cache: false``), ``metric``, ``plot`` (columns ``y``)."""

    path: str
    role: str = "out"
    y: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One step (or a plain command such as ``serve``): see the module doc."""

    name: str  # the subcommand; a space nests it ("data synth")
    target: str  # module:function
    reads: Mapping[str, Loc] = field(default_factory=dict)
    writes: Mapping[str, Loc] = field(default_factory=dict)
    bind: Mapping[str, Binding] = field(default_factory=dict)
    params_keys: tuple[str, ...] = ()  # what ``bind`` reads; "{stage}" from the task's args
    files: tuple[Out, ...] = ()  # what the output directory holds, for DVC
    persist: bool = False  # DVC keeps the output between runs (the step updates it)
    flags: Mapping[str, str] = field(default_factory=dict)  # parameter -> its flag
    one_of: tuple[tuple[str, ...], ...] = ()  # exactly one of these parameters
    old_flags: Mapping[str, str] = field(default_factory=dict)  # old spelling -> hint
    internal: tuple[str, ...] = ()  # parameters that have no option
    positional: tuple[str, ...] = ()  # parameters given without a flag

    @property
    def help(self) -> str:
        return summary(self.target)

    def parameters(self) -> tuple[Param, ...]:
        return parameters(self.target)

    def locations(self) -> dict[str, Loc]:
        return {**self.reads, **self.writes}

    def keys(self, fixed: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        return tuple(k.format(**(fixed or {})) for k in self.params_keys)


def lookup(params: Params, key: str) -> Any:
    """The value at ``section.key`` (dots go down nested sections)."""
    value: Any = params
    for part in key.split("."):
        value = getattr(value, part)
    return value


def bound_values(step: Step, params: Params) -> dict[str, Any]:
    """The ``run()`` arguments that come from the params."""
    return {
        name: lookup(params, b) if isinstance(b, str) else b(params)
        for name, b in step.bind.items()
    }


def arguments(
    step: Step,
    params: Params | None,
    given: Mapping[str, Any],
) -> dict[str, Any]:
    """``run()``'s keyword arguments: the bound values from ``params``, then ``given``
    (locations, fixed task arguments, flags); a given value of a bound parameter wins
    (``--size-multiple 16`` over the one the params imply)."""
    out = bound_values(step, params) if step.bind and params is not None else {}
    out.update(given)
    return out


def run(step: Step, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Import the step's function and call it with ``kwargs``."""
    import importlib

    module, name = step.target.split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)


def call(step: Step, params: Params | None, given: Mapping[str, Any]) -> dict[str, Any]:
    """Run the step with ``arguments``."""
    return run(step, arguments(step, params, given))


# ---------------------------------------------------------------------------
# the command line of a step (the inverse of the parser pix2pixhd.cli builds)


def flag(step: Step, name: str, default: Any = None) -> str:
    """The option of parameter ``name``: ``--name-with-dashes``; a boolean that defaults
    to true is switched off with ``--no-<name>`` (``use_`` dropped)."""
    if name in step.flags:
        return step.flags[name]
    if default is True:
        return "--no-" + name.removeprefix("use_").replace("_", "-")
    return "--" + name.replace("_", "-")


def argv(step: Step, values: Mapping[str, Any], params_file: str | None = None) -> list[str]:
    """``pix2pixhd`` arguments that run ``step`` with ``values`` (parameter -> value)."""
    defaults = {p.name: p.default for p in step.parameters()}
    out = step.name.split()
    if params_file is not None:
        out += ["--params", params_file]
    for name, value in values.items():
        default = defaults.get(name)
        if isinstance(value, bool):
            if value != default:
                out.append(flag(step, name, default))
        elif isinstance(value, list | tuple):
            out += [flag(step, name, default), *map(str, value)]
        elif value is not None:
            out += [flag(step, name, default), str(value)]
    return out


# ---------------------------------------------------------------------------
# the steps


def _size_multiple(p: Params) -> int:
    return p.model.generator.size_multiple


def _min_size(p: Params) -> int:
    from components.validate import min_file_size

    return min_file_size(p.data.preprocess, p.data.crop_size)


TRACKED = ("tracking", "tracking_uri", "orchestrator")

STEPS: tuple[Step, ...] = (
    Step(
        "data synth",
        "components.synth:run",
        writes={"out": Loc("dataset")},
        bind={
            "num_train": "data.num_train",
            "num_val": "data.num_val",
            "width": "data.width",
            "height": "data.height",
            "seed": "data.seed",
            "experiment": "tracking.experiment",
        },
        params_keys=(
            "data.num_train",
            "data.num_val",
            "data.width",
            "data.height",
            "data.seed",
            "tracking.experiment",
        ),
        files=(Out(""),),
        old_flags={"--size": "--size WxH is now --width W --height H"},
    ),
    Step(
        "validate",
        "components.validate:run",
        reads={"data": Loc("dataset"), "reference": Loc("artifact")},
        writes={"out": Loc("artifact")},
        bind={
            "layout": "data.layout",
            "label_nc": "data.label_nc",
            "use_instance_map": "data.use_instance_map",
            "size_multiple": _size_multiple,
            "drift_ratio": "validate.drift_ratio",
            "drift_min_delta": "validate.drift_min_delta",
            "drift_z": "validate.drift_z",
            "min_size": _min_size,
            "palette": "data.palette",
            "experiment": "tracking.experiment",
        },
        params_keys=(
            "tracking.experiment",
            "data.layout",
            "data.label_nc",
            "data.use_instance_map",
            "data.preprocess",
            "data.crop_size",
            "data.palette",
            "model.generator.n_downsample_global",
            "model.generator.n_local_enhancers",
            "validate",
        ),
        files=(
            Out("manifest.json"),
            Out("great_expectations_result.json"),
            Out("data_docs"),
            Out("summary.json", "summary"),
            Out("metrics.json", "metric"),
        ),
        internal=("html",),
    ),
    Step(
        "boundaries",
        "components.boundaries:run",
        reads={"data": Loc("dataset")},
        writes={"out": Loc("dataset")},
        bind={"layout": "data.layout", "experiment": "tracking.experiment"},
        params_keys=("data.layout", "tracking.experiment"),
        files=(Out(""),),
        persist=True,
    ),
    Step(
        "train",
        "components.train:run",
        reads={
            "data": Loc("dataset"),
            "boundaries": Loc("dataset"),
            "data_summary": Loc("artifact"),
            "init_checkpoint": Loc("model"),
        },
        writes={"out": Loc("model")},
        bind={"params": lambda p: p},
        params_keys=(
            "data",
            "model",
            "train_{stage}",
            "tracking.vgg_weights",
            "tracking.experiment",
        ),
        files=(
            Out("latest.pth"),
            Out("samples.png", "plot"),
            Out("summary.json", "summary"),
            Out("metrics.json", "metric"),
            Out(
                "losses.csv",
                "plot",
                ("G_total", "D_total", "G_GAN", "G_GAN_Feat", "D_real", "D_fake"),
            ),
        ),
        flags={"init_checkpoint": "--init"},
    ),
    Step(
        "features",
        "components.features:run",
        reads={"checkpoint": Loc("model"), "data": Loc("dataset")},
        writes={"out": Loc("model")},
        bind={
            "cfg": lambda p: p.features,
            "layout": "data.layout",
            "palette": "data.palette",
            "experiment": "tracking.experiment",
        },
        params_keys=("data.layout", "data.palette", "features", "tracking.experiment"),
        files=(
            Out("model.pth"),
            Out("features_summary.json", "summary"),
            Out("metrics.json", "metric"),
        ),
    ),
    Step(
        "segmenter train",
        "components.segmenter:run",
        reads={"data": Loc("dataset"), "data_summary": Loc("artifact")},
        writes={"out": Loc("model")},
        bind={
            "params": lambda p: p.segmenter,
            "width": "data.width",
            "height": "data.height",
            "layout": "data.layout",
            "palette": "data.palette",
            "experiment": "tracking.experiment",
        },
        params_keys=(
            "data.layout",
            "data.palette",
            "data.width",
            "data.height",
            "segmenter",
            "tracking.experiment",
        ),
        files=(
            Out("segmenter.pth"),
            Out("iou_per_class.json", "summary"),
            Out("summary.json", "summary"),
            Out("metrics.json", "metric"),
        ),
    ),
    Step(
        "evaluate",
        "components.evaluate:run",
        reads={
            "checkpoint": Loc("model"),
            "segmenter": Loc("model"),
            "data": Loc("dataset"),
            "data_summary": Loc("artifact"),
        },
        writes={"out": Loc("artifact")},
        bind={
            "params": lambda p: p.evaluate,
            "layout": "data.layout",
            "experiment": "tracking.experiment",
            "palette": "data.palette",
        },
        params_keys=("data.layout", "data.palette", "tracking.experiment", "evaluate"),
        files=(
            Out("samples.png", "plot"),
            Out("evaluation.json", "summary"),
            Out("iou_per_class.csv", "summary"),
            Out("confusion_matrix.json", "summary"),
            Out("confusion_pixels.csv", "plot"),
            Out("per_image_confusion.npz"),
            Out("metrics.json", "metric"),
        ),
    ),
    Step(
        "export",
        "components.export:run",
        reads={"checkpoint": Loc("model"), "evaluation": Loc("artifact"), "data": Loc("dataset")},
        writes={"out": Loc("model", "model.onnx")},
        bind={
            "experiment": "tracking.experiment",
            "tracking_optional": "tracking.optional",
            "layout": "data.layout",
        },
        params_keys=("tracking.experiment", "tracking.optional", "data.layout"),
        files=(
            Out("model.onnx"),
            Out("model_fp16.onnx"),
            Out("registration.json", "summary"),
            Out("export_summary.json", "summary"),
            Out("metrics.json", "metric"),
        ),
    ),
    Step(
        "promote",
        "components.promote:run",
        reads={"registration": Loc("artifact")},
        writes={"out": Loc("artifact", "decision.json")},
        bind={
            "name": "evaluate.model_name",
            "metric": "promote.metric",
            "min_delta": "promote.min_delta",
            "confidence": "promote.confidence",
            "bootstrap": "promote.bootstrap",
            "seed_margin": "promote.seed_margin",
            "experiment": "tracking.experiment",
        },
        params_keys=("evaluate.model_name", "promote", "tracking.experiment"),
        files=(Out("decision.json", "summary"), Out("decision_metrics.json", "metric")),
        flags={"name": "--model-name"},
    ),
    Step(
        "generate",
        "components.generate:run",
        one_of=(("checkpoint", "onnx", "model"),),
    ),
    Step("edit", "components.edit:run"),
    Step("import-checkpoint", "components.import_checkpoint:run"),
    Step("data convert", "components.convert:run"),
    Step("serve", "components.serve.server:run"),
    Step("metrics compare", "components.compare:run"),
    Step(
        "params",
        "components.params_doc:resolve",
        positional=("params_file",),
        flags={"overrides": "--set"},
    ),
    Step(
        "pipeline compile",
        "pipelines.commands:compile_ir",
        flags={"params_file": "--params", "num_nodes": "--nodes"},
    ),
    Step(
        "pipeline run",
        "pipelines.commands:run_local",
        flags={"params_file": "--params", "arguments": "--arg"},
    ),
    Step(
        "pipeline submit",
        "pipelines.commands:submit",
        flags={"params_file": "--params", "arguments": "--arg", "num_nodes": "--nodes"},
    ),
    Step(
        "pipeline dvc",
        "pipelines.commands:write_dvc",
        flags={"params_file": "--params"},
    ),
)

BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}


# ---------------------------------------------------------------------------
# the DAG


@dataclass(frozen=True)
class Task:
    """One node of the pipeline: a step with fixed arguments; ``inputs`` wire a read
    location to another task's output (``"task"`` or ``"task/file"``); ``after``: tasks
    that must finish first without passing anything (a gate)."""

    name: str
    step: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    after: tuple[str, ...] = ()

    @property
    def spec(self) -> Step:
        return BY_NAME[self.step]

    def keys(self) -> tuple[str, ...]:
        return self.spec.keys(self.args)


TASKS: tuple[Task, ...] = (
    Task("synth", "data synth"),
    Task("validate", "validate", {"data": "synth"}),
    # the evaluation (val) split against the training split's profile
    Task(
        "drift",
        "validate",
        {"data": "synth", "reference": "validate/summary.json"},
        {"splits": ("val",)},
    ),
    Task("boundaries", "boundaries", {"data": "synth"}, after=("validate",)),
    Task(
        "train_global",
        "train",
        {"data": "synth", "boundaries": "boundaries", "data_summary": "validate/summary.json"},
        {"stage": "global"},
    ),
    Task(
        "train_local",
        "train",
        {
            "data": "synth",
            "boundaries": "boundaries",
            "data_summary": "validate/summary.json",
            "init_checkpoint": "train_global/latest.pth",
        },
        {"stage": "local"},
    ),
    Task("features", "features", {"checkpoint": "train_local/latest.pth", "data": "synth"}),
    Task(
        "segmenter",
        "segmenter train",
        {"data": "synth", "data_summary": "validate/summary.json"},
    ),
    Task(
        "evaluate",
        "evaluate",
        {
            "checkpoint": "features/model.pth",
            "segmenter": "segmenter/segmenter.pth",
            "data": "synth",
            "data_summary": "validate/summary.json",
        },
        after=("drift",),
    ),
    # the servable model, registered with evaluate's scores
    Task(
        "export",
        "export",
        {"checkpoint": "features/model.pth", "evaluation": "evaluate/evaluation.json"},
    ),
    # after export: only the exported, servable version can become the champion
    Task("promote", "promote", {"registration": "export/registration.json"}),
)

TASK_BY_NAME: dict[str, Task] = {t.name: t for t in TASKS}


def split_ref(ref: str) -> tuple[str, str]:
    """``"task/file"`` -> (task, file); ``"task"`` -> (task, "")."""
    task, _, file = ref.partition("/")
    return task, file


def upstream(task: Task) -> set[str]:
    """The tasks ``task`` reads from or waits for."""
    return {split_ref(r)[0] for r in task.inputs.values()} | set(task.after)


# ---------------------------------------------------------------------------
# dvc.yaml

DATA_ROOT = "data"


def output_path(task: Task) -> str:
    """Where a task's output goes in the DVC layout: ``data/<task>[/<file>]``."""
    file = task.spec.writes["out"].file
    return f"{DATA_ROOT}/{task.name}/{file}" if file else f"{DATA_ROOT}/{task.name}"


def ref_path(ref: str) -> str:
    task, file = split_ref(ref)
    return f"{DATA_ROOT}/{task}/{file}" if file else f"{DATA_ROOT}/{task}"


def module_closure(module: str) -> list[str]:
    """The project source files ``module`` imports, itself included, at any depth
    (function-level imports too): what a DVC stage depends on besides its data."""
    roots = ("model", "components")
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for node in ast.walk(ast.parse(module_path(m).read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in roots:
                    try:
                        module_path(name)
                    except (ModuleNotFoundError, ValueError):
                        continue  # a name imported from a module, not a module
                    todo.append(name)
    root = module_path("model").parent.parent
    files = {module_path(m).relative_to(root).as_posix() for m in seen}
    return sorted(f for f in files if not f.endswith("__init__.py"))


def _first_file(task: Task) -> str:
    """The first file a task writes (what a task that only waits for it depends on)."""
    first = task.spec.files[0].path
    return f"{DATA_ROOT}/{task.name}/{first}" if first else f"{DATA_ROOT}/{task.name}"


def _dvc_stage(task: Task) -> dict[str, Any]:
    step = task.spec
    out = output_path(task)
    values: dict[str, Any] = {k: ref_path(r) for k, r in task.inputs.items()}
    values.update(task.args)
    values["out"] = out
    params_file = "params.yaml" if step.bind else None
    cmd = "pix2pixhd " + " ".join(argv(step, values, params_file))
    deps = [ref_path(r) for r in task.inputs.values()]
    deps += [_first_file(TASK_BY_NAME[t]) for t in task.after]
    deps += module_closure(step.target.split(":")[0])
    stage: dict[str, Any] = {"cmd": cmd, "deps": deps}
    if step.bind:
        stage["params"] = list(task.keys())
    folder = f"{DATA_ROOT}/{task.name}"
    outs: list[Any] = []
    metrics: list[Any] = []
    plots: list[Any] = []
    for f in step.files:
        path = f"{folder}/{f.path}" if f.path else folder
        if f.role == "out":
            outs.append({path: {"persist": True}} if step.persist else path)
        elif f.role == "summary":
            outs.append({path: {"cache": False}})
        elif f.role == "metric":
            metrics.append({path: {"cache": False}})
        else:
            plots.append({path: {"cache": False}})
    for key, items in (("outs", outs), ("metrics", metrics), ("plots", plots)):
        if items:
            stage[key] = items
    return stage


#: image files DVC shows as image plots (the stage's own ``plots`` entry is enough)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
#: plotted files drawn with another of DVC's templates: file -> (template, x field, y field).
#: A confusion file holds one row per (sampled) pixel, ``actual,predicted`` class names:
#: DVC's confusion templates count rows.
PLOT_TEMPLATES = {"confusion_pixels.csv": ("confusion_normalized", "predicted", "actual")}


def _plot(task: Task, f: Out) -> dict[str, Any] | None:
    """The top-level definition of a plotted file (None: the stage's entry suffices)."""
    path = f"{DATA_ROOT}/{task.name}/{f.path}"
    title = {"title": f"{task.name}: {f.path}"}
    if f.path.endswith(IMAGE_SUFFIXES):
        return None
    if f.y:  # a table of steps: one line per column
        return {**title, "x": "step", "y": {path: list(f.y)}}
    if f.path in PLOT_TEMPLATES:
        template, x, y = PLOT_TEMPLATES[f.path]
        return {**title, "template": template, "x": x, "y": {path: y}}
    return None


def dvc_yaml() -> dict[str, Any]:
    """dvc.yaml as data: one stage per task, and one plot per plotted file. A file with a
    top-level definition (a table with columns ``y``: lines over ``step``; a file of
    ``PLOT_TEMPLATES``) is then a plain output of its stage: DVC draws a stage's own plot
    entries too, so a file in both would be drawn twice. Images stay as the stage's plot
    entries."""
    stages = {t.name: _dvc_stage(t) for t in TASKS}
    plots = []
    for t in TASKS:
        for f in t.spec.files:
            definition = _plot(t, f) if f.role == "plot" else None
            if definition is None:
                continue
            plots.append({f"{t.name}_{f.path.split('.')[0]}": definition})
            path = f"{DATA_ROOT}/{t.name}/{f.path}"
            stage = stages[t.name]
            stage["plots"].remove({path: {"cache": False}})
            stage["outs"] = [*stage.get("outs", []), {path: {"cache": False}}]
            if not stage["plots"]:
                del stage["plots"]
    return {"stages": stages, "plots": plots}


HEADER = (
    "# Written by `pix2pixhd pipeline dvc --out dvc.yaml` from components/steps.py (the\n"
    "# steps and the DAG, declared once); CI checks it with `pix2pixhd pipeline dvc --check`.\n"
    "# Edit components/steps.py, not this file.\n"
)


def dvc_text() -> str:
    import yaml

    return HEADER + yaml.safe_dump(dvc_yaml(), sort_keys=False, width=100)


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two YAML trees first differ (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a:
                return f"{where}{k}: only in the generated file"
            if k not in b:
                return f"{where}{k}: only in the committed file"
            d = first_difference(a[k], b[k], f"{where}{k}.")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            d = first_difference(x, y, f"{where}{i}.")
            if d:
                return d
        if len(a) != len(b):
            return f"{where.rstrip('.')}: {len(a)} entries generated, {len(b)} committed"
        return None
    if a != b:
        new, old = (json.dumps(x, default=str)[:120] for x in (a, b))
        return f"{where.rstrip('.')}: generated {new}, committed {old}"
    return None


def all_keys(params: Params, prefix: str = "") -> Iterable[str]:
    import dataclasses

    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if dataclasses.is_dataclass(value):
            yield from all_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"
