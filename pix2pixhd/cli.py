"""The `pix2pixhd` command line, generated from the step declarations.

Each subcommand is one :class:`components.steps.Step`: its options are its ``run()``
parameters (names, types, defaults and help read from the signature and docstring of
``run()``, without importing the step, so start-up stays light), grouped as

- inputs and outputs: the step's locations (a path, or an ``s3://`` URI, staged),
- params: ``--params``/``--set`` and, for every parameter that params.yaml supplies, a
  shorthand (``--width 256`` is ``--set data.width=256``; ``--size-multiple 16``
  replaces the value the params imply),
- tracking and the step's other options.

An option that is not given is not passed: ``run()``'s own default applies. The
dispatcher loads the params, asks :func:`components.steps.arguments` for ``run()``'s
keyword arguments (the same function the DVC and Kubeflow drivers use) and calls it.

Output: stdout carries only the command's result, one JSON object (so
``pix2pixhd export ... > out.json`` is valid JSON); logs and anything a library prints
go to stderr. Logging is configured for the project's own loggers (INFO; ``-v`` DEBUG,
``-q`` warnings only); third-party loggers stay at WARNING unless ``-v``. Errors the user
can fix print one line and exit with status 2 (a finding such as drift: 3), without a
traceback.

Adding a subcommand: write ``components/<step>.py`` with ``run(...) -> dict`` (keyword
arguments with annotations, a docstring whose ``Args:`` section names each) and append a
``Step`` to ``components.steps.STEPS``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from components.signature import REQUIRED, Param, Source, description
from components.steps import STEPS, Step

log = logging.getLogger("pix2pixhd")

#: the loggers this command configures (library code logs under its module name)
PROJECT_LOGGERS = ("pix2pixhd", "components", "model", "pipelines")

#: parents of nested commands: name -> help
PARENTS: dict[str, str] = {
    "segmenter": "the frozen segmenter used by evaluate",
    "pipeline": "the whole DAG: Kubeflow (compile, run locally, submit) and dvc.yaml",
    "data": "dataset tools (synth, convert)",
    "metrics": "scores judged against the reproducibility band",
}

#: a parameter typed with one of these dataclasses expands into one option per field
EXPANDED = {"ClusterSettings": "pipelines.settings"}

# ---------------------------------------------------------------------------
# argument types


def _location(text: str) -> Path | str:
    """A local path, or an ``s3://`` URI kept as text (staged by ``components.storage``)."""
    return text if text.startswith("s3://") else Path(text)


def _int_from(low: int, what: str):
    """An argparse type: an integer >= ``low`` (``what`` names it in the error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_positive_int = _int_from(1, "a positive integer")
_count = _int_from(0, "an integer >= 0")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
    return value


class _OldFlag(argparse.Action):
    """A flag that was renamed: one line saying what to write instead."""

    def __init__(self, *args: Any, hint: str = "", **kwargs: Any) -> None:
        self.hint = hint
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        parser.error(self.hint)


# ---------------------------------------------------------------------------
# options from a parameter


def _option(step: Step, p: Param, location: bool) -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` flags and keywords of parameter ``p`` (default: not given)."""
    ann = p.annotation.replace(" | None", "").replace("None | ", "")
    kw: dict[str, Any] = {"dest": p.name, "default": argparse.SUPPRESS}
    help_text = p.doc or ""
    flags = [_flag(step, p)]
    if ann.startswith("Literal["):
        kw["choices"] = list(
            ast.literal_eval(ann[len("Literal") :].replace("[", "(", 1)[:-1] + ",)")
        )
        kw["metavar"] = "{" + ",".join(map(str, kw["choices"])) + "}"
    elif ann == "bool":
        kw["action"] = "store_false" if p.default is True else "store_true"
        if p.default is True and help_text:  # --no-x turns off what the docstring describes
            help_text = f"turn off: {help_text}"
    elif location or ann in ("Path", "str | Path", "Path | str"):
        kw["type"] = _location  # any path may be an s3:// URI: staged like the locations
        kw["metavar"] = "PATH"
    elif ann == "PositiveInt":
        kw["type"] = _positive_int
    elif ann == "int":
        kw["type"] = _count
    elif ann == "float":
        kw["type"] = _finite_float
    elif ann.startswith("tuple["):
        kw["nargs"] = "+"
    elif ann.startswith("list["):
        kw["action"] = "append"
    if p.required and not location and p.name not in _one_of(step):
        kw["required"] = True
    if location and p.required and p.name not in _one_of(step):
        kw["required"] = True
    shown = p.default
    if isinstance(shown, Source) and shown.text.startswith("Path("):
        shown = ast.literal_eval(shown.text[len("Path(") : -1])
    elif isinstance(shown, Source) and shown.text.isidentifier():
        shown = None  # a constant's name says nothing: the docstring gives the value
    if shown not in (REQUIRED, None, False, True, "", ()) and "help" not in kw:
        help_text += f" (default: {', '.join(shown) if isinstance(shown, tuple) else shown})"
    kw["help"] = help_text.replace("``", "`").replace("%", "%%").strip() or None
    return flags, kw


