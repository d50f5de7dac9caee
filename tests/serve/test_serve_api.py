"""`pix2pixhd serve`'s HTTP API: every endpoint and error, against independent
expectations (the PyTorch model through `generate`'s own code path, `model/editing.py`,
the label table), the bounded pool, reloads on alias moves, and importing without torch."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from components.generate import Generator, generate_batch
from components.serve.app import ModelHolder, ServeConfig, create_app
from components.serve.engine import Engine, Threads
from components.serve.maps import Limits
from model.checkpoint import build_model, load_checkpoint
from model.editing import apply_edits
from model.image_io import label_to_tensor, tensor_to_rgb
from model.labels import LABELS
from pix2pixhd.cli import main
from tests.serve.conftest import CENTRES, REACH, far_from, live, png, scene


@pytest.fixture(scope="module")
def engine(serve_model):
    return Engine(serve_model["onnx"], Threads(1))


@pytest.fixture(scope="module")
def client(engine, serve_model):
    return TestClient(create_app(ModelHolder(engine), ServeConfig(data=serve_model["data"])))


def post_generate(client, label, inst, **data):
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    return client.post("/v1/generate", files=files, data={k: str(v) for k, v in data.items()})


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def torch_reference(checkpoint, label, inst, features) -> np.ndarray:
    """What `pix2pixhd generate` computes (PyTorch, its pad/crop) for given features."""
    ckpt = load_checkpoint(checkpoint)
    gen = Generator.from_model(build_model(ckpt), ckpt["cluster_centers"], torch.device("cpu"))
    sample = {
        "label": label_to_tensor(label),
        "instance": label_to_tensor(inst),
        "features": torch.from_numpy(features),
    }
    return tensor_to_rgb(generate_batch(gen, [sample])[0])


def test_generate_matches_pytorch_at_native_size(client, engine, serve_model):
    label, inst = scene(30, 50)  # not a multiple of the model's 4: padded and cropped back
    r = post_generate(client, label, inst, seed=3)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = decode(r.content)
    assert got.shape == (30, 50, 3)
    # the features the server drew (per instance, from (seed, id)) come from CENTRES
    feats = engine.features(inst.astype(np.int64), 3)
    assert any(np.allclose(feats[:, 15, 10], c) for c in CENTRES[26].numpy())
    ref = torch_reference(serve_model["checkpoint"], label, inst, feats)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert post_generate(client, label, inst, seed=3).content == r.content  # deterministic


def test_styles_choose_the_cluster_of_one_instance(client, engine):
    label, inst = scene(64, 128)
    car = inst == 26001
    images = [
        decode(post_generate(client, label, inst, styles=json.dumps({"26001": k})).content)
        for k in range(3)
    ]
    diff = np.abs(images[0].astype(int) - images[1].astype(int)).max(-1)
    assert diff[car].mean() > 10  # the car's look changed ...
    assert diff[far_from(car, REACH)].max() <= 1  # ... and nothing out of its reach
    feats = engine.features(inst.astype(np.int64), 0, {26001: 2})
    assert np.allclose(feats[:, car], CENTRES[26][2].numpy()[:, None])


@pytest.mark.parametrize(
    "case,status,part,words",
    [
        ("not_png", 400, "label", "not a PNG"),
        ("rgb_label", 400, "label", "mode RGB"),
        ("ids_out_of_range", 400, "label", "[40]"),
        ("size_mismatch", 400, "instance", "differs from the label map"),
        ("no_instance", 400, "instance", "uses instance maps"),
        ("no_label", 422, "label", "required"),
        ("negative_seed", 422, "seed", "greater than or equal"),
        ("bad_styles_json", 400, "styles", "not valid JSON"),
        ("styles_missing_instance", 400, "styles", "not in the instance map"),
        ("styles_cluster_out_of_range", 400, "styles", "class 26 has 3"),
    ],
)
def test_generate_errors_name_the_part(client, case, status, part, words):
    label, inst = scene()
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    data = {}
    if case == "not_png":
        files["label"] = ("l.png", b"GIF89a not a png")
    elif case == "rgb_label":
        files["label"] = ("l.png", png(np.stack([label] * 3, -1)))
    elif case == "ids_out_of_range":
        label[0, 0] = 40
        files["label"] = ("l.png", png(label))
    elif case == "size_mismatch":
        files["instance"] = ("i.png", png(inst[:, :32]))
    elif case == "no_instance":
        del files["instance"]
    elif case == "no_label":
        del files["label"]
    elif case == "negative_seed":
        data["seed"] = "-1"
    elif case == "bad_styles_json":
        data["styles"] = "{26001: 1"
    elif case == "styles_missing_instance":
        data["styles"] = '{"26077": 0}'
    else:
        data["styles"] = '{"26001": 3}'
    r = client.post("/v1/generate", files=files, data=data)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["part"] == part and words in body["error"], body
    assert client.get("/healthz").status_code == 200  # still up


def test_limits_answer_413(engine):
    small = TestClient(
        create_app(ModelHolder(engine), ServeConfig(limits=Limits(max_bytes=4000, max_pixels=1000)))
    )
    label, inst = scene()  # 64x32 = 2048 pixels
    r = post_generate(small, label, inst)
    assert r.status_code == 413 and r.json()["part"] == "label" and "2048 pixels" in r.text
    noise = np.random.default_rng(0).integers(0, 35, (30, 30), dtype=np.uint8)
    files = {"label": ("l.png", png(noise)), "instance": ("i.png", b"\0" * 5000)}
    r = small.post("/v1/generate", files=files)
    assert r.status_code == 413 and r.json()["part"] == "body"

    def chunks():  # no Content-Length: counted while reading
        yield b"x" * 3000
        yield b"x" * 3000

    r = small.post(
        "/v1/generate",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413 and r.json()["part"] == "body"


def test_chunked_body_under_the_limit_is_served(client):
    label, inst = scene()
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    request = httpx.Request("POST", "http://x/v1/generate", files=files)
    body = request.read()

    def chunks():  # no Content-Length: read, counted, then replayed to the form parser
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    headers = {"content-type": request.headers["content-type"]}
    r = client.post("/v1/generate", content=chunks(), headers=headers)
    assert r.status_code == 200 and r.content == post_generate(client, label, inst).content


def edit_request(client, label, inst, edits, masks=None, **data):
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    for name, mask in (masks or {}).items():
        files[name] = (f"{name}.png", png(mask))
    data = {"edits": json.dumps({"edits": edits}), **{k: str(v) for k, v in data.items()}}
    return client.post("/v1/edit", files=files, data=data)


def b64image(text: str) -> np.ndarray:
    return decode(base64.b64decode(text))


def test_edit_applies_editing_and_renders_before_after(client, engine):
    label, inst = scene()
    mask = np.zeros_like(label)
    mask[2:6, 40:60] = 255
    edits = [
        {"op": "add", "mask": "stroke", "label": "bus"},
        {"op": "relabel", "instance": 24001, "to": "car"},
        {"op": "style", "instance": 26001, "cluster": 1},
    ]
    r = edit_request(client, label, inst, edits, {"stroke": mask}, seed=2, samples=2)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = apply_edits(label, inst, {"edits": edits}, 35, lambda name: mask > 0, CENTRES)
    assert np.array_equal(b64image(body["label"]), expected.label)
    assert np.array_equal(b64image(body["instance"]), expected.instance)
    assert body["log"] == expected.log and len(body["samples"]) == 2
    before = decode(post_generate(client, label, inst, seed=2).content)
    assert np.array_equal(b64image(body["before"]), before)
    after = decode(
        post_generate(
            client,
            expected.label.astype(np.uint8),
            expected.instance.astype(np.uint16),
            seed=2,
            styles=json.dumps({"26001": 1}),
        ).content
    )
    assert np.array_equal(b64image(body["after"]), after)
    samples = [b64image(s) for s in body["samples"]]
    assert not np.array_equal(samples[0], samples[1])  # other draws for the new instances


@pytest.mark.parametrize(
    "edits,masks,words",
    [
        ([{"op": "add", "mask": "m", "label": "car"}], {}, "send it as a file part named 'm'"),
        ([{"op": "paint"}], {}, "edits[0]: 'op' must be one of"),
        ([{"op": "relabel", "instance": 26009, "to": "bus"}], {}, "26009 is not in"),
        ([{"op": "style", "instance": 26001, "cluster": 7}], {}, "class 26 has 3"),
        (
            [
                {
                    "op": "style",
                    "instance": 26001,
                    "photo": "p",
                    "photo_instances": "q",
                    "photo_instance": 26001,
                }
            ],
            {},
            "feature encoder",
        ),
    ],
)
def test_edit_errors_name_the_edit(client, edits, masks, words):
    label, inst = scene()
    r = edit_request(client, label, inst, edits, masks)
    assert r.status_code == 400 and r.json()["part"] == "edits" and words in r.json()["error"]


def test_edit_rejects_bad_json_and_too_many_samples(client):
    label, inst = scene()
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    r = client.post("/v1/edit", files=files, data={"edits": "[1, 2"})
    assert r.status_code == 400 and r.json()["part"] == "edits"
    r = client.post("/v1/edit", files=files, data={"samples": "99"})
    assert r.status_code == 413 and r.json()["part"] == "samples"


def test_classes_styles_samples_health(client, serve_model):
    classes = client.get("/v1/classes").json()
    assert [c["id"] for c in classes] == [lab.id for lab in LABELS if 0 <= lab.id < 35]
    car = next(c for c in classes if c["name"] == "car")
    assert car["id"] == 26 and car["color"] == [0, 0, 142] and car["clusters"] == 3
    styles = client.get("/v1/styles").json()
    assert styles["feat_num"] == 3 and styles["use_instance_features"]
    assert np.allclose(styles["centres"]["26"], CENTRES[26].numpy())
    names = client.get("/v1/samples").json()
    assert len(names) == 2 and all(n.startswith("val/") for n in names)
    got = client.get(f"/v1/samples/{names[0]}/instance")
    stem = names[0].split("/")[1]
    (path,) = serve_model["data"].rglob(f"{stem}_gtFine_instanceIds.png")
    assert got.status_code == 200 and got.content == path.read_bytes()
    assert client.get("/v1/samples/val/nothing/label").status_code == 404
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["label_nc"] == 35
    assert client.get("/").status_code == 200 and "pix2pixHD editor" in client.get("/").text
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/edit", "/v1/classes", "/v1/styles", "/healthz"} <= set(
        spec["paths"]
    )


def test_metrics_count_requests_errors_and_latency(engine):
    c = TestClient(create_app(ModelHolder(engine)))
    label, inst = scene()
    for _ in range(2):
        assert post_generate(c, label, inst).status_code == 200
    c.post("/v1/generate", files={"label": ("l.png", b"nope")})
    text = c.get("/metrics").text
    assert 'pix2pixhd_requests_total{endpoint="/v1/generate",status="200"} 2.0' in text
    assert 'pix2pixhd_errors_total{endpoint="/v1/generate",status="400"} 1.0' in text
    assert 'pix2pixhd_request_seconds_count{endpoint="/v1/generate"} 3.0' in text


class Gate:
    """An engine whose generate waits until released (a request held in flight)."""

    def __init__(self, engine: Engine) -> None:
        self.inner, self.release, self.entered = engine, threading.Event(), threading.Semaphore(0)
        self.info, self.version, self.source = engine.info, engine.version, engine.source

    def generate(self, *args, **kwargs):
        self.entered.release()
        assert self.release.wait(20)
        return self.inner.generate(*args, **kwargs)

    def request(self):
        return self.inner.request()


def test_full_queue_answers_503_with_retry_after_and_recovers(engine):
    gate = Gate(engine)
    app = create_app(ModelHolder(gate), ServeConfig(workers=1, queue=1, retry_after_s=2))
    url, stop = live(app)
    label, inst = scene()
    files = {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}
    results = []

    def call():
        results.append(httpx.post(f"{url}/v1/generate", files=files, timeout=30))

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        assert gate.entered.acquire(timeout=20)  # one running, one queued
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/healthz").json()["admitted"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        r = httpx.post(f"{url}/v1/generate", files=files, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["part"] == "server" and "limit 2" in r.json()["error"]
        gate.release.set()
        for t in threads:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert httpx.post(f"{url}/v1/generate", files=files, timeout=30).status_code == 200
    finally:
        gate.release.set()
        stop()


def test_follow_alias_reloads_without_dropping_requests_in_flight(
    serve_model, tmp_path, monkeypatch
):
    mlflow = pytest.importorskip("mlflow")
    import onnx
    from onnx import numpy_helper

    from components.serve.server import AliasFollower, load
    from model.onnx_integrity import stamp

    monkeypatch.setenv("PIX2PIXHD_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("serve", artifact_location=str(tmp_path / "artifacts"))
    client.create_registered_model("tiny")
    # version 1, the earlier layout: the checkpoint as the version's files, ONNX linked by a tag
    run1 = client.create_run(exp)
    client.log_artifact(run1.info.run_id, str(serve_model["checkpoint"]), "generator")
    client.log_artifact(run1.info.run_id, str(serve_model["onnx"]), "onnx_model")
    client.create_model_version(
        "tiny",
        f"{run1.info.artifact_uri}/generator",
        run_id=run1.info.run_id,
        tags={"onnx_model": f"{run1.info.artifact_uri}/onnx_model"},
    )
    # version 2, as `export` registers now: a logged pyfunc model whose artifacts hold the
    # graph (here with another bias) and the checkpoint
    proto = onnx.load(str(serve_model["onnx"]))
    floats = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    last = [i for i in floats if len(i.dims) == 1][-1]
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) + 0.5, last.name))
    stamp(proto)  # a new graph on purpose: its own content hash, as a new export has
    v2 = tmp_path / "v2" / "model.onnx"
    v2.parent.mkdir(parents=True)
    onnx.save(proto, str(v2))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=exp) as run2:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=mlflow.pyfunc.PythonModel(),
                artifacts={"onnx": str(v2), "checkpoint": str(serve_model["checkpoint"])},
                pip_requirements=["onnxruntime"],
            )
        client.create_model_version(
            "tiny", info.model_uri, run_id=run2.info.run_id, model_id=info.model_id
        )
    finally:
        mlflow.set_tracking_uri(previous)
    client.set_registered_model_alias("tiny", "champion", "1")

    holder = load("models:/tiny@champion", Threads(1), tracking_uri=uri)
    assert holder.engine.version == "1"
    v1_engine = holder.engine
    gate = Gate(v1_engine)
    holder.swap(gate)
    follower = AliasFollower(holder, "tiny", "champion", uri, Threads(1))
    assert not follower.check()  # alias unchanged: nothing reloaded
    c = TestClient(create_app(holder))
    label, inst = scene()
    in_flight = []
    t = threading.Thread(target=lambda: in_flight.append(post_generate(c, label, inst)))
    t.start()
    try:
        assert gate.entered.acquire(timeout=20)
        client.set_registered_model_alias("tiny", "champion", "2")
        assert follower.check() and holder.engine.version == "2"
    finally:
        gate.release.set()
        t.join(30)
    (old,) = in_flight
    assert old.status_code == 200 and old.headers["x-model-version"] == "1"
    assert np.array_equal(decode(old.content), v1_engine.generate(label, inst, 0))
    new = post_generate(c, label, inst)
    assert new.headers["x-model-version"] == "2"
    assert not np.array_equal(decode(new.content), decode(old.content))


def test_serving_imports_and_answers_without_torch(serve_model):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from fastapi.testclient import TestClient\n"
        "from components.serve.app import create_app\n"
        "from components.serve.server import load\n"
        "from components.serve.maps import png_bytes as png\n"
        f"c = TestClient(create_app(load({str(serve_model['onnx'])!r})))\n"
        "label = np.full((32, 64), 7, np.uint8); label[20:, 40:50] = 24\n"
        "inst = label.astype(np.uint16); inst[label == 24] = 24001\n"
        "r = c.post('/v1/generate', files={'label': png(label), 'instance': png(inst)})\n"
        "e = c.post('/v1/edit', files={'label': png(label), 'instance': png(inst)},\n"
        '           data={\'edits\': \'{"edits": [{"op": "remove", "instance": 24001}]}\'})\n'
        "assert r.status_code == 200 and e.status_code == 200, (r.text, e.text)\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_serve_bad_model_is_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    assert main(["serve", "--model", "models:/x", "--follow-alias"]) == 2
    assert "models:/<name>@<alias>" in capsys.readouterr().err
