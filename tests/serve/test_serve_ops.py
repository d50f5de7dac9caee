"""`pix2pixhd serve` in operation: the OpenAPI document against the errors the service
really answers, liveness and readiness, request ids, model versions, metrics and access
logs, the bearer token, and the life cycle of a real server process under SIGTERM."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from components.serve.app import ModelHolder, ServeConfig, create_app
from components.serve.engine import Engine, Threads
from components.serve.front import RequestIdFilter
from components.serve.maps import Limits
from pix2pixhd.cli import main
from tests.serve.conftest import png, scene, wait_ready

TOKEN = "tok-3f9c2a7e51d84b06"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def engine(serve_model):
    return Engine(serve_model["onnx"], Threads(1))


class Broken:
    """An engine that fails unexpectedly (a bug, a lost file): every use raises."""

    version, source = "broken-1", "broken"

    @property
    def info(self):
        logging.getLogger("components.serve.test").warning("reading the broken model")
        raise RuntimeError("boom: internal detail")

    def generate(self, *args, **kwargs):
        raise RuntimeError("boom: internal detail")

    def request(self):
        return contextlib.nullcontext()


class Slow:
    """The real engine, each generation slower than the deadline allows."""

    def __init__(self, engine):
        self.engine, self.version, self.source = engine, engine.version, engine.source
        self.info = engine.info

    def generate(self, *args, **kwargs):
        time.sleep(0.5)
        return self.engine.generate(*args, **kwargs)

    def request(self):
        return self.engine.request()


def app_with(engine, token=TOKEN, draining=False, **config):
    app = create_app(ModelHolder(engine), ServeConfig(token=token, **config))
    if draining:
        app.state.lifecycle.stop_admitting("SIGTERM")
    return app


def maps_files(h=32, w=64):
    label, inst = scene(h, w)
    return {"label": ("l.png", png(label)), "instance": ("i.png", png(inst))}


def error_cases(serve_model):
    """(OpenAPI path, method, which app, request) for every error status each route
    documents. Apps: "ok" (token, small limits, the dataset), "broken" (an engine that
    raises), "draining" (SIGTERM received)."""
    files = maps_files()
    big = {"label": ("l.png", b"\x89PNG" + b"\0" * 300_000)}
    sample = "/v1/samples/{split}/{stem}/{role}"
    name = sorted(p.name for p in Path(serve_model["data"]).rglob("*_gtFine_labelIds.png"))[0]
    stem = name.replace("_gtFine_labelIds.png", "")
    gen, edit = "/v1/generate", "/v1/edit"
    cases = [
        (gen, "post", "ok", dict(files={"label": ("l.png", b"GIF89a")}), 400),
        (gen, "post", "ok", dict(files=files, headers={}), 401),
        (gen, "post", "ok", dict(files=big), 413),
        (gen, "post", "ok", dict(files={"instance": files["instance"]}), 422),
        (gen, "post", "broken", dict(files=files), 500),
        (gen, "post", "draining", dict(files=files), 503),
        (gen, "post", "slow", dict(files=files), 504),
        (edit, "post", "ok", dict(files=files, data={"edits": "[1, 2"}), 400),
        (edit, "post", "ok", dict(files=files, headers={}), 401),
        (edit, "post", "ok", dict(files=files, data={"samples": "99"}), 413),
        (edit, "post", "ok", dict(files={"label": files["label"]}), 422),
        (edit, "post", "broken", dict(files=files), 500),
        (edit, "post", "draining", dict(files=files), 503),
        (edit, "post", "slow", dict(files=files), 504),
        (sample, "get", "ok", dict(url=f"/v1/samples/val/{stem}/label", headers={}), 401),
        (sample, "get", "ok", dict(url="/v1/samples/val/nothing/label"), 404),
        (sample, "get", "ok", dict(url=f"/v1/samples/val/{stem}/photo"), 422),
        (sample, "get", "draining", dict(url=f"/v1/samples/val/{stem}/label"), 503),
        ("/healthz", "get", "broken", {}, 500),
        ("/readyz", "get", "draining", {}, 503),
        ("/v2/health/ready", "get", "draining", {}, 503),
    ]
    for path in ("/v1/classes", "/v1/styles", "/v1/samples", "/v1/limits"):
        cases += [
            (path, "get", "ok", dict(headers={}), 401),
            (path, "get", "draining", {}, 503),
        ]
        if path not in ("/v1/samples", "/v1/limits"):  # these do not touch the model
            cases.append((path, "get", "broken", {}, 500))
    return cases


def check_body(spec: dict, body: dict) -> None:
    """``body`` against the error schema of the document (types, required, no extras)."""
    schema = spec["components"]["schemas"]["ErrorBody"]
    assert schema["type"] == "object" and schema.get("additionalProperties") is False
    assert set(body) == set(schema["required"]) == set(schema["properties"]), body
    for key, prop in schema["properties"].items():
        assert prop["type"] == "string" and isinstance(body[key], str)


def test_openapi_documents_every_error_the_service_answers(engine, serve_model):
    small = Limits(max_bytes=200_000, max_pixels=64 * 128)
    apps = {
        "ok": app_with(engine, limits=small, data=serve_model["data"]),
        "broken": app_with(Broken()),
        "draining": app_with(engine, draining=True, data=serve_model["data"]),
        "slow": app_with(Slow(engine), limits=Limits(deadline_s=0.2)),
    }
    clients = {k: TestClient(a) for k, a in apps.items()}
    spec = clients["ok"].get("/openapi.json").json()
    assert spec == clients["broken"].get("/openapi.json").json()  # one document
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text and "ValidationError" not in text
    exercised: dict[tuple[str, str], set[str]] = {}
    for path, method, which, request, status in error_cases(serve_model):
        request = dict(request)
        url = request.pop("url", path)
        headers = request.pop("headers", AUTH)
        r = clients[which].request(method.upper(), url, headers=headers, **request)
        where = f"{method.upper()} {url} ({which})"
        assert r.status_code == status, (where, r.text)
        operation = spec["paths"][path][method]
        documented = operation["responses"]
        assert str(status) in documented, f"{where}: {status} not in the document"
        content = documented[str(status)]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
        assert r.headers["content-type"] == "application/json"
        check_body(spec, r.json())
        for header in documented[str(status)]["headers"]:  # what the document promises
            assert header.lower() in r.headers, (where, header)
        if status == 500:  # no internals leak; the request id finds the log
            assert "boom" not in r.text and r.headers["x-request-id"] in r.json()["error"]
        exercised.setdefault((path, method), set()).add(str(status))
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            errors = {s for s in operation["responses"] if int(s) >= 400}
            got = exercised.get((path, method), set())
            # every documented error is one the service answered here; 500 only where a
            # broken model can cause it (routes that never touch the model: by review)
            assert errors - got <= {"500"}, (path, method, errors - got)
            assert "500" in errors, (path, method)
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearer": []}]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # without a token nothing documents a 401 (nor answers one)
    open_spec = TestClient(app_with(engine, token=None)).get("/openapi.json").json()
    assert '"401"' not in json.dumps(open_spec) and "securitySchemes" not in json.dumps(open_spec)


def test_liveness_readiness_and_healthz(engine):
    app = app_with(engine, token=None)
    c = TestClient(app)
    for path in ("/livez", "/v2/health/live"):
        assert c.get(path).json() == {"live": True}
    for path in ("/readyz", "/v2/health/ready"):
        r = c.get(path)
        assert r.status_code == 200 and r.json() == {"ready": True, "model_version": engine.version}
    assert c.get("/healthz").json()["status"] == "ok"
    app.state.lifecycle.stop_admitting("SIGTERM")
    for path in ("/readyz", "/v2/health/ready"):
        r = c.get(path)
        assert r.status_code == 503 and "shutting down (SIGTERM)" in r.json()["error"]
    assert c.get("/livez").status_code == 200  # the process still answers
    health = c.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "shutting down"
    r = c.post("/v1/generate", files=maps_files())
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.headers["connection"] == "close"
    assert c.get("/metrics").status_code == 200


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith(".access")]


def test_request_ids_versions_metrics_and_access_log(engine, caplog):
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(RequestIdFilter())
    c = TestClient(app_with(engine, token=None))
    assert engine.version.startswith("sha256:") and len(engine.version) == 19
    r = c.post("/v1/generate", files=maps_files(), headers={"X-Request-ID": "client-42"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "client-42"
    assert r.headers["x-model-version"] == engine.version
    r = c.get("/v1/classes", headers={"X-Request-ID": "no spaces allowed"})
    generated = r.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0  # replaced by a fresh one
    r = c.post("/v1/generate", files={"label": ("l.png", b"nope")})
    assert r.status_code == 400 and r.headers["x-model-version"] == engine.version
    lines = access_lines(caplog)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", "/v1/generate", 200),
        ("GET", "/v1/classes", 200),
        ("POST", "/v1/generate", 400),
    ]
    assert lines[0]["request_id"] == "client-42" and lines[1]["request_id"] == generated
    assert all(x["model_version"] == engine.version and x["duration_s"] >= 0 for x in lines)
    text = c.get("/metrics").text
    version = f'model_version="{engine.version}"'
    assert f"pix2pixhd_queue_wait_seconds_count{{{version}}} 2.0" in text  # both admitted
    assert f"pix2pixhd_model_seconds_count{{{version}}} 2.0" in text

    # an unexpected exception: a JSON 500, counted, its log lines carry the request id
    caplog.clear()
    broken = TestClient(app_with(Broken(), token=None))
    r = broken.post("/v1/generate", files=maps_files(), headers={"X-Request-ID": "bad-1"})
    assert r.status_code == 500 and r.json()["part"] == "server"
    assert r.headers["x-model-version"] == "broken-1"
    r = broken.get("/v1/classes", headers={"X-Request-ID": "bad-2"})
    assert r.status_code == 500
    text = broken.get("/metrics").text
    for endpoint in ("/v1/generate", "/v1/classes"):
        assert f'pix2pixhd_requests_total{{endpoint="{endpoint}",status="500"}} 1.0' in text
        assert f'pix2pixhd_errors_total{{endpoint="{endpoint}",status="500"}} 1.0' in text
    worker = [r for r in caplog.records if r.getMessage().startswith("reading the broken")]
    assert worker[0].threadName.startswith("pix2pixhd-serve")  # logged on a worker thread
    assert worker[0].getMessage().endswith("[request_id=bad-1]")
    failures = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in failures] == [
        "[request_id=bad-1]",
        "[request_id=bad-2]",
    ]
    assert failures[0].exc_info is not None  # the traceback is in the log, not the answer
    assert [x["status"] for x in access_lines(caplog)][:2] == [500, 500]


def test_bearer_token_guards_the_api_only(engine, serve_model, caplog):
    caplog.set_level(logging.DEBUG)
    c = TestClient(app_with(engine, data=serve_model["data"]))
    files = maps_files()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = c.post("/v1/generate", files=files, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["part"] == "authorization" and TOKEN not in r.text
    assert c.post("/v1/generate", files=files, headers=AUTH).status_code == 200
    lowercase = {"authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert c.get("/v1/classes", headers=lowercase).status_code == 200
    for path in ("/healthz", "/livez", "/readyz", "/metrics", "/", "/static/editor.js"):
        assert c.get(path).status_code == 200, path
    assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(c.app.state) and TOKEN not in repr(ServeConfig(token=TOKEN))


def test_token_file_errors_do_not_echo_it(tmp_path, capsys, serve_model):
    for content, words in (("", "found nothing"), (f"{TOKEN} extra", "white space")):
        path = tmp_path / "token"
        path.write_text(content)
        code = main(["serve", "--model", str(serve_model["onnx"]), "--token-file", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1
        assert TOKEN not in err
    code = main(["serve", "--model", str(serve_model["onnx"]), "--token-file", str(tmp_path / "x")])
    assert code == 2 and "cannot read it" in capsys.readouterr().err


SLOW_SERVER = """
import sys, time
from pathlib import Path
from components.serve import engine
gate, plain = Path(sys.argv[1]), engine.Engine.generate
def held(self, *args, **kwargs):  # a request held in flight until the test releases it
    (gate / "entered").touch()
    deadline = time.monotonic() + 60
    while not (gate / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return plain(self, *args, **kwargs)
engine.Engine.generate = held
from pix2pixhd.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_finishes_requests_in_flight_and_exits_0(serve_model, tmp_path):
    """A real `pix2pixhd serve` process (signals, uvicorn, the CLI's summary), with a
    token: SIGTERM while a request is in flight; readiness fails (or the port is closed)
    and new requests are not served; the request in flight completes with 200; exit 0
    with the JSON summary on stdout; the token in no output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN + "\n")
    gate = tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-c", SLOW_SERVER, str(gate), "--verbose", "serve"]
    cmd += ["--model", str(serve_model["onnx"]), "--port", str(port), "--workers", "1"]
    cmd += ["--grace-s", "30", "--token-file", str(tmp_path / "token")]
    out, err = open(tmp_path / "out", "w+"), open(tmp_path / "err", "w+")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, err)
        assert httpx.post(f"{url}/v1/generate", files=maps_files()).status_code == 401
        slow = []
        headers = {**AUTH, "X-Request-ID": "in-flight-1"}
        t = threading.Thread(
            target=lambda: slow.append(
                httpx.post(f"{url}/v1/generate", files=maps_files(), headers=headers, timeout=60)
            )
        )
        t.start()
        deadline = time.monotonic() + 30
        while not (gate / "entered").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        try:  # not ready any more: 503, or the listener is already closed
            assert httpx.get(f"{url}/readyz", timeout=2).status_code == 503
        except httpx.TransportError:
            pass
        try:  # no new work is admitted
            refused = httpx.post(f"{url}/v1/generate", files=maps_files(), headers=AUTH, timeout=2)
            assert refused.status_code == 503
        except httpx.TransportError:
            pass
        assert proc.poll() is None and not slow  # still finishing the request in flight
        (gate / "release").touch()
        t.join(60)
        (r,) = slow
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-request-id"] == "in-flight-1"
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (32, 64, 3)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    summary = json.loads(stdout)
    assert summary["stopped_by"] == "SIGTERM" and summary["unfinished"] == 0
    assert summary["auth"] == "bearer token" and summary["requests"] >= 3
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    mine = [x for x in access if x["request_id"] == "in-flight-1"]
    assert [(x["path"], x["status"]) for x in mine] == [("/v1/generate", 200)]
    assert mine[0]["model_version"].startswith("sha256:")
    assert TOKEN not in stdout and TOKEN not in stderr
