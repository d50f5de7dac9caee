"""The documented MLflow model examples, as written ("The champion: load, predict,
serve", in the README or the guide it moved to), against a real registered model: the
pyfunc snippet (in a fresh interpreter: loading and predicting print no warning) and
`mlflow models serve --env-manager local` + the curl request with its 2x2 maps, on a
loopback port. Only the tracking URI and the port are replaced."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from components import export
from components.registry import ALIAS, promote
from model.checkpoint import model_payload, save_checkpoint
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config
from tests.servers import free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
HEADING = "The champion: load, predict, serve"


def _blocks() -> tuple[str, str]:
    """The section's python and bash code blocks (README.md or a docs/ page)."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = page.read_text()
        found = re.search(rf"^(#+) {re.escape(HEADING)}\n", text, re.M)
        if found:
            break
    else:
        raise AssertionError(f"no section '{HEADING}' in README.md or docs/")
    lines, fenced = [], False
    for line in text[found.end() :].splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if not fenced and re.match(rf"#{{1,{len(found.group(1))}}} ", line):
            break  # the next section (a "# comment" inside a code block is not one)
        lines.append(line)
    section = "".join(lines)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return python, bash


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """A tiny Cityscapes-label model (35 ids, instance maps), exported, registered under
    the documented name and promoted, in a SQLite store."""
    import mlflow

    root = tmp_path_factory.mktemp("readme")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("readme", artifact_location=str(root / "a"))
    python, _ = _blocks()
    name = re.search(r"models:/([\w-]+)@champion", python).group(1)
    torch.manual_seed(0)
    model = Pix2PixHD(tiny_config(label_nc=35), with_discriminator=False).eval()
    ckpt = save_checkpoint(root / "model.pth", model_payload(model))
    evaluation = root / "evaluation.json"
    evaluation.write_text(
        json.dumps(
            {
                "model_name": name,
                "checkpoint_sha256": export.file_sha256(ckpt),
                "dataset_hash": "e" * 64,
                "scores": {"mean_iou": 0.3, "pixel_accuracy": 0.6},
            }
        )
    )
    summary = export.run(
        ckpt,
        root / "export" / "model.onnx",
        fp16=False,
        tracking_uri=uri,
        evaluation=evaluation,
        experiment="readme",
    )
    assert promote(name, summary["registered"]["version"], tracking_uri=uri)["promoted"]
    yield uri, name, root
    mlflow.set_tracking_uri("")


def test_documented_pyfunc_snippet_loads_and_predicts_without_warnings(champion):
    uri, name, root = champion
    python, _ = _blocks()
    assert '"http://127.0.0.1:5000"' in python  # the documented server, replaced by the store
    code = python.replace('"http://127.0.0.1:5000"', repr(uri))
    code += "\nprint(image.shape, image.dtype, float(image.min()), float(image.max()))\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": ""},  # as a user's script: the installed project
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.strip()
    assert out.startswith("(1, 3, 128, 256) float32"), out
    low, high = map(float, out.split()[-2:])
    assert -1 <= low <= high <= 1
    assert "warn" not in done.stderr.lower(), done.stderr[-3000:]


def test_documented_mlflow_models_serve_and_curl(champion, tmp_path):
    uri, name, root = champion
    _, bash = _blocks()
    lines = bash.replace("\\\n", " ").splitlines()
    (serve_line,) = [line for line in lines if line.startswith("mlflow models serve")]
    (curl_line,) = [line for line in lines if line.startswith("curl ")]
    serve = shlex.split(serve_line)
    assert serve[serve.index("-m") + 1] == f"models:/{name}@{ALIAS}"
    assert "--env-manager" in serve and serve[serve.index("-h") + 1] == "127.0.0.1"
    port = free_port()
    serve[serve.index("-p") + 1] = str(port)
    venv_bin = Path(sys.executable).parent  # `source .venv/bin/activate`
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(venv_bin / serve[0]), *serve[1:]],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 90, proc)
        except (RuntimeError, TimeoutError) as err:
            log.flush()
            tail = (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"{err}; server log:\n{tail}") from None
        curl = shlex.split(curl_line.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        done = subprocess.run(curl, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        predictions = np.asarray(json.loads(done.stdout)["predictions"], np.float32)
        assert predictions.shape == (1, 3, 2, 2)  # a 2x2 map: padded inside, cropped back
        assert np.abs(predictions).max() <= 1
        # the same image as the model loaded here
        import mlflow

        payload = json.loads(curl[curl.index("-d") + 1])["inputs"]
        mlflow.set_tracking_uri(uri)
        local = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS}").predict(
            {k: np.asarray(v, np.int64) for k, v in payload.items()}
        )
        assert np.abs(local - predictions).max() < 1e-5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # mlflow and its uvicorn: their own group
        proc.wait(timeout=30)
        log.close()
