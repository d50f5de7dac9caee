"""`pix2pixhd serve` against the engine's limit and against `mlflow models serve`.

One run measures, on the same cores and one after another (each case alone):

1. **engine**: the served ONNX graph in a tight loop (ONNX Runtime ``session.run`` on
   prepared feeds, nothing else), in a fresh process per case: one stream with all cores,
   two streams sharing one session, and batches of 2 and 4 (does batching pay on CPU?);
2. **service**: `pix2pixhd serve` started from the command line with its default flags
   (or ``--serve-flags``), loaded by a client on loopback at each ``--concurrency``
   (bundled-style street scenes as label + instance PNGs, ``POST /v1/generate``), after
   a warm-up load: throughput, p50/p95/p99 and the server's peak memory (VmHWM);
3. **workers**: the service with ``--workers`` 1, 2, 3 and 4 at the highest concurrency
   (or ``--workers-at``)
   (adding workers must not lower throughput);
4. **mlflow**: the same model logged as the project's pyfunc model
   (``components.export.log_servable_model``) behind ``mlflow models serve --env-manager
   local``, JSON tensors in and out (``{"inputs": {"label": ..., "instance": ...}}``), at
   the same concurrencies;
5. **ratio**: ``--rounds`` alternating pairs of the engine's best batch-1 case and the
   service (default flags) at the concurrency where its sweep was best, each for
   ``--seconds``: the service-to-engine ratio of each pair, and their median. A shared
   virtual machine drifts by several per cent within minutes, so the ratio comes from
   neighbouring measurements, not from the sweep against the first engine case.

Models: ``--onnx`` serves a trained export (``data/export/model.onnx`` after ``make
demo``). Without it, random weights (seed 0; thing classes get 10 random cluster centres
so per-instance features are drawn as for a trained model): the graph's time does not
depend on them, but the answer's PNG encoding does (a random generator's noise compresses
worse than a photo). ``demo``: the local generator of params.yaml at 256x128;
``global_1024``: the paper's global generator (ngf 64, 9 blocks) at 1024x512.

Usage: python bench/serve_load.py --config demo [--onnx data/export/model.onnx]
           [--concurrency 1,2,4,8] [--seconds 15] [--rounds 3] [--skip mlflow,workers]
           [--out docs/data/serve_demo.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = {"demo": (256, 128), "global_1024": (1024, 512)}
VENV_BIN = Path(sys.executable).parent


def make_model(name: str) -> tuple[Any, dict | None]:
    """The configuration with random weights (seed 0), and its cluster centres."""
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
    centres = None
    if cfg.use_instance_features:
        feat = cfg.encoder.feat_num
        centres = {lab.id: torch.rand(10, feat) * 2 - 1 for lab in LABELS if lab.has_instances}
    return Pix2PixHD(cfg, with_discriminator=False).eval(), centres


def scene(width: int, height: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    from model.synth import render_scene

    s = render_scene(np.random.default_rng([7, i]), width, height)
    return s.label, s.instance.astype(np.uint16)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the engine's limit


def engine_case(
    onnx: Path, width: int, height: int, streams: int, threads: int, batch: int, seconds: float
) -> dict[str, Any]:
    """``streams`` Python threads calling ``run`` on one session (``threads`` intra-op
    threads, 0 = ONNX Runtime's default) on a prepared batch, for ``seconds``."""
    from components.onnx_session import make_session
    from model.model_contract import ModelInfo, onnx_feeds

    session = make_session(onnx, "cpu", threads or None)
    info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, onnx)
    label, inst = scene(width, height, 0)
    label = np.repeat(label[None, None].astype(np.int64), batch, 0)
    inst = np.repeat(inst[None, None].astype(np.int64), batch, 0)
    feeds = onnx_feeds(info, label, inst, seed=0)
    session.run(None, feeds)  # warm-up
    images = [0] * streams
    runs: list[float] = []
    start = threading.Barrier(streams + 1)
    deadline = [0.0]

    def loop(k: int) -> None:
        start.wait()
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            session.run(None, feeds)
            runs.append(time.perf_counter() - t)
            images[k] += batch

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(streams)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {
        "streams": streams,
        "threads": threads,
        "batch": batch,
        "images": sum(images),
        "wall_s": round(wall, 2),
        "images_per_s": round(sum(images) / wall, 3),
        "run_p50_ms": round(float(np.median(runs)) * 1000, 1),
    }


