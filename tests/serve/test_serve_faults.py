"""The service under hostile load (issue 22): requests cancelled mid-flight, oversize
bodies, too many edits and instance ids, and requests past their deadline, mixed with
normal ones against a real `pix2pixhd serve` process. Throughout, /healthz answers
within 1 s and the server's memory stays under a stated bound; afterwards a normal
request is served at once (no worker is left stuck on abandoned work)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil

from tests.serve.conftest import png, scene, wait_ready

MAX_BYTES = 2 * 2**20
WORKERS, QUEUE = 1, 2


def bound_mb(idle_mb: float) -> float:
    """The stated memory bound: the idle server, every admitted body held twice (upload
    and decoded copies), and 300 MB for ONNX Runtime's per-call buffers at these sizes."""
    return idle_mb + (WORKERS + QUEUE) * 2 * MAX_BYTES / 2**20 + 300


def _maps(h=64, w=128, ids=1):
    label, inst = scene(h, w)
    if ids > 1:  # a car instance map with `ids` distinct ids
        label[:] = 26
        inst = (26000 + np.arange(h * w) % ids).reshape(h, w)
    return {"label": ("l.png", png(label)), "instance": ("i.png", png(inst.astype(np.uint16)))}


def test_health_and_memory_hold_under_a_hostile_mix(serve_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pix2pixhd", "serve", "--model", str(serve_model["onnx"])]
    cmd += ["--port", str(port), "--workers", str(WORKERS), "--queue", str(QUEUE)]
    cmd += ["--max-bytes", str(MAX_BYTES), "--max-edits", "64", "--max-instances", "500"]
    cmd += ["--deadline-s", "3"]
    err = open(tmp_path / "err", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    statuses: dict[str, list[int]] = {}
    health: list[float] = []
    try:
        wait_ready(url, proc, err)
        server = psutil.Process(proc.pid)
        idle_mb = server.memory_info().rss / 2**20
        limits = httpx.get(f"{url}/v1/limits").json()
        assert limits["max_edits"] == 64 and limits["deadline_s"] == 3

        def loop(name, send):
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    try:
                        statuses.setdefault(name, []).append(send(c))
                    except httpx.TransportError:
                        statuses.setdefault(name, []).append(-1)  # cut by us, on purpose

        normal = _maps()
        huge = {"label": ("l.png", b"\x89PNG" + b"\0" * (3 * 2**20))}
        many_edits = json.dumps({"edits": [{"op": "relabel", "from": 7, "to": 8}] * 100})
        long_edits = json.dumps({"edits": [{"op": "relabel", "from": 7, "to": 8}] * 64})

        def cancelled(c):  # a long edit whose client leaves after 0.3 s
            try:
                return c.post(
                    f"{url}/v1/edit",
                    files=normal,
                    data={"edits": long_edits, "samples": 8},
                    timeout=0.3,
                ).status_code
            except httpx.TimeoutException:
                return 0

        senders = {
            "normal": lambda c: c.post(f"{url}/v1/generate", files=normal).status_code,
            "oversize": lambda c: c.post(f"{url}/v1/generate", files=huge).status_code,
            "edits": lambda c: (
                c.post(f"{url}/v1/edit", files=normal, data={"edits": many_edits}).status_code
            ),
            "ids": lambda c: c.post(f"{url}/v1/generate", files=_maps(ids=2000)).status_code,
            "cancelled": cancelled,
        }
        threads = [threading.Thread(target=loop, args=item) for item in senders.items()]
        for t in threads:
            t.start()
        peak_mb, end = idle_mb, time.monotonic() + 12
        while time.monotonic() < end:
            t0 = time.perf_counter()
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            health.append(time.perf_counter() - t0)
            peak_mb = max(peak_mb, server.memory_info().rss / 2**20)
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(60)
        assert max(health) < 1.0, f"/healthz took {max(health):.2f} s"
        assert peak_mb < bound_mb(idle_mb), f"peak {peak_mb:.0f} MB, idle {idle_mb:.0f} MB"
        assert set(statuses["oversize"]) <= {413, 503} and 413 in statuses["oversize"]
        assert set(statuses["edits"]) <= {413, 503} and 413 in statuses["edits"]
        assert set(statuses["ids"]) <= {413, 503} and 413 in statuses["ids"]
        assert 200 in statuses["normal"] and set(statuses["normal"]) <= {200, 503, 504}
        time.sleep(3)  # abandoned work stops at its next step
        r = httpx.post(f"{url}/v1/generate", files=normal, timeout=10)
        assert r.status_code == 200  # the worker is free again
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