def _flag(step: Step, p: Param) -> str:
    from components.steps import flag

    return flag(step, p.name, p.default if p.annotation.startswith("bool") else None)


def _one_of(step: Step) -> set[str]:
    return {n for group in step.one_of for n in group}


def _fields(module: str, name: str) -> list[Param]:
    """The options of a dataclass parameter: its fields of plain types, with the
    schema's comments as help (``components.params_doc.field_docs``)."""
    import dataclasses
    import importlib

    from components.params_doc import field_docs

    cls = getattr(importlib.import_module(module), name)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        ann = str(f.type)
        if ann.startswith(("Mapping", "dict")):
            continue
        default = f.default if f.default is not dataclasses.MISSING else REQUIRED
        out.append(Param(f.name, ann, default, docs.get(f.name, "")))
    return out


def _bound_help(step: Step, p: Param) -> str:
    binding = step.bind[p.name]
    doc = p.doc.rstrip(".")
    if isinstance(binding, str):
        value = "false" if p.default is True else "true" if p.annotation == "bool" else "VALUE"
        return f"{doc} (shorthand for --set {binding}={value})".strip()
    return f"{doc} (default: what the params imply)".strip()


def _add_step(parser: argparse.ArgumentParser, step: Step) -> None:
    locations = step.locations()
    groups = {
        "io": parser.add_argument_group("inputs and outputs"),
        "params": parser.add_argument_group("params"),
        "tracking": parser.add_argument_group("tracking"),
        "options": parser,  # argparse's own "options" group
    }
    exclusive: dict[str, Any] = {}
    for group in step.one_of:  # one required argparse group per declared set
        g = groups["io"].add_mutually_exclusive_group(required=True)
        exclusive.update(dict.fromkeys(group, g))
    if step.bind:
        groups["params"].add_argument(
            "--params",
            dest="params_file",
            metavar="PARAMS",
            type=_location,
            default=None,
            help="params.yaml (default: the built-in paper defaults)",
        )
        groups["params"].add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one value, e.g. --set train_global.niter=10 (repeatable)",
        )
    for p in step.parameters():
        if p.name in step.internal:
            continue
        if p.name in step.bind:
            ann = p.annotation.replace(" | None", "")
            if ann not in (
                "int",
                "PositiveInt",
                "float",
                "str",
                "bool",
                "Path",
                "str | Path",
            ) and not (ann.startswith("Literal[") or ann.startswith("tuple[")):
                continue  # a whole params section: --params / --set
            flags, kw = _option(step, p, False)
            kw.pop("required", None)
            kw["help"] = _bound_help(step, p)
            groups["params"].add_argument(*flags, **kw)
            continue
        cls = p.annotation.replace(" | None", "")
        if cls in EXPANDED:
            cluster = parser.add_argument_group(p.name)
            for f in _fields(EXPANDED[cls], cls):
                flags, kw = _option(step, f, False)
                kw["dest"] = f"{p.name}.{f.name}"
                if "choices" not in kw and "action" not in kw:
                    kw["metavar"] = f.name.upper()
                kw.pop("required", None)
                cluster.add_argument(*flags, **kw)
            continue
        location = p.name in locations
        flags, kw = _option(step, p, location)
        if p.name in step.positional:
            kw.pop("dest")
            kw.pop("default")
            kw.pop("required", None)
            kw["metavar"] = p.name.upper()
            parser.add_argument(p.name, **kw)
            continue
        if p.name in exclusive:
            kw.pop("required", None)
            exclusive[p.name].add_argument(*flags, **kw)
        elif location:
            groups["io"].add_argument(*flags, **kw)
        elif p.name in ("tracking", "tracking_uri", "orchestrator"):
            groups["tracking"].add_argument(*flags, **kw)
        else:
            groups["options"].add_argument(*flags, **kw)
    for old, hint in step.old_flags.items():
        parser.add_argument(
            old,
            action=_OldFlag,
            hint=hint,
            nargs="?",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


# ---------------------------------------------------------------------------
# the parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pix2pixhd-pipeline")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line (what is wrong and where to look), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pix2pixhd",
        allow_abbrev=False,  # a flag is spelled out: docs that abbreviate it fail
        description="pix2pixHD (Wang et al., CVPR 2018): semantic label maps to "
        "high-resolution photos, as a reproducible pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    import shtab

    shtab.add_argument_to(  # eval "$(pix2pixhd --print-completion bash)"
        parser, "--print-completion", help="print a bash/zsh/tcsh completion script, then exit"
    )
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    loud.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    nested: dict[str, Any] = {}
    for step in STEPS:
        where, name = sub, step.name
        if " " in step.name:
            parent, name = step.name.split(" ", 1)
            if parent not in nested:
                pp = sub.add_parser(parent, help=PARENTS[parent], description=PARENTS[parent])
                nested[parent] = pp.add_subparsers(
                    dest=f"{parent}_command", metavar="ACTION", required=True
                )
            where = nested[parent]
        p = where.add_parser(
            name,
            allow_abbrev=False,
            help=step.help.replace("``", "`"),
            description=description(step.target).replace("``", "`"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_step(p, step)
        p.set_defaults(_step=step, command=step.name)
    return parser


# ---------------------------------------------------------------------------
# running a command

#: parsed values that are not options of a command
_GLOBAL = {"_step", "command", "verbose", "quiet", "print_completion"}
_GLOBAL |= {f"{p}_command" for p in PARENTS}


def run_arguments(step: Step, options: dict[str, Any]) -> dict[str, Any]:
    """``run()``'s keyword arguments for the parsed ``options``: shorthands of params keys
    become overrides, the params are loaded, :func:`components.steps.arguments` (what
    the DVC and Kubeflow drivers call too) does the rest."""
    from components import steps

    given = dict(options)
    params = None
    if step.bind:
        from components.params import load_params

        params_file = given.pop("params_file", None)
        overrides = list(given.pop("overrides", []))
        for name, binding in step.bind.items():
            if name in given and isinstance(binding, str):
                overrides.append(f"{binding}={json.dumps(_plain(given.pop(name)))}")
        params = load_params(params_file, overrides)
    expanded: dict[str, dict[str, Any]] = {}
    for key in [k for k in given if "." in k]:
        group, name = key.split(".", 1)
        expanded.setdefault(group, {})[name] = given.pop(key)
    for p in step.parameters():
        if p.annotation.replace(" | None", "") in EXPANDED:
            given[p.name] = expanded.get(p.name, {})
        elif p.required and p.name not in given and p.name in _one_of(step):
            given[p.name] = None
    return steps.arguments(step, params, given)


def call(step: Step, options: dict[str, Any]) -> dict[str, Any]:
    """Run ``step`` with the parsed ``options``."""
    from components import steps

    return steps.run(step, run_arguments(step, options))


def _plain(value: Any) -> Any:
    return (
        str(value)
        if isinstance(value, Path)
        else list(value)
        if isinstance(value, tuple)
        else value
    )


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
    # MLflow logs through a handler of its own (INFO: database migrations, experiment
    # creation), past the filter above: the same rule through its own setting
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        if "mlflow" in sys.modules:
            logging.getLogger("mlflow").setLevel(logging.WARNING)


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


#: the longest error line printed (a message quoting a huge value is cut, never flooded)
MAX_ERROR_CHARS = 300


def _error_line(command: str, message: object) -> str:
    text = " ".join(str(message).split())
    line = f"pix2pixhd {command}: error: {text}"
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 14] + " ... (cut)"
    return _printable(line + "\n")


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
    from components.tracking import configure_client

    configure_client()  # tracking servers: seconds, not minutes, when one is down
    from model.errors import Pix2PixHDError

    step: Step = args._step
    try:
        with _staged(args) as staged, _stdout_to_stderr():
            options = {k: v for k, v in vars(staged).items() if k not in _GLOBAL}
            result = call(step, options)
    except Pix2PixHDError as exc:
        sys.stderr.write(_error_line(args.command, exc))
        return getattr(exc, "exit_code", 2)  # 2, or 3 for a finding such as drift
    except KeyboardInterrupt:
        sys.stderr.write(f"pix2pixhd {args.command}: interrupted\n")
        return 130
    except OSError as exc:  # a full disk, a read-only file system ... outside model.fileio
        from model.fileio import os_error

        user = os_error(exc, exc.filename or "output")
        if user is None:
            return _internal_error(args.command, exc)
        sys.stderr.write(_error_line(args.command, user))
        return 2
    except Exception as exc:
        return _internal_error(args.command, exc)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
