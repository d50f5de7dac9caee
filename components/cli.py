"""The `pix2pixhd` command line: one subcommand per pipeline step, derived from the
step's ``run()``.

Each subcommand is one :class:`Command` in ``COMMANDS``: its name, the ``module:function``
it calls (imported only when that subcommand runs, so start-up stays light) and its
options. Every option is named after the ``run()`` parameter it feeds (its argparse
``dest``; ``--init`` feeds ``init_checkpoint``, ``--no-tracking`` feeds ``tracking``), and
the dispatcher passes each parsed option that ``run()`` accepts as a keyword argument.
Values that come from params.yaml (``--params`` / ``--set``, the shared ``PARAMS`` group)
or are computed from several options are returned by the command's ``derive(options,
params)``. Option groups used by several commands (``PARAMS``, ``TRACKING``,
``CLUSTER``) are defined once.

Output: stdout carries only the command's result, one JSON object (so
``pix2pixhd export ... > out.json`` is valid JSON); logs and anything a library prints
go to stderr. Logging is configured for the project's own loggers (INFO; ``-v`` DEBUG,
``-q`` warnings only); third-party loggers stay at WARNING unless ``-v``. Errors the user
can fix print one line and exit with status 2, without a traceback.

Adding a subcommand:

1. write ``components/<step>.py`` with ``run(...) -> dict`` (keyword arguments, a
   docstring naming each);
2. append one ``Command(...)`` to ``COMMANDS``, e.g.::

       Command(
           "thumbs",
           "components.thumbs:run",
           help="small previews of a dataset",
           options=(
               opt("--data", type=_location, required=True),
               opt("--out", type=_location, required=True),
               opt("--size", type=_positive_int, default=64),
           ),
       )

   with ``dest=`` where the public flag differs from the parameter, groups such as
   ``PARAMS`` where it shares them, and ``derive=`` for values read from params.yaml.
   A name with a space (``"data synth"``) is a nested subcommand (its parent listed in
   ``PARENTS``). Parsing, ``s3://`` staging, errors and the JSON output are generic.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("pix2pixhd")

#: the loggers this command configures (library code logs under its module name)
PROJECT_LOGGERS = ("pix2pixhd", "components", "model", "pipelines")


# ---------------------------------------------------------------------------
# argument types


def _location(text: str) -> Path | str:
    """A local path, or an ``s3://`` URI kept as text (staged by ``components.storage``)."""
    return text if text.startswith("s3://") else Path(text)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT like 256x128, got {text!r}"
        ) from None
    return w, h


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---------------------------------------------------------------------------
# the declarative parts: options, groups, commands


@dataclass(frozen=True)
class Opt:
    """One ``add_argument`` call: flags and argparse keywords (``dest``: the parameter)."""

    flags: tuple[str, ...]
    kwargs: Mapping[str, Any]


def opt(*flags: str, **kwargs: Any) -> Opt:
    return Opt(flags, kwargs)


