"""The registered generator is an MLflow pyfunc model, against the real tracking stack
(MLflow server on PostgreSQL, artifacts on S3): load and predict at native size, serve
by alias with `mlflow models serve`, `generate --model`, and concurrent promotions from
several processes. (No version churn on a rerun of export: test_cli_train's flow.)"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from components import export
from components.registry import ALIAS, promote
from model.checkpoint import load_checkpoint, model_payload, save_checkpoint
from model.config import GeneratorConfig
from model.pix2pixhd import Pix2PixHD
from pix2pixhd.cli import main
from tests.conftest import tiny_config, write_label_maps
from tests.servers import free_port, wait_http

CFG = tiny_config(
    use_instance_features=True,
    generator=GeneratorConfig(
        ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    ),
)
NAME = "tiny-pix2pixhd"
ROOT = Path(__file__).resolve().parents[2]


def _evaluation(path, ckpt, miou, name=NAME):
    path.write_text(
        json.dumps(
            {
                "model_name": name,
                "checkpoint_sha256": export.file_sha256(ckpt),
                "dataset_hash": "d" * 40,
                "run_id": None,
                "scores": {"mean_iou": miou, "pixel_accuracy": 0.5},
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """A tiny feature model with cluster centres, exported and registered on the server."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    root = tmp_path_factory.mktemp("pyfunc")
    torch.manual_seed(3)
    model = Pix2PixHD(CFG, with_discriminator=False).eval()
    payload = model_payload(model)
    payload["cluster_centers"] = {
        5: torch.tensor([[0.5, -0.5, 0.2], [-0.9, 0.9, 0.0]]),
        3: torch.tensor([[0.1, 0.2, 0.3], [-0.3, 0.0, 0.9]]),
    }
    ckpt = save_checkpoint(root / "model.pth", payload)
    evaluation = _evaluation(root / "evaluation.json", ckpt, 0.4)
    summary = export.run(
        ckpt,
        root / "export" / "model.onnx",
        fp16=False,
        tracking_uri=mlflow_server.url,
        evaluation=evaluation,
        experiment="pyfunc-test",
    )
    yield root, model, ckpt, summary
    mlflow.set_tracking_uri("")


def _maps(n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 6, (n, 1, h, w)).astype(np.int64)
    return label, label * 1000 + rng.integers(0, 2, label.shape)