# ---------------------------------------------------------------- servers and load


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_peak_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its descendants, summed, in MB."""
    import psutil

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


class Server:
    """A server command in its own process group, ready when ``probe`` answers 200."""

    def __init__(self, cmd: list[str], probe: str, env: dict[str, str] | None = None):
        import httpx

        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(probe, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        self.log.seek(0)
        raise SystemExit(f"{cmd[0]} did not start:\n{self.log.read()[-3000:]}")

    def peak_mb(self) -> float:
        return tree_peak_mb(self.proc.pid)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Requests:
    """Prepared HTTP/1.1 requests (bytes, built once with httpx's encoders), sent in turn.

    The load generator shares the server's cores, so its CPU time is taken from the
    service: it writes the prepared bytes on keep-alive connections and reads each answer
    by its Content-Length, about 0.3 ms of CPU per request where an ``httpx.AsyncClient``
    took 3.6 ms (a client on another machine would take none)."""

    def __init__(self, url: str, build: Callable[[int], Any], count: int = 8) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.raw = []
        for i in range(count):
            req = build(i)
            head = [f"{req.method} {req.url.raw_path.decode()} HTTP/1.1"]
            head += [f"{k}: {v}" for k, v in req.headers.items()]
            self.raw.append(("\r\n".join(head) + "\r\n\r\n").encode() + req.read())

    async def connection(self) -> Any:
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, conn: Any, i: int) -> tuple[int, Any]:
        """Request ``i`` on ``conn`` -> (HTTP status, the connection to go on with)."""
        reader, writer = conn
        try:
            writer.write(self.raw[i % len(self.raw)])
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if getattr(exc, "partial", b""):
                raise
            # the server closed the connection while it was idle (uvicorn's keep-alive
            # timeout, 5 s: a connection waits that long when others' requests take
            # seconds): as an HTTP client does, send again on a new one
            writer.close()
            return await self.send(await self.connection(), i)
        status = int(head.split(" ", 2)[1])
        length = next(
            int(line.split(":", 1)[1])
            for line in head.split("\r\n")
            if line.startswith("content-length:")
        )
        await reader.readexactly(length)
        if "connection: close" in head:
            writer.close()
            conn = await self.connection()
        return status, conn


async def load(requests_: Requests, requests: int, concurrency: int) -> dict[str, Any]:
    """``requests`` prepared requests, ``concurrency`` connections each sending its next
    one when the last was answered, after one warm-up request per connection."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    async def client(conn: Any) -> None:
        for i in counter:
            t = time.perf_counter()
            status, conn = await requests_.send(conn, i)
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
        conn[1].close()

    conns = [await requests_.connection() for _ in range(concurrency)]

    async def warm(k: int) -> None:
        _, conns[k] = await requests_.send(conns[k], k)

    # warm-up, one request per connection at once: every worker's first model run
    await asyncio.gather(*(warm(k) for k in range(concurrency)))
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(c) for c in conns))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(requests / wall, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "errors": requests - statuses.get(200, 0),
        # the client shares the cores: its CPU time per request is taken from the service
        "client_cpu_ms_per_request": round(cpu / requests * 1000, 2),
    }


def requests_for(concurrency: int, rate: float, seconds: float) -> int:
    """Enough requests for ``seconds`` at ``rate`` req/s, at least 2 per connection."""
    return max(2 * concurrency, math.ceil(rate * seconds))


def pix2pixhd_requests(url: str, width: int, height: int) -> Requests:
    """``POST /v1/generate`` with label + instance PNGs of 8 scenes (seed = scene)."""
    import httpx

    def build(i: int) -> Any:
        lab, ins = scene(width, height, i)
        files = {"label": ("l.png", png(lab)), "instance": ("i.png", png(ins))}
        return httpx.Request("POST", f"{url}/v1/generate", files=files, data={"seed": str(i)})

    return Requests(url, build)


