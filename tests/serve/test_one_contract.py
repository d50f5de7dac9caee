"""One model, one label map, one seed: one image, whichever way it is asked for.

The serve fixture's model (instance features, cluster centres) through `generate`
(``--onnx``, and the checkpoint on PyTorch), `serve` (POST /v1/generate) and the logged
MLflow pyfunc model (predict, then the documented 8-bit step), at a size the graph cannot
take directly and at sizes below its smallest input; and the logged model loaded where
the project is not installed, without MLflow's type-hint warnings."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from components import export, generate
from components.serve.app import ModelHolder, create_app
from components.serve.engine import Engine, Threads
from model.checkpoint import build_model, load_checkpoint
from tests.serve.conftest import png, scene

SIZES = [(30, 50), (2, 2), (32, 32)]  # not a multiple of 4; under 2 x 4; exactly 32 x 32


def eight_bit(x: np.ndarray) -> np.ndarray:
    """The documented float -> 8-bit step: round((clip(x, -1, 1) + 1) * 127.5)."""
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)


def maps(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    label, inst = scene(h, w)
    if h < 8:  # too small for the scene's layout: a car beside the road
        label[:, : w // 2 + 1], inst[:, : w // 2 + 1] = 26, 26001
    return label, inst


@pytest.fixture(scope="module")
def logged(serve_model, tmp_path_factory):
    """The fixture's graph and checkpoint logged as `export` logs them (a local store)."""
    import mlflow

    root = tmp_path_factory.mktemp("pyfunc")
    model = build_model(load_checkpoint(serve_model["checkpoint"]))
    signature, example = export.serving_signature(model, centres=True)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("contract", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=exp):
            info = export.log_servable_model(serve_model["onnx"], signature, example)
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "m"))
        yield Path(local), mlflow.pyfunc.load_model(local)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("h,w", SIZES)
def test_generate_serve_and_pyfunc_give_one_image(serve_model, logged, tmp_path, h, w):
    label, inst = maps(h, w)
    folder = tmp_path / "maps"
    folder.mkdir()
    Image.fromarray(label).save(folder / "a_gtFine_labelIds.png")
    Image.fromarray(inst).save(folder / "a_gtFine_instanceIds.png")
    seed = 3
    images = {}
    for name, kw in (
        ("onnx", {"checkpoint": None, "onnx": serve_model["onnx"]}),
        ("torch", {"checkpoint": serve_model["checkpoint"], "engine": "torch"}),
    ):
        generate.run(labels=folder, out=tmp_path / name, instances=folder, seed=seed, **kw)
        images[name] = np.asarray(Image.open(tmp_path / name / "a.png"))

    client = TestClient(create_app(ModelHolder(Engine(serve_model["onnx"], Threads(1)))))
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    r = client.post("/v1/generate", files=files, data={"seed": str(seed)})
    assert r.status_code == 200, r.text
    images["serve"] = np.asarray(Image.open(io.BytesIO(r.content)))

    _, pyfunc = logged
    out = pyfunc.predict(
        {
            "label": label[None, None].astype(np.int64),
            "instance": inst[None, None].astype(np.int64),
        },
        params={"seed": seed},
    )
    assert out.shape == (1, 3, h, w) and out.dtype == np.float32
    images["pyfunc"] = eight_bit(out[0]).transpose(1, 2, 0)

    for name, image in images.items():
        assert image.shape == (h, w, 3), name
    assert np.array_equal(images["onnx"], images["serve"])
    assert np.array_equal(images["onnx"], images["pyfunc"])
    # the checkpoint on PyTorch draws the same features: the same image within the
    # export's parity (one 8-bit level)
    assert np.abs(images["torch"].astype(int) - images["onnx"].astype(int)).max() <= 1


def test_seed_draws_per_instance_in_every_path(serve_model, logged):
    """The car's look follows the seed (the draw is seeded, not fixed) in the pyfunc model
    as in serve."""
    label, inst = maps(32, 64)
    engine = Engine(serve_model["onnx"], Threads(1))
    _, pyfunc = logged
    car = inst == 26001
    feeds = {"label": label[None, None].astype(np.int64), "instance": inst[None, None].astype(int)}
    by_seed = {}
    for seed in range(6):
        served = engine.generate(label, inst, seed)
        predicted = eight_bit(pyfunc.predict(feeds, params={"seed": seed})[0]).transpose(1, 2, 0)
        assert np.array_equal(served, predicted)
        by_seed[seed] = served[car]
    assert len({v.tobytes() for v in by_seed.values()}) > 1


LOAD_WITHOUT_PROJECT = """
import sys, warnings
sys.path.append({site!r})
warnings.simplefilter("always")
import numpy as np
import mlflow.pyfunc
m = mlflow.pyfunc.load_model({model!r})
import components.pyfunc_model, model.model_contract
for mod in (components.pyfunc_model, model.model_contract):
    assert mod.__file__.startswith({model!r}), mod.__file__
assert "torch" not in sys.modules
label = np.full((1, 1, 2, 3), 26, np.int64)
out = m.predict({{"label": label, "instance": label * 1000 + 1}}, params={{"seed": 4}})
np.save({out!r}, out)
"""


def test_logged_model_loads_without_the_project_and_without_type_hint_warnings(logged, tmp_path):
    local, pyfunc = logged
    code = set(str(p.relative_to(local)) for p in (local / "code").rglob("*.py"))
    assert code == {
        "code/components/__init__.py",
        "code/components/pyfunc_model.py",
        "code/model/__init__.py",
        "code/model/errors.py",
        "code/model/model_contract.py",
    }
    script = LOAD_WITHOUT_PROJECT.format(
        site=sysconfig.get_paths()["purelib"], model=str(local), out=str(tmp_path / "out.npy")
    )
    # -S: no site-packages .pth files, so no editable install of the project; cwd outside it
    done = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "type hint" not in done.stderr.lower(), done.stderr[-3000:]
    label = np.full((1, 1, 2, 3), 26, np.int64)
    here = pyfunc.predict({"label": label, "instance": label * 1000 + 1}, params={"seed": 4})
    assert np.array_equal(np.load(tmp_path / "out.npy"), here)
    mlmodel = json.dumps(pyfunc.metadata.signature.to_dict())
    assert pyfunc.metadata.signature.inputs.input_names() == ["label", "instance"], mlmodel
