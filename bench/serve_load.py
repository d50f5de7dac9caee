"""Load on `pix2pixhd serve`: a bounded number of POST /v1/generate requests on loopback.

The server is the real command line in its own process (`pix2pixhd serve`); the client
sends ``--requests`` requests, at most ``--concurrency`` at once, each a bundled-style
street scene (label + instance PNG, model/synth.py) at the model's size, and reports
throughput, p50/p95/p99 latency and the count of non-200 answers (503s included).

Models (random weights: time does not depend on them; thing classes get 10 random
cluster centres so per-instance features are drawn as for a trained model; exported here
and served as an ONNX file):
- ``demo``: the local generator of params.yaml at 256x128;
- ``global_1024``: the paper's global generator (ngf 64, 9 blocks) at 1024x512;
or ``--model PATH`` (a checkpoint or ONNX file) with ``--size WxH``.

Usage: python bench/serve_load.py [--config demo] [--requests 200] [--concurrency 8]
           [--workers 2] [--queue 8] [--threads 0] [--out bench/results/serve_demo.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {"demo": (256, 128), "global_1024": (1024, 512)}


def make_onnx(name: str, path: Path) -> Path:
    """The configuration with random weights, exported (the served file)."""
    import torch

    from model.config import GeneratorConfig, ModelConfig
    from model.labels import LABELS
    from model.pix2pixhd import Pix2PixHD

    torch.manual_seed(0)
    if name == "demo":
        from components.params import load_params, stage_model_config

        cfg = stage_model_config(load_params(ROOT / "params.yaml", []), "local")
    else:
        cfg = ModelConfig(generator=GeneratorConfig(ngf=64, n_local_enhancers=0))
    from model.export import export_onnx

    centres = None
    if cfg.use_instance_features:
        feat = cfg.encoder.feat_num
        centres = {lab.id: torch.rand(10, feat) * 2 - 1 for lab in LABELS if lab.has_instances}
    model = Pix2PixHD(cfg, with_discriminator=False).eval()
    return export_onnx(model, path, cluster_centers=centres)


def scene_pngs(width: int, height: int, n: int = 8) -> list[tuple[bytes, bytes]]:
    from PIL import Image

    from model.synth import render_scene

    out = []
    for i in range(n):
        s = render_scene(np.random.default_rng([7, i]), width, height)
        files = []
        for array in (s.label, s.instance.astype(np.uint16)):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            files.append(buf.getvalue())
        out.append(tuple(files))
    return out


def start_server(model: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "pix2pixhd", "serve", "--model", str(model)]
    cmd += ["--port", str(port), "--workers", str(args.workers), "--queue", str(args.queue)]
    cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # the server's output
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900  # a checkpoint is exported on the first start
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    log.seek(0)
    raise SystemExit(f"serve did not start:\n{log.read()[-3000:]}")


async def load(url: str, scenes: list, requests: int, concurrency: int) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one(i: int) -> None:
            label, inst = scenes[i % len(scenes)]
            files = {"label": ("l.png", label), "instance": ("i.png", inst)}
            async with gate:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/generate", files=files, data={"seed": str(i)})
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        await one(0)  # warm-up (not counted)
        latencies.clear()
        statuses.clear()
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(requests / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": requests - statuses.get(200, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    p.add_argument("--model", type=Path, help="a checkpoint or ONNX file instead of --config")
    p.add_argument("--size", help="WxH (default: the config's)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--queue", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    width, height = (int(v) for v in args.size.split("x")) if args.size else CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_onnx(args.config, Path(tmp) / f"{args.config}.onnx")
        proc, url = start_server(model, args)
        try:
            result = asyncio.run(
                load(url, scene_pngs(width, height), args.requests, args.concurrency)
            )
        finally:
            proc.terminate()
            proc.wait(30)
    result.update(
        model=str(args.model) if args.model else args.config,
        size=f"{width}x{height}",
        workers=args.workers,
        queue=args.queue,
        threads=args.threads,
        cpus=os.cpu_count(),
        machine=platform.processor() or platform.machine(),
        load_average=os.getloadavg()[0],
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