def mlflow_requests(url: str, width: int, height: int) -> Requests:
    """``POST /invocations`` with the same scenes as JSON tensors."""
    import httpx

    def build(i: int) -> Any:
        lab, ins = scene(width, height, i)
        inputs = {
            "label": lab[None, None].astype(np.int64).tolist(),
            "instance": ins[None, None].astype(np.int64).tolist(),
        }
        return httpx.Request(
            "POST", f"{url}/invocations", json={"inputs": inputs, "params": {"seed": i}}
        )

    return Requests(url, build)


def sweep(
    server: Server,
    requests_: Requests,
    levels: list[int],
    rate: float,
    seconds: float,
    warm: bool = True,
) -> list[dict[str, Any]]:
    """One load per concurrency level; with ``warm``, first a fifth of ``seconds`` of
    load (at least one request per connection) at the highest level, not recorded: a
    fresh server's first hundred requests run slower (allocations, every worker's first
    runs)."""
    if warm:
        top = max(levels)
        asyncio.run(load(requests_, max(top, math.ceil(rate * seconds / 5)), top))
    out = []
    for c in levels:
        row = asyncio.run(load(requests_, requests_for(c, rate, seconds), c))
        row["peak_mb"] = server.peak_mb()  # so far: VmHWM only grows
        row["load_average"] = round(os.getloadavg()[0], 2)
        log(f"  concurrency {c}: {row['throughput_rps']} req/s, p50 {row['p50_ms']} ms")
        out.append(row)
    return out


def serve_cmd(onnx: Path, port: int, flags: list[str]) -> list[str]:
    return [str(VENV_BIN / "pix2pixhd"), "serve", "--model", str(onnx), "--port", str(port), *flags]


def log_pyfunc(model: Any, with_features: bool, onnx: Path, home: Path) -> str:
    """The graph ``onnx`` logged as the project's pyfunc model into a SQLite store under
    ``home`` (``model``, of the same configuration, gives the signature); its model URI."""
    import mlflow

    from components.export import log_servable_model, serving_signature

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    signature, example = serving_signature(model, with_features)
    with mlflow.start_run():
        return log_servable_model(onnx, signature, example).model_uri


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- tables


def _ms(v: float) -> str:
    return f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.0f} ms"


def engine_at(doc: dict[str, Any], concurrency: int) -> float:
    """The engine's best batch-1 images/s with no more streams than ``concurrency``
    clients keep requests in flight (one client: the one-stream case)."""
    rows = [e for e in doc["engine"] if e["batch"] == 1 and e["streams"] <= concurrency]
    return max(e["images_per_s"] for e in rows)