def test_registered_version_is_a_servable_pyfunc_model(registered, mlflow_uri, tmp_path):
    import mlflow

    root, model, ckpt, summary = registered
    reg = json.loads((root / "export" / "registration.json").read_text())
    assert reg == summary["registered"] and reg["name"] == NAME
    assert promote(NAME, reg["version"], tracking_uri=mlflow_uri)["promoted"]
    uri = f"models:/{NAME}@{ALIAS}"
    loaded = mlflow.pyfunc.load_model(uri)
    sig = loaded.metadata.signature
    assert sig.inputs.input_names() == ["label", "instance"]
    assert (
        sig.outputs.inputs[0].shape == (-1, 3, -1, -1) and sig.params.to_dict()[0]["default"] == 0
    )
    # native size (21 x 27 is not a multiple of 8): padded inside, cropped back
    label, inst = _maps(2, 21, 27)
    out = loaded.predict({"label": label, "instance": inst})
    assert out.dtype == np.float32 and out.shape == (2, 3, 21, 27)
    assert -1 <= out.min() and out.max() <= 1
    again = loaded.predict({"label": label, "instance": inst}, params={"seed": 0})
    other = loaded.predict({"label": label, "instance": inst}, params={"seed": 7})
    assert np.array_equal(out, again) and not np.array_equal(out, other)  # features drawn
    # explicit features through the python model equal PyTorch on edge-padded maps
    feats = np.random.default_rng(1).uniform(-1, 1, (2, 3, 21, 27)).astype(np.float32)
    got = loaded.unwrap_python_model().predict(
        None, {"label": label, "instance": inst, "features": feats}
    )

    def pad(x):
        return torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (0, 3), (0, 5)), mode="edge"))

    with torch.no_grad():
        ref = model.generate(pad(label), pad(inst), features=pad(feats))[:, :, :21, :27]
    assert np.abs(got - ref.numpy()).max() < 1e-4
    # what the model directory holds: what serving needs (the checkpoint is linked)
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "m"))
    files = {os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs}
    assert {"MLmodel", "artifacts/model.onnx", "input_example.json"} <= files
    assert {f for f in files if f.startswith("artifacts/")} == {"artifacts/model.onnx"}
    assert not [f for f in files if f.endswith(".pth")]
    assert {f for f in files if f.startswith("code/")} == {
        "code/components/__init__.py",
        "code/components/pyfunc_model.py",
        "code/model/__init__.py",
        "code/model/errors.py",
        "code/model/model_contract.py",
    }
    reqs = open(os.path.join(local, "requirements.txt")).read().split()
    assert sorted(r.split("==")[0] for r in reqs) == ["mlflow", "numpy", "onnxruntime"]
    assert all("==" in r for r in reqs)
    mv = mlflow.MlflowClient().get_model_version(NAME, reg["version"])
    assert float(mv.tags["mean_iou"]) == 0.4 and mv.tags["checkpoint_sha256"] == (
        export.file_sha256(ckpt)
    )
    assert mv.tags["git_sha"] and mv.run_id
    # the checkpoint, linked: no run logged it, so the export run did (not the model)
    assert mv.tags["checkpoint_uri"] == f"runs:/{mv.run_id}/checkpoint/model.pth"
    got = mlflow.artifacts.download_artifacts(mv.tags["checkpoint_uri"], dst_path=str(tmp_path))
    assert export.file_sha256(got) == export.file_sha256(ckpt)
    assert "mean IoU 0.4000" in mv.description and "d" * 40 in mv.description


def test_registered_version_carries_the_stamped_content_hashes(registered, mlflow_uri, tmp_path):
    """The model version's content_sha256 / onnx_sha256 tags are the hashes stamped in
    the checkpoint and in the ONNX metadata (of the file served, downloaded back)."""
    import mlflow
    import onnx

    from model.onnx_integrity import HASH_KEY, graph_hash

    root, _, ckpt, summary = registered
    mv = mlflow.MlflowClient().get_model_version(NAME, summary["registered"]["version"])
    stamped = load_checkpoint(ckpt)["content_sha256"]
    assert len(stamped) == 64 and mv.tags["content_sha256"] == stamped
    local = mlflow.artifacts.download_artifacts(
        f"models:/{NAME}/{mv.version}", dst_path=str(tmp_path / "m")
    )
    for graph in (root / "export" / "model.onnx", Path(local) / "artifacts" / "model.onnx"):
        proto = onnx.load(str(graph))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert mv.tags["onnx_sha256"] == meta[HASH_KEY] == graph_hash(proto), graph


