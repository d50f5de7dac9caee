"""The command line generated from the step declarations: every run() parameter is an
option with help, the same arguments from the CLI, DVC and Kubeflow drivers, dvc.yaml
checked, old flags answered with a hint; --version, logging scope, stdout kept for the
JSON result; the pipeline parameter map; the torch-free params; no import cycle."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import steps
from components.params import Params, params_from_text
from pipelines.parameters import PARAM_KEYS, as_overrides, pipeline_defaults
from pix2pixhd import cli


def test_version_and_exclusive_verbosity(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("pix2pixhd ")
    with pytest.raises(SystemExit):
        cli.main(["-v", "-q", "boundaries", "--data", "x", "--out", "y"])


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    for name in cli.PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize(
    ("flags", "project_info", "third_info"),
    [({}, True, False), ({"quiet": True}, False, False), ({"verbose": True}, True, True)],
)
def test_logging_is_configured_for_the_project_only(
    capsys, restore_logging, flags, project_info, third_info
):
    cli.configure_logging(**flags)
    logging.getLogger("components.somestep").info("project-info")
    logging.getLogger("some_library.module").info("third-info")
    logging.getLogger("some_library.module").warning("third-warning")
    err = capsys.readouterr().err
    assert ("project-info" in err) is project_info
    assert ("third-info" in err) is third_info
    assert "third-warning" in err


def test_prints_during_a_step_go_to_stderr(capfd):
    with cli._stdout_to_stderr():
        print("python print")
        os.write(1, b"native write\n")  # what a C library does
    out, err = capfd.readouterr()
    assert out == "" and "python print" in err and "native write" in err


def test_stdout_is_only_the_json_result(tmp_path):
    cmd = [sys.executable, "-m", "pix2pixhd", "data", "synth", "--out", str(tmp_path / "d")]
    cmd += ["--num-train", "1", "--num-val", "1", "--width", "64", "--height", "32"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert json.loads(done.stdout)  # the whole of stdout parses


def test_pipeline_parameters_round_trip_through_the_map():
    text = "data: {width: 96, height: 48}\ntrain_local: {niter: 3}\n"
    params = params_from_text(text)
    defaults = pipeline_defaults(params)
    assert defaults["width"] == 96 and defaults["niter_local"] == 3
    assert set(defaults) == set(PARAM_KEYS)
    assert params_from_text("", as_overrides(defaults)) == params_from_text(
        yaml.safe_dump({"data": {"width": 96, "height": 48}, "train_local": {"niter": 3}})
    )
    changed = params_from_text(text, as_overrides({"ngf": 16}, ["model.generator.ngf=8"]))
    assert changed.model.generator.ngf == 8  # free-form overrides come last and win
    with pytest.raises(KeyError, match="not a pipeline parameter: wdth"):
        as_overrides({"wdth": 1})


def test_params_schema_and_pipeline_map_import_no_torch():
    code = "import components.params, pipelines.parameters, sys; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


ROOT = Path(__file__).resolve().parents[2]


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    for word in name.split():
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


@pytest.mark.parametrize("step", steps.STEPS, ids=lambda s: s.name)
def test_every_run_parameter_is_an_option_with_help(step):
    parser = _subparser(step.name)
    dests = {a.dest.split(".")[0] for a in parser._actions if a.dest != "help"}
    sections = {n for n in step.bind if n not in dests}  # whole sections: --params/--set
    for p in step.parameters():
        assert p.name in dests | sections | set(step.internal), f"{step.name}: {p.name}"
    for a in parser._actions:
        if a.dest != "help" and a.help is not argparse.SUPPRESS:
            assert a.help, f"{step.name} {a.option_strings}: no help"


def _kfp_arguments(task: steps.Task, params_yaml: str) -> dict:
    """What the Kubeflow executor passes, artifacts laid out as DVC lays them out."""
    from types import SimpleNamespace

    from pipelines.executor import given_arguments
    from pipelines.parameters import PARAM_KEYS, pipeline_defaults, step_params

    def artifact(ref: str) -> SimpleNamespace:
        return SimpleNamespace(path=f"data/{steps.split_ref(ref)[0]}", uri="")

    values = {arg: artifact(ref) for arg, ref in task.inputs.items()}
    values["out"] = SimpleNamespace(path=f"data/{task.name}", uri="", metadata={})
    values["tracking_uri"] = ""
    typed = {k: v for k, v in pipeline_defaults(params_from_text(params_yaml)).items()}
    params = step_params(params_yaml, {k: typed[k] for k in PARAM_KEYS}, [])
    return steps.arguments(task.spec, params, given_arguments(task, values))


@pytest.mark.parametrize("task", steps.TASKS, ids=lambda t: t.name)
def test_cli_dvc_and_kubeflow_pass_the_same_arguments(task, tmp_path, monkeypatch):
    """The class of the old drift/min_size divergence: for the same params and paths,
    the dvc.yaml command (through the CLI's parser) and the Kubeflow executor give
    run() the same keyword arguments."""
    import shlex

    monkeypatch.chdir(ROOT)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][task.name]
    words = shlex.split(stage["cmd"])[1:]
    options = vars(cli.build_parser().parse_args(words))
    dvc = cli.run_arguments(task.spec, {k: v for k, v in options.items() if k not in cli._GLOBAL})
    kfp = _kfp_arguments(task, (ROOT / "params.yaml").read_text())
    for d in (dvc, kfp):  # who ran it, and where it is tracked: the drivers' own
        d.pop("orchestrator", None)
        d.pop("tracking_uri", None)

    def plain(d: dict) -> dict:
        out = {}
        for k, v in d.items():
            out[k] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out

    assert plain(dvc) == plain(kfp)
    if task.name == "drift":  # the member of the class that diverged before
        assert "min_size" in dvc


class _Guard:
    """Params that answer only the keys a step declares (dotted prefixes)."""

    def __init__(self, obj, path: str, keys: tuple[str, ...]):
        self._obj, self._path, self._keys = obj, path, keys

    def __getattr__(self, name):
        key = f"{self._path}{name}"
        prop = getattr(type(self._obj), name, None)
        if isinstance(prop, property):  # computed from fields: check what it reads
            return prop.fget(self)
        if any(key == k or key.startswith(k + ".") for k in self._keys):
            return getattr(self._obj, name)
        if any(k.startswith(key + ".") for k in self._keys):
            return _Guard(getattr(self._obj, name), key + ".", self._keys)
        raise AssertionError(f"reads {key}, not declared in params_keys")


@pytest.mark.parametrize("step", [s for s in steps.STEPS if s.bind], ids=lambda s: s.name)
def test_bound_values_read_only_the_declared_params_keys(step):
    keys = step.keys({"stage": "global"})
    guarded = _Guard(Params(), "", keys)
    for name, binding in step.bind.items():
        if isinstance(binding, str):
            assert any(binding == k or binding.startswith(k + ".") for k in keys), binding
        elif binding(Params()) is not Params() and name != "params":
            binding(guarded)


def test_committed_dvc_yaml_is_current_and_a_stale_one_is_named(tmp_path, capsys):
    assert cli.main(["pipeline", "dvc", "--check"]) == 0
    stale = tmp_path / "dvc.yaml"
    text = (ROOT / "dvc.yaml").read_text().replace("--splits val", "--splits train")
    stale.write_text(text)
    capsys.readouterr()
    assert cli.main(["pipeline", "dvc", "--check", "--out", str(stale)]) == 1
    err = capsys.readouterr().err.strip()
    assert "stages.drift.cmd" in err and len(err.splitlines()) == 1


def test_an_old_flag_spelling_gets_a_one_line_hint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["data", "synth", "--out", str(tmp_path / "d"), "--size", "64x32"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "--width W --height H" in err and len(err.splitlines()) == 1


def test_no_import_cycle_and_the_command_line_on_top():
    """Function-level imports included: model < components < pipelines < pix2pixhd."""
    rank = {"model": 0, "components": 1, "pipelines": 2, "pix2pixhd": 3}
    mods = {}
    for top in rank:
        for f in (ROOT / top).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            mods[name] = f
    graph = {}
    for m, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            deps |= {n for n in names if n in mods and n != m}
        graph[m] = deps
        for d in deps:
            assert rank[d.split(".")[0]] <= rank[m.split(".")[0]], f"{m} imports up: {d}"
    seen, stack = set(), set()

    def visit(m, path):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join([*path, m]))
        if m in seen:
            return
        stack.add(m)
        for d in sorted(graph[m]):
            visit(d, [*path, m])
        stack.discard(m)
        seen.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_dvc_deps_follow_the_imports_at_any_depth():
    """Hand-picked: training reads the networks through model.pix2pixhd and tracks with
    components.tracking; rendering the dataset needs neither."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    train = set(stages["train_global"]["deps"])
    assert {"model/networks.py", "components/tracking.py", "data/synth"} <= train
    assert "model/networks.py" not in stages["synth"]["deps"]
    assert stages["evaluate"]["deps"][-1].endswith(".py")  # data first, then the code
    assert "data/drift/manifest.json" in stages["evaluate"]["deps"]  # the drift gate


def test_shell_completion_knows_the_subcommands_and_their_options(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--print-completion", "bash"])
    script = capsys.readouterr().out
    assert exc.value.code == 0
    assert "validate" in script and "--stage" in script and "--size-multiple" in script