def tables(paths: list[Path]) -> str:
    """Markdown tables of result files: the engine's limit, the load sweep of both
    servers side by side, and the workers sweep."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    out = ["| size | engine (tight loop) | images/s | one run |", "|---|---|---|---|"]
    for d in docs:
        for e in d["engine"]:
            batch = f", batch {e['batch']}" if e["batch"] > 1 else ""
            how = (
                f"{e['streams']} stream{'s' if e['streams'] > 1 else ''}, "
                f"{e['threads'] or 'all'} thread{'s' if e['threads'] != 1 else ''}"
                f"{batch}"
            )
            out.append(
                f"| {d['size']} | {how} | {e['images_per_s']:.2f} | {_ms(e['run_p50_ms'])} |"
            )
    out += [
        "",
        "| size | server | concurrency | req/s | vs the engine's first run | p50 | p95 | p99 "
        "| peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        for server, rows in (
            ("pix2pixhd serve", d["service"]["levels"]),
            ("mlflow models serve", d.get("mlflow", {}).get("levels", [])),
        ):
            for r in rows:
                out.append(
                    f"| {d['size']} | {server} | {r['concurrency']} | "
                    f"{r['throughput_rps']:.2f} | "
                    f"{r['throughput_rps'] / engine_at(d, r['concurrency']):.2f}x | "
                    f"{_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | "
                    f"{r['peak_mb']:.0f} MB |"
                )
    out += [
        "",
        "| size | --workers | concurrency | req/s | p50 | p99 |",
        "|---|---|---|---|---|---|",
    ]
    for d in docs:
        for r in d.get("workers", []):
            out.append(
                f"| {d['size']} | {r['workers']} | {r['concurrency']} | "
                f"{r['throughput_rps']:.2f} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} |"
            )
    out += [
        "",
        "| size | model | concurrency | engine images/s | service req/s | service / engine |",
        "|---|---|---|---|---|---|",
    ]
    for d in docs:
        ratio = d.get("ratio", {})
        for k, pair in enumerate(ratio.get("pairs", []), 1):
            out.append(
                f"| {d['size']} | {d.get('model', 'random weights')} | {ratio['concurrency']} | "
                f"{pair['engine']:.2f} | {pair['service']:.2f} | {pair['ratio']:.2f}x "
                f"(round {k}) |"
            )
        if ratio.get("pairs"):
            out.append(f"| {d['size']} | | | | median | **{d['service_vs_engine']:.2f}x** |")
    loads = ", ".join(
        f"{d['size']}: {d['load_average_before'][0]} before, {d['load_average_after'][0]} after"
        for d in docs
    )
    out += ["", f"Load average (1 min): {loads}."]
    return "\n".join(out) + "\n"


def plot(docs: list[dict[str, Any]], out: Path) -> None:
    """Throughput and p50/p99 by concurrency, pix2pixhd serve against mlflow models
    serve, one column per result file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(docs), figsize=(10, 6.4))
    for col, d in enumerate(docs):
        best = d["engine_best_batch1"]
        servers = (
            ("pix2pixhd serve", d["service"]["levels"], "C0"),
            ("mlflow models serve", d.get("mlflow", {}).get("levels", []), "C1"),
        )
        top, bottom = axes[0][col], axes[1][col]
        for name, levels, colour in servers:
            c = [r["concurrency"] for r in levels]
            top.plot(c, [r["throughput_rps"] for r in levels], "o-", color=colour, label=name)
            for key, style in (("p50_ms", "o-"), ("p99_ms", "^--")):
                values = [r[key] / 1000 for r in levels]
                bottom.plot(c, values, style, color=colour, label=f"{name} {key[:3]}")
        top.axhline(best, color="k", ls=":", lw=1, label="engine, tight loop (first run)")
        top.plot([1], [engine_at(d, 1)], "k_", ms=16, mew=2, label="engine, one stream (first run)")
        pairs = d.get("ratio", {}).get("pairs", [])
        if pairs:  # the machine drifts: the engine's range over the paired rounds
            engines = [p["engine"] for p in pairs]
            top.axhspan(
                min(engines),
                max(engines),
                color="k",
                alpha=0.08,
                lw=0,
                label="engine, paired rounds (range)",
            )
        top.set_title(f"{d['size']}: requests per second", fontsize=9)
        bottom.set_title(f"{d['size']}: latency (s)", fontsize=9)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
            ax.set_xlabel("concurrent clients", fontsize=8)
            ax.grid(alpha=0.3)
        top.set_ylim(bottom=0)
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.suptitle(
        "Serving on 2 cores (bench/serve_load.py, ONNX Runtime; each run's model in its table)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------- main


def run_engine_case(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels")
    p.add_argument("--seconds", type=float, default=15.0, help="target seconds per case")
    p.add_argument("--serve-flags", default="", help="flags for pix2pixhd serve (default none)")
    p.add_argument("--skip", default="", help="comma-separated: engine, workers, mlflow")
    p.add_argument("--workers-at", type=int, help="the workers sweep's concurrency (highest)")
    p.add_argument("--onnx", type=Path, help="serve this export instead of random weights")
    p.add_argument("--rounds", type=int, default=3, help="engine/service pairs for the ratio")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    p.add_argument("--tables", nargs="+", type=Path, help="print Markdown tables of results")
    p.add_argument("--plot", type=Path, help="with --tables: also draw them (PNG)")
    args = p.parse_args()
    if args.tables:
        sys.stdout.write(tables(args.tables))
        if args.plot:
            plot([json.loads(Path(p).read_text()) for p in args.tables], args.plot)
        return
    if args.one:
        onnx, w, h, streams, threads, batch, seconds = args.one
        case = engine_case(
            Path(onnx), int(w), int(h), int(streams), int(threads), int(batch), float(seconds)
        )
        print(json.dumps(case))
        return
    width, height = CONFIGS[args.config]
    levels = [int(c) for c in args.concurrency.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "config": args.config,
        "size": f"{width}x{height}",
        "cpus": cores,
        "machine": platform.processor() or platform.machine(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    from model.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        model, centres = make_model(args.config)
        if args.onnx:
            onnx = args.onnx.resolve()
            digest = hashlib.sha256(onnx.read_bytes()).hexdigest()
            result["model"] = f"{args.onnx} (sha256 {digest[:12]})"
        else:
            onnx = export_onnx(model, Path(tmp) / f"{args.config}.onnx", cluster_centers=centres)
            result["model"] = "random weights (seed 0)"

        # 1. the engine alone
        engine = []
        cases = [(1, 0, 1), (2, 0, 1), (2, 1, 1), (1, 0, 2), (1, 0, 4)]
        if "engine" in skip:
            cases = cases[:1]
        for streams, threads, batch in cases:
            row = run_engine_case(
                [
                    str(onnx),
                    str(width),
                    str(height),
                    str(streams),
                    str(threads),
                    str(batch),
                    str(args.seconds),
                ]
            )
            log(
                f"engine {streams} stream(s), threads {threads or 'default'}, batch {batch}: "
                f"{row['images_per_s']} images/s"
            )
            engine.append(row)
        result["engine"] = engine
        best_case = max((r for r in engine if r["batch"] == 1), key=lambda r: r["images_per_s"])
        best = result["engine_best_batch1"] = best_case["images_per_s"]

        def engine_again() -> float:
            spec = (best_case["streams"], best_case["threads"], 1, args.seconds)
            return run_engine_case([str(onnx), str(width), str(height), *map(str, spec)])[
                "images_per_s"
            ]

        # 2. the service with its default flags
        port = free_port()
        flags = args.serve_flags.split()
        server = Server(serve_cmd(onnx, port, flags), f"http://127.0.0.1:{port}/readyz")
        pairs = []
        try:
            log(f"pix2pixhd serve {' '.join(flags) or '(default flags)'}")
            requests_ = pix2pixhd_requests(f"http://127.0.0.1:{port}", width, height)
            rows = sweep(server, requests_, levels, best, args.seconds)
            result["service"] = {"flags": flags, "levels": rows}

            # 5. the ratio, from alternating neighbouring measurements (same server)
            at = max(rows, key=lambda r: r["throughput_rps"])["concurrency"]
            for k in range(args.rounds):
                e = engine_again()
                (row,) = sweep(server, requests_, [at], e, args.seconds, warm=False)
                pairs.append(
                    {
                        "engine": e,
                        "service": row["throughput_rps"],
                        "ratio": round(row["throughput_rps"] / e, 3),
                    }
                )
                log(f"round {k + 1}: engine {e} images/s, service {row['throughput_rps']} req/s")
        finally:
            server.stop()
        ratios = [p["ratio"] for p in pairs]
        result["ratio"] = {"concurrency": at, "pairs": pairs}
        result["service_vs_engine"] = float(np.median(ratios)) if ratios else None

        # 3. workers at the highest concurrency
        if "workers" not in skip:
            result["workers"] = []
            for workers in (1, 2, 3, 4):
                port = free_port()
                server = Server(
                    serve_cmd(onnx, port, ["--workers", str(workers)]),
                    f"http://127.0.0.1:{port}/readyz",
                )
                try:
                    log(f"pix2pixhd serve --workers {workers}")
                    (row,) = sweep(
                        server,
                        pix2pixhd_requests(f"http://127.0.0.1:{port}", width, height),
                        [args.workers_at or levels[-1]],
                        best,
                        args.seconds,
                    )
                finally:
                    server.stop()
                row["workers"] = workers
                result["workers"].append(row)

        # 4. the same model through mlflow models serve
        if "mlflow" not in skip:
            home = Path(tmp)
            uri = log_pyfunc(model, centres is not None, onnx, home)
            port = free_port()
            server = Server(
                [
                    str(VENV_BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                f"http://127.0.0.1:{port}/ping",
                env={  # it runs `uvicorn` from PATH: the venv's, as after activating it
                    "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                    "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                },
            )
            try:
                log("mlflow models serve")
                rows = sweep(
                    server,
                    mlflow_requests(f"http://127.0.0.1:{port}", width, height),
                    levels,
                    best,
                    args.seconds,
                )
            finally:
                server.stop()
            result["mlflow"] = {"levels": rows}
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