@dataclass(frozen=True)
class Group:
    """Options several commands share, shown under one heading in ``--help``."""

    title: str
    options: tuple[Opt, ...]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``name`` (a space nests it under a parent), ``target`` the
    ``module:function`` it calls, its options and groups, and ``derive(options, params)``
    for keyword arguments that do not come straight from one option (``params``: the
    loaded params when the command has the PARAMS group, else None). Every option must
    be a parameter of the target or be named in ``consumes`` (the PARAMS group's are
    consumed by loading params)."""

    name: str
    target: str
    help: str
    description: str | None = None
    options: tuple[Opt | Group, ...] = ()
    derive: Callable[[dict[str, Any], Any], dict[str, Any]] | None = None
    consumes: tuple[str, ...] = ()  # options read only by ``derive``
    mutually_exclusive: tuple[tuple[str, ...], ...] = field(default=())  # required groups


PARAMS = Group(
    "params",
    (
        opt(
            "--params",
            dest="params_file",
            metavar="PARAMS",
            type=_location,
            default=None,
            help="params.yaml (default: the built-in paper defaults)",
        ),
        opt(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one value, e.g. --set train_global.niter=10 (repeatable)",
        ),
    ),
)
TRACKING_URI = opt(
    "--tracking-uri",
    help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
    "working directory)",
)
TRACKING = Group(
    "tracking",
    (
        opt(
            "--no-tracking",
            dest="tracking",
            action="store_false",
            help="no MLflow run (and no registration)",
        ),
        TRACKING_URI,
        opt(
            "--orchestrator",
            choices=["cli", "dvc", "kfp"],
            default=None,
            help="recorded as the run's orchestrator tag (default: cli, or dvc under dvc repro)",
        ),
    ),
)
LAYOUTS = ["auto", "cityscapes", "folder", "rgb"]
ENGINE = opt(
    "--engine",
    choices=["auto", "onnx", "torch"],
    default="auto",
    help="onnx: ONNX Runtime on the checkpoint's graph, exported once and cached beside "
    "it; torch: PyTorch eager; auto (default): onnx unless the work needs PyTorch "
    "(features encoded from --images, RGB-label models, CUDA without onnxruntime-gpu)",
)
PIPELINE_PARAMS = opt(
    "--params",
    dest="params_file",
    metavar="PARAMS",
    type=Path,
    default=None,
    help="default: the repo's params.yaml",
)
PIPELINE_ARGS = opt(
    "--arg",
    dest="arguments",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="pipeline parameter (repeatable)",
)
CLUSTER = Group(
    "cluster",
    (
        opt(
            "--image",
            help="image of the CPU steps, pinned: REG/pix2pixhd-cpu@sha256:... or a release "
            "tag (required to compile or submit; :latest is refused)",
        ),
        opt("--gpu-image", help="image of the training steps, pinned likewise (required)"),
        opt("--gpus", type=_positive_int, help="GPUs per training pod / node (1)"),
        opt(
            "--nodes",
            dest="num_nodes",
            metavar="NODES",
            type=_positive_int,
            default=1,
            help="training nodes; > 1 runs each training stage as a Kubeflow Trainer job (1)",
        ),
        opt(
            "--engine",
            choices=["trainjob", "pytorchjob"],
            default="trainjob",
            help="multi-node engine: Trainer v2 TrainJob or Training Operator v1 PyTorchJob",
        ),
        opt("--namespace", default="kubeflow", help="where training jobs run"),
        opt(
            "--s3-secret",
            help="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (pix2pixhd-s3)",
        ),
        opt("--s3-endpoint", help="AWS_ENDPOINT_URL for every task (none: AWS)"),
        opt("--mlflow-uri", help="MLFLOW_TRACKING_URI for every task"),
    ),
)


def _validate_from_params(o: dict[str, Any], p: Any) -> dict[str, Any]:
    from components.params import stage_model_config
    from components.validate import min_file_size

    cfg = stage_model_config(p, "local")
    return {
        "label_nc": cfg.label_nc if o["label_nc"] is None else o["label_nc"],
        "use_instance_map": cfg.use_instance_map and o["use_instance_map"],
        "size_multiple": o["size_multiple"] or cfg.generator.size_multiple,
        "splits": tuple(o["splits"]),
        "drift_ratio": p.validate.drift_ratio,
        "drift_min_delta": p.validate.drift_min_delta,
        "drift_z": p.validate.drift_z,
        "min_size": min_file_size(p.data.preprocess, p.data.crop_size),
        "palette": p.data.palette or None,
    }


COMMANDS: tuple[Command, ...] = (
    Command(
        "import-checkpoint",
        "components.import_checkpoint:run",
        help="convert official pix2pixHD checkpoints (latest_net_G.pth ...) to this format",
        description="Read official pix2pixHD checkpoints, infer the architecture from tensor "
        "shapes, load them strictly and write one checkpoint of this project's format.",
        options=(
            opt("--generator", type=_location, required=True, help="latest_net_G.pth"),
            opt("--encoder", type=_location, help="latest_net_E.pth (instance features)"),
            opt("--discriminator", type=_location, help="latest_net_D.pth (to resume training)"),
            opt(
                "--label-nc",
                type=int,
                default=35,
                help="number of label ids, 0 for RGB labels (default: 35, Cityscapes)",
            ),
            opt(
                "--no-instance-map",
                dest="use_instance_map",
                action="store_false",
                help="the model was trained without instance boundary maps",
            ),
            opt("--out", type=_location, required=True, help="checkpoint file to write"),
        ),
    ),
    Command(
        "generate",
        "components.generate:run",
        help="label maps to photos with a checkpoint",
        description="Generate one PNG per label map (same stem, native size).",
        options=(
            opt("--checkpoint", type=_location, help="a checkpoint"),
            opt("--onnx", type=_location, help="an exported model (runs in onnxruntime)"),
            opt(
                "--model",
                help="an MLflow model URI, e.g. models:/pix2pixhd-generator@champion (the "
                "registered pyfunc model; tracking server from MLFLOW_TRACKING_URI)",
            ),
            ENGINE,
            opt("--labels", type=_location, required=True, help="directory of label-id PNGs"),
            opt("--instances", type=_location, help="directory of instance-id PNGs"),
            opt("--images", type=_location, help="directory of photos to encode features from"),
            opt("--out", type=_location, required=True, help="output directory"),
            opt("--batch-size", type=_positive_int, default=4),
            opt("--seed", type=int, default=0, help="cluster-centre draws (feature models)"),
            opt("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)"),
        ),
        mutually_exclusive=(("--checkpoint", "--onnx", "--model"),),
    ),
    Command(
        "train",
        "components.train:run",
        help="train one stage (global, then local)",
        description="Train the global generator (stage global, at 1/2**n_local_enhancers of "
        "the data size) or the local generator initialised from it (stage local). Under "
        "torchrun it trains data-parallel.",
        options=(
            opt("--stage", choices=["global", "local"], required=True),
            PARAMS,
            opt("--data", type=_location, required=True, help="dataset root"),
            opt("--out", type=_location, required=True, help="output directory (latest.pth)"),
            opt(
                "--init",
                dest="init_checkpoint",
                metavar="INIT",
                type=_location,
                help="global stage checkpoint (stage local)",
            ),
            opt("--resume", action="store_true", help="continue from OUT/latest.pth"),
            opt("--boundaries", type=_location, help="precomputed boundary maps (optional)"),
            opt("--data-summary", type=_location, help="validate's summary.json (dataset hash)"),
            TRACKING,
            opt("--device", default="auto"),
        ),
        derive=lambda o, p: {"params": p},
    ),
    Command(
        "features",
        "components.features:run",
        help="cluster instance features into the checkpoint",
        description="Encode every training instance with E, cluster per class (k-means) and "
        "write OUT/model.pth with the cluster centres.",
        options=(
            opt("--checkpoint", type=_location, required=True),
            opt("--data", type=_location, required=True),
            opt("--out", type=_location, required=True),
            PARAMS,
        ),
        derive=lambda o, p: {"cfg": p.features, "layout": p.data.layout, "palette": p.data.palette},
    ),
    Command(
        "segmenter train",
        "components.segmenter:run",
        help="train a PSPNet on the real photos (or load published weights)",
        description="Train the segmenter on the dataset's real photos (segmenter.weights "
        "set: load that published PSPNet instead), freeze it, and score it on the val "
        "photos (the oracle row).",
        options=(
            opt("--data", type=_location, required=True),
            opt("--out", type=_location, required=True),
            PARAMS,
        ),
        derive=lambda o, p: {
            "params": p.segmenter,
            "width": p.data.width,
            "height": p.data.height,
            "layout": p.data.layout,
            "palette": p.data.palette,
        },
    ),
    Command(
        "evaluate",
        "components.evaluate:run",
        help="score generated val images with the frozen segmenter",
        description="Generate the val split, segment generated and real photos, write "
        "pixel accuracy / mean IoU and per-class IoU, register the generator in MLflow.",
        options=(
            opt("--checkpoint", type=_location, required=True),
            opt("--segmenter", type=_location, required=True),
            opt("--data", type=_location, required=True),
            opt("--out", type=_location, required=True),
            opt("--data-summary", type=_location, help="validate's summary.json (dataset hash)"),
            TRACKING,
            PARAMS,
        ),
        derive=lambda o, p: {
            "params": p.evaluate,
            "layout": p.data.layout,
            "experiment": p.tracking.experiment,
            "palette": p.data.palette,
        },
    ),
    Command(
        "promote",
        "components.promote:run",
        help="move the 'champion' alias to a version if it beats the champion",
        description="Gate a registered generator version on its metric: it becomes the "
        "champion only if it beats the current one by more than promote.min_delta (the "
        "first model always does; a tie does not); the reason is recorded on the version.",
        options=(
            opt("--registration", type=_location, help="export's registration.json"),
            opt(
                "--model-name",
                dest="name",
                metavar="MODEL_NAME",
                help="default: evaluate.model_name",
            ),
            opt("--version", help="default: the newest version"),
            opt("--min-delta", type=float, default=None, help="default: promote.min_delta"),
            opt("--out", type=_location, help="write the decision as JSON here"),
            TRACKING_URI,
            PARAMS,
        ),
        derive=lambda o, p: {
            "name": o["name"] or p.evaluate.model_name,
            "metric": p.promote.metric,
            "min_delta": p.promote.min_delta if o["min_delta"] is None else o["min_delta"],
        },
    ),
    Command(
        "export",
        "components.export:run",
        help="export the generator to ONNX (label ids in, image out)",
        description="Export the whole generator as one ONNX graph taking raw label ids "
        "(+ instance ids, + features); check it against PyTorch with onnxruntime; write an "
        "fp16 copy for GPU serving; log it to MLflow as a pyfunc model (the ONNX graph "
        "predicts, the checkpoint is an artifact) and, with --evaluation, register it.",
        options=(
            opt("--checkpoint", type=_location, required=True),
            opt("--out", type=_location, required=True, help="model.onnx to write"),
            opt("--no-fp16", dest="fp16", action="store_false", help="skip the fp16 copy"),
            opt(
                "--evaluation",
                type=_location,
                help="evaluate's evaluation.json: register the servable model as a new "
                "version of the generator with these scores (registration.json beside --out)",
            ),
            opt(
                "--quantize",
                choices=["int8"],
                help="also write <out>_int8.onnx: static int8 (QDQ, per-channel), calibrated "
                "on --data's training label maps",
            ),
            opt("--data", type=_location, help="dataset whose train split calibrates int8"),
            opt("--calibration-samples", type=_positive_int, default=16),
            TRACKING,
            PARAMS,
        ),
        derive=lambda o, p: {
            "experiment": p.tracking.experiment,
            "tracking_optional": p.tracking.optional,
            "layout": p.data.layout,
        },
    ),
    Command(
        "edit",
        "components.edit:run",
        help="semantic manipulation: edit a label map and generate the result",
        description="Apply edits (relabel, add, remove, style; format in model/editing.py "
        "and the README) to one label/instance map pair and generate before/after images; "
        "--samples K renders K variations with other cluster centres.",
        options=(
            opt("--checkpoint", type=_location, required=True),
            opt("--labels", type=_location, required=True, help="one label-id PNG"),
            opt("--instances", type=_location, required=True, help="its instance-id PNG"),
            opt("--edits", type=_location, help="EDITS.json (none: just render / sample)"),
            opt("--out", type=_location, required=True),
            opt("--samples", type=_positive_int, default=0, help="variations to render (K >= 1)"),
            opt("--seed", type=int, default=0),
            ENGINE,
        ),
    ),
    Command(
        "serve",
        "components.serve.server:run",
        help="HTTP API (ONNX Runtime) and web editor for a model",
        description="Serve a checkpoint (exported to ONNX on start, cached), an ONNX file or "
        "models:/<name>@<alias>: POST /v1/generate, /v1/edit; GET /v1/classes, /v1/styles, "
        "/healthz, /metrics; OpenAPI at /docs; the web editor at /.",
        options=(
            opt("--model", required=True, help="checkpoint, .onnx file or models:/NAME@ALIAS"),
            opt("--host", default="127.0.0.1", help="default 127.0.0.1 (0.0.0.0 in a pod)"),
            opt("--port", type=int, default=8080),
            opt("--workers", type=_positive_int, default=2, help="model calls at once"),
            opt("--queue", type=int, default=8, help="waiting requests; beyond: 503"),
            opt("--threads", type=int, default=0, help="ONNX Runtime threads a call (0: auto)"),
            opt("--data", type=Path, help="dataset whose samples the editor lists"),
            opt("--follow-alias", action="store_true", help="reload when the alias moves"),
            opt("--poll-s", type=float, default=30.0, help="alias poll interval (seconds)"),
            opt("--max-bytes", type=_positive_int, default=32 * 2**20, help="request body"),
            opt("--max-pixels", type=_positive_int, default=2048 * 2048, help="one map"),
            TRACKING_URI,
        ),
    ),
    Command(
        "pipeline compile",
        "pipelines.commands:compile_ir",
        help="write the pipeline IR YAML",
        description="Write the kfp v2 IR YAML (two documents: the pipeline and its "
        "kfp-kubernetes settings) for upload to Kubeflow Pipelines.",
        options=(
            opt("--out", type=Path, default=Path("pipeline.yaml"), help="default: pipeline.yaml"),
            PIPELINE_PARAMS,
            CLUSTER,
        ),
    ),
    Command(
        "pipeline run",
        "pipelines.commands:run_local",
        help="run the whole DAG on this machine (kfp.local)",
        options=(
            opt("--local", action="store_true", required=True, help="(required)"),
            opt("--pipeline-root", type=Path, default=Path("data/kfp"), help="where artifacts go"),
            opt(
                "--runner",
                choices=["subprocess", "docker"],
                default="subprocess",
                help="subprocess: tasks in this environment (default); docker: each task "
                "in the project image (kfp DockerRunner, host network; `make images`)",
            ),
            opt("--image", help="--runner docker: the CPU steps' image (pix2pixhd-cpu:local)"),
            opt("--gpu-image", help="--runner docker: training's image (pix2pixhd-cuda:local)"),
            PIPELINE_PARAMS,
            PIPELINE_ARGS,
        ),
    ),
    Command(
        "pipeline submit",
        "pipelines.commands:submit",
        help="submit a run to Kubeflow Pipelines",
        options=(
            opt("--host", required=True, help="KFP API endpoint URL"),
            opt("--experiment", default="pix2pixhd"),
            opt("--run-name", default=None),
            opt("--kfp-namespace", default=None, help="multi-user: profile namespace"),
            PIPELINE_PARAMS,
            PIPELINE_ARGS,
            CLUSTER,
        ),
    ),
    Command(
        "data synth",
        "components.synth:run",
        help="render the bundled street-scene dataset (Cityscapes layout)",
        description="Render procedural street scenes with Cityscapes label and instance ids.",
        options=(
            opt("--out", type=_location, required=True),
            opt("--num-train", type=int, default=200),
            opt("--num-val", type=int, default=40),
            opt("--size", type=_size, default=(256, 128), help="WIDTHxHEIGHT (default 256x128)"),
            opt("--seed", type=int, default=0),
            opt("--no-cars", dest="cars", action="store_false", help="no cars (a shifted set)"),
            opt("--trees", type=float, default=1.0, help="scale the number of trees"),
        ),
        derive=lambda o, p: {"width": o["size"][0], "height": o["size"][1]},
        consumes=("size",),
    ),
    Command(
        "data convert",
        "components.convert:run",
        help="colour-coded label maps (RGB) to label-id maps",
        description="Map every colour of RGB label maps to its label id with a palette; "
        "unknown colours are listed with pixel counts and positions (exit 2, nothing written).",
        options=(
            opt("--palette", required=True, help="cityscapes, or a JSON file of colour: id"),
            opt("--labels", type=Path, required=True, help="directory of colour label maps"),
            opt("--out", type=Path, required=True, help="directory for the id maps"),
        ),
    ),
    Command(
        "validate",
        "components.validate:run",
        help="check a dataset with a Great Expectations suite",
        description="Build a per-sample manifest and validate it; on failure write a report "
        "naming each bad file and exit non-zero; on success write summary.json.",
        options=(
            opt("--data", type=_location, required=True),
            opt("--layout", choices=LAYOUTS, default="auto"),
            opt("--label-nc", type=int, default=None, help="default: data.label_nc"),
            opt("--no-instance-map", dest="use_instance_map", action="store_false"),
            opt(
                "--size-multiple",
                type=_positive_int,
                default=None,
                help="default: the configured model's, "
                "2**(n_downsample_global + n_local_enhancers)",
            ),
            opt("--splits", nargs="+", default=["train", "val"], help="default: train val"),
            opt(
                "--suite",
                type=Path,
                help="expectation suite (JSON, e.g. data/expectations/pix2pixhd.json); "
                "default: the suite generated from the params",
            ),
            opt(
                "--reference",
                type=_location,
                help="a training summary.json: exit 1 when the class frequencies, sizes or "
                "modes drifted from its profile (thresholds: the validate params section)",
            ),
            opt(
                "--write-suite",
                type=Path,
                help="write the suite used (without drift checks) to this file, then validate",
            ),
            PARAMS,
            opt("--out", type=_location, required=True, help="report directory"),
        ),
        derive=_validate_from_params,
    ),
    Command(
        "boundaries",
        "components.boundaries:run",
        help="precompute instance boundary maps",
        description="Write one boundary PNG per instance map (idempotent, parallel).",
        options=(
            opt("--data", type=_location, required=True),
            opt("--layout", choices=LAYOUTS, default="auto"),
            opt("--out", type=_location, required=True),
            opt("--workers", type=_positive_int, default=None),
        ),
    ),
)

#: parents of nested commands: name -> (help, description)
PARENTS: dict[str, tuple[str, str | None]] = {
    "segmenter": ("the frozen segmenter used by evaluate", None),
    "pipeline": (
        "the Kubeflow pipeline: compile, run locally, submit",
        "The same steps as one kfp v2 DAG. compile writes the IR YAML; run executes the "
        "whole DAG here with kfp.local; submit sends it to a Kubeflow Pipelines endpoint. "
        "Pipeline parameters: --arg NAME=VALUE (dataset_uri, num_train, num_val, width, "
        "height, ngf, niter_global, niter_decay_global, niter_local, niter_decay_local, "
        "min_delta, segmenter_weights, tracking_uri, overrides=[section.key=value, ...]).",
    ),
    "data": ("dataset tools (synth, convert)", None),
}


# ---------------------------------------------------------------------------
# building the parser from COMMANDS


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pix2pixhd-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _add_options(p: argparse.ArgumentParser, command: Command) -> None:
    exclusive = {flag: ex for ex in command.mutually_exclusive for flag in ex}
    groups: dict[tuple[str, ...], Any] = {
        ex: p.add_mutually_exclusive_group(required=True) for ex in command.mutually_exclusive
    }
    for item in command.options:
        if isinstance(item, Group):
            g = p.add_argument_group(item.title)
            for o in item.options:
                g.add_argument(*o.flags, **o.kwargs)
        elif item.flags[0] in exclusive:
            groups[exclusive[item.flags[0]]].add_argument(*item.flags, **item.kwargs)
        else:
            p.add_argument(*item.flags, **item.kwargs)


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (what is wrong and where to look), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pix2pixhd",
        description="pix2pixHD (Wang et al., CVPR 2018): semantic label maps to "
        "high-resolution photos, as a reproducible pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    nested: dict[str, Any] = {}
    for command in COMMANDS:
        where, name = sub, command.name
        if " " in command.name:
            parent, name = command.name.split(" ", 1)
            if parent not in nested:
                help_text, description = PARENTS[parent]
                pp = sub.add_parser(parent, help=help_text, description=description)
                nested[parent] = pp.add_subparsers(
                    dest=f"{parent}_command", metavar="ACTION", required=True
                )
            where = nested[parent]
        p = where.add_parser(name, help=command.help, description=command.description)
        _add_options(p, command)
        p.set_defaults(_command=command, command=command.name)
    return parser


# ---------------------------------------------------------------------------
# running a command

#: parsed values that are not options of a command
_GLOBAL = {"_command", "command", "verbose", "quiet", *(f"{p}_command" for p in PARENTS)}


def call(command: Command, options: dict[str, Any]) -> dict[str, Any]:
    """Call ``command.target`` with the options it accepts (by name), then what
    ``command.derive`` returns (params-derived values win over same-named options)."""
    module, name = command.target.split(":")
    func = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        kwargs = dict(options)  # run(..., **group) takes every option
    else:
        kwargs = {k: v for k, v in options.items() if k in accepted}
        unused = set(options) - set(kwargs) - {"params_file", "overrides", *command.consumes}
        if unused:  # a programming error in COMMANDS, not a user error
            raise TypeError(f"{command.name}: options {sorted(unused)} feed no parameter")
    if command.derive is not None:
        params = None
        if "params_file" in options and "overrides" in options:
            from components.params import load_params

            params = load_params(options["params_file"], options["overrides"])
        kwargs.update(command.derive(options, params))
    return func(**kwargs)


@contextlib.contextmanager
def _staged(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
    """Arguments with ``s3://`` values replaced by local copies (inputs, fetched first)
    or temporary paths (``--out``, published after the step succeeds)."""
    uris = {k: v for k, v in vars(args).items() if isinstance(v, str) and v.startswith("s3://")}
    if not uris:
        yield args
        return
    from components import storage

    if "out" in uris and int(os.environ.get("RANK", "0")) == 0:
        storage.check_writable(uris["out"])  # credentials and bucket, before the work
    with tempfile.TemporaryDirectory(prefix="pix2pixhd-out-") as tmp:
        local = argparse.Namespace(**vars(args))
        fetched: dict[str, Path] = {}  # --labels and --instances often name one prefix
        for name, uri in uris.items():
            if name != "out":
                if uri not in fetched:
                    fetched[uri] = storage.fetch(uri)
                setattr(local, name, fetched[uri])
        out_uri = uris.get("out")
        if out_uri is not None:
            leaf = storage.S3Uri.parse(out_uri).key.rstrip("/").rsplit("/", 1)[-1] or "out"
            local.out = Path(tmp) / "out" / leaf
            local.out.parent.mkdir()
        yield local
        if out_uri is None or int(os.environ.get("RANK", "0")) != 0:
            return  # nothing to publish; in distributed training rank 0 publishes
        if local.out.is_file():  # a file output and what the step wrote beside it
            storage.upload(local.out.parent, out_uri.rstrip("/").rsplit("/", 1)[0])
        else:  # a directory output: its tree under the prefix
            storage.upload(local.out, out_uri)


class _ProjectOrLoud(logging.Filter):
    """Pass the project's records, and third-party ones at WARNING or above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] in PROJECT_LOGGERS


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Project loggers at INFO (``verbose``: DEBUG, ``quiet``: WARNING) on stderr;
    third-party loggers at WARNING (``verbose``: INFO)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_pix2pixhd", False)]:
        root.removeHandler(h)  # main() may run more than once in a process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler._pix2pixhd = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    if not verbose:
        handler.addFilter(_ProjectOrLoud())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While a step runs, whatever prints to stdout (Python or native code) goes to
    stderr, so that stdout carries only the JSON result."""
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:  # no file descriptor 1 (a closed stdout)
        saved = None
    if saved is not None:
        sys.stderr.flush()
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _printable(text: str) -> str:
    """Text any terminal can show: undecodable bytes of file names appear as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _log_dir() -> Path:
    return Path(os.environ.get("PIX2PIXHD_LOG_DIR") or Path(tempfile.gettempdir()) / "pix2pixhd")


