"""The generic CLI: options feed run() parameters by name, --version, logging scope,
stdout kept for the JSON result; the pipeline parameter map; the torch-free params."""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from components import cli
from components.params import params_from_text
from pipelines.parameters import PARAM_KEYS, as_overrides, pipeline_defaults


def _dests(command: cli.Command) -> set[str]:
    opts = [o for item in command.options for o in getattr(item, "options", (item,))]
    return {o.kwargs.get("dest") or o.flags[0].lstrip("-").replace("-", "_") for o in opts}


@pytest.mark.parametrize("command", cli.COMMANDS, ids=lambda c: c.name)
def test_every_option_feeds_a_parameter_of_its_target(command):
    module, name = command.target.split(":")
    params = inspect.signature(getattr(__import__(module, fromlist=[name]), name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    loose = _dests(command) - set(params) - {"params_file", "overrides", *command.consumes}
    assert not loose


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
    cmd = [sys.executable, "-m", "components.cli", "data", "synth", "--out", str(tmp_path / "d")]
    cmd += ["--num-train", "1", "--num-val", "1", "--size", "64x32"]
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
