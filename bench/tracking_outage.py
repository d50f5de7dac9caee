"""Issue 11, item 1: train and evaluate with the tracking store down vs without tracking.

Runs `pix2pixhd train` (tiny global stage) and `pix2pixhd evaluate` as a user would (a
fresh interpreter each), interleaved, with: no tracking; a refused HTTP server (closed
port); a hung HTTP server (accepts, never answers); an unwritable SQLite store. Evaluate
runs with tracking.optional=true (otherwise an outage stops it before the work).

    python bench/tracking_outage.py [--repeats 2] [--publish]

``--publish`` writes the table into the docs (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import Publication

ROOT = Path(__file__).resolve().parents[1]
NAME = "tracking_outage"  # docs/data/NAME.{json,md}
TINY = [
    "data.width=64",
    "data.height=32",
    "model.generator.n_local_enhancers=0",
    "model.generator.ngf=8",
    "model.generator.n_downsample_global=2",
    "model.generator.n_blocks_global=1",
    "model.discriminator.ndf=8",
    "model.discriminator.n_layers_D=2",
    "model.discriminator.num_D=1",
    "model.loss.use_vgg_loss=false",
    "train_global.niter=2",
    "train_global.niter_decay=0",
    "train_global.log_every=1",
    "train_global.sample_every=4",
    "train_global.checkpoint_every=4",
    "evaluate.batch_size=4",
    "segmenter.backbone=light",
    "segmenter.epochs=0",
    "tracking.optional=true",
]


def _hung_server() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held = []

    def accept():
        while True:
            held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return sock.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    sets = [a for s in TINY for a in ("--set", s)]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pix2pixhd", *args, *sets],
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-2000:]}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    pub = Publication(NAME, table)
    pub.add_arguments(ap)
    opts = ap.parse_args()
    if pub.render_instead(opts):
        return
    work = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    data = work / "data"
    subprocess.run(
        [sys.executable, "-m", "pix2pixhd", "data", "synth", "--out", str(data),
         "--num-train", "8", "--num-val", "4", "--width", "64", "--height", "32"],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    ro = work / "ro"
    ro.mkdir()
    (ro / "mlflow.db").mkdir()  # a directory where the SQLite file should be: unusable
    modes = {
        "no tracking": None,
        "refused server": f"http://127.0.0.1:{_closed_port()}",
        "hung server": f"http://127.0.0.1:{_hung_server()}",
        "unwritable sqlite": f"sqlite:///{ro / 'mlflow.db'}",
    }
    seg = work / "seg"
    _cli("segmenter", "train", "--data", str(data), "--out", str(seg))
    times: dict[str, dict[str, list[float]]] = {m: {"train": [], "evaluate": []} for m in modes}
    for rep in range(opts.repeats):
        for mode, uri in modes.items():
            track = ["--no-tracking"] if uri is None else ["--tracking-uri", uri]
            out = work / f"t{rep}-{mode.replace(' ', '_')}"
            times[mode]["train"].append(
                _cli("train", "--stage", "global", "--data", str(data), "--out", str(out), *track)
            )
            times[mode]["evaluate"].append(
                _cli(
                    "evaluate",
                    "--checkpoint",
                    str(out / "latest.pth"),
                    "--segmenter",
                    str(seg / "segmenter.pth"),
                    "--data",
                    str(data),
                    "--out",
                    str(out / "e"),
                    *track,
                )  # fmt: skip
            )
    base = {k: statistics.median(v) for k, v in times["no tracking"].items()}
    report = {
        mode: {
            step: {
                "median_s": round(statistics.median(v), 2),
                "ratio_vs_no_tracking": round(statistics.median(v) / base[step], 2),
                "runs_s": [round(x, 2) for x in v],
            }
            for step, v in steps.items()
        }
        for mode, steps in times.items()
    }
    print(json.dumps(report, indent=2))
    pub.finish(opts, report)


def table(report: dict) -> str:
    """Wall seconds per command (a fresh interpreter each, imports included), median of
    the repeats, and the difference to the same command without tracking."""
    base = report["no tracking"]
    out = [
        "| tracking store | train (tiny global stage) | vs no tracking | evaluate "
        "| vs no tracking |",
        "|---|---|---|---|---|",
    ]
    for mode, steps in report.items():
        cells = []
        for step in ("train", "evaluate"):
            v = steps[step]
            extra = v["median_s"] - base[step]["median_s"]
            cells += [
                f"{v['median_s']:.2f} s ({', '.join(f'{x:.2f}' for x in v['runs_s'])})",
                "" if mode == "no tracking" else f"{extra:+.2f} s",
            ]
        out.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