def _internal_error(command: str, exc: BaseException) -> int:
    """An unexpected exception (a bug): one line naming it and a log file with the
    traceback, exit status 1. No user sees a raw traceback."""
    import time
    import traceback

    text = "".join(traceback.format_exception(exc))
    where = "stderr (the log directory is not writable)"
    try:
        directory = _log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"pix2pixhd-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"pix2pixhd {command}\n{text}", errors="backslashreplace")
        where = str(path)
    except OSError:
        sys.stderr.write(_printable(text))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    sys.stderr.write(
        _printable(
            f"pix2pixhd {command}: internal error: {type(exc).__name__}: {first} "
            f"(traceback in {where})\n"
        )
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 never crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)  # usage errors: one line, SystemExit(2)
    configure_logging(args.verbose, args.quiet)
    from model.errors import Pix2PixHDError

    command: Command = args._command
    try:
        with _staged(args) as staged, _stdout_to_stderr():
            options = {k: v for k, v in vars(staged).items() if k not in _GLOBAL}
            result = call(command, options)
    except Pix2PixHDError as exc:
        sys.stderr.write(_printable(f"pix2pixhd {args.command}: error: {exc}\n"))
        return getattr(exc, "exit_code", 2)  # 2, or 1 for a finding such as drift
    except KeyboardInterrupt:
        sys.stderr.write(f"pix2pixhd {args.command}: interrupted\n")
        return 130
    except OSError as exc:  # a full disk, a read-only file system ... outside model.fileio
        from model.fileio import os_error

        user = os_error(exc, exc.filename or "output")
        if user is None:
            return _internal_error(args.command, exc)
        sys.stderr.write(_printable(f"pix2pixhd {args.command}: error: {user}\n"))
        return 2
    except Exception as exc:
        return _internal_error(args.command, exc)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