def test_wrapper_imports_no_torch_and_of_the_project_only_what_it_ships():
    shipped = ("model.errors", "model.model_contract")
    code = (
        "import sys; import components.pyfunc_model; "
        "bad = [m for m in sys.modules if (m == 'torch' or m.startswith(('model.', 'torch.')))"
        f" and m not in {shipped!r}]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_serve_champion_by_alias_and_generate_with_model(registered, mlflow_uri, tmp_path):
    import mlflow

    root, _, _, summary = registered
    promote(NAME, summary["registered"]["version"], tracking_uri=mlflow_uri)
    uri = f"models:/{NAME}@{ALIAS}"
    port = free_port()
    # the cluster's command (infra/k8s/serving), on this model, loopback and one worker
    isvc = yaml.safe_load((ROOT / "infra/k8s/serving/champion-inferenceservice.yaml").read_text())
    (container,) = isvc["spec"]["predictor"]["containers"]
    args = list(container["args"])
    for flag, value in (("-m", uri), ("-h", "127.0.0.1"), ("-p", str(port)), ("-w", "1")):
        args[args.index(flag) + 1] = value
    assert container["command"][0] == "mlflow"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", *container["command"], *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        # mlflow starts `uvicorn` from PATH: the interpreter's bin directory must be on it,
        # as it is in the image and in an activated virtualenv
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        start_new_session=True,
    )

    def post(inputs: dict) -> urllib.request.Request:
        return urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": inputs}).encode(),
            headers={"Content-Type": "application/json"},
        )

    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", 180, proc)
        except (RuntimeError, TimeoutError) as err:
            log.flush()
            tail = (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
            raise AssertionError(f"{err}; server log:\n{tail}") from None
        label, inst = _maps(1, 19, 30, seed=4)
        with urllib.request.urlopen(
            post({"label": label.tolist(), "instance": inst.tolist()}), timeout=60
        ) as resp:
            served = np.asarray(json.loads(resp.read())["predictions"], np.float32)
        assert served.shape == (1, 3, 19, 30)
        local = mlflow.pyfunc.load_model(uri).predict({"label": label, "instance": inst})
        assert np.abs(served - local).max() < 1e-5
        bad = (label + 6).tolist()  # label ids out of the model's range: a 400 that says so
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(post({"label": bad, "instance": inst.tolist()}), timeout=60)
        assert err.value.code == 400 and "ids must be in [0, 6)" in err.value.read().decode()
    finally:
        # the whole process group: uvicorn may outlive an mlflow parent that exited
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()

    # generate --model works like --onnx (same seeds: the same features are drawn)
    labels = write_label_maps(tmp_path / "labels", 2, (20, 36))
    common = ["--labels", str(labels), "--instances", str(labels), "--seed", "5"]
    onnx_path = root / "export" / "model.onnx"
    assert main(["generate", "--onnx", str(onnx_path), "--out", str(tmp_path / "o"), *common]) == 0
    assert main(["generate", "--model", uri, "--out", str(tmp_path / "m"), *common]) == 0
    for i in range(2):
        a = np.asarray(Image.open(tmp_path / "o" / f"s{i}.png"))
        b = np.asarray(Image.open(tmp_path / "m" / f"s{i}.png"))
        assert a.shape == (20, 36, 3) and np.array_equal(a, b)


RACER = """
import pathlib, sys, time
import mlflow
from components.registry import promote, register_generator
uri, name, miou, sync = sys.argv[1], sys.argv[2], float(sys.argv[3]), pathlib.Path(sys.argv[4])
client = mlflow.MlflowClient(uri)
run = client.create_run(client.get_experiment_by_name("race").experiment_id)
version = register_generator(name, run.info.run_id, "generator", {"mean_iou": miou}, {}, uri)
(sync / f"ready-{version}").touch()
while not (sync / "go").exists():  # all promotions start together
    time.sleep(0.02)
promote(name, version, tracking_uri=uri)
"""


def test_concurrent_promotions_from_processes_best_wins(mlflow_uri, tmp_path):
    """Five processes (light: mlflow + the registry module) register and promote at once
    against the PostgreSQL-backed server: every version is kept, the best wins."""
    import time

    import mlflow

    client = mlflow.MlflowClient(mlflow_uri)
    client.create_experiment("race")
    name = "race-model"
    scores = [0.31, 0.52, 0.47, 0.38, 0.50]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, mlflow_uri, name, str(s), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for s in scores
    ]
    deadline = time.monotonic() + 240
    while len(list(tmp_path.glob("ready-*"))) < len(scores) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate()[0] for p in procs]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    failed = [o[-2000:] for o, p in zip(outputs, procs, strict=True) if p.returncode]
    assert not failed, "\n---\n".join(failed)
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(float(v.tags["mean_iou"]) for v in versions) == sorted(scores)  # none lost
    assert all(v.tags.get("promotion") in ("passed", "rejected") for v in versions)
    champion = client.get_model_version_by_alias(name, ALIAS)
    assert float(champion.tags["mean_iou"]) == max(scores)
