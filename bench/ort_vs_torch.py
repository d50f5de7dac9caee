"""ONNX Runtime vs PyTorch eager: generation time and peak RSS per image on CPU, batch 1.

Configurations: the demo generator of params.yaml (local, 256x128) and the Cityscapes
ones (global ngf 64 at 1024x512, local ngf 32 at 2048x1024), random weights (seed 0;
time does not depend on them). Per configuration the graph is exported once (its own
process), then every engine runs in its own process, so each peak RSS is that engine's
alone: PyTorch eager (``torch.inference_mode``) and ONNX Runtime with session options
``--ort`` (``project``: ``components.onnx_session.session_options``, what generate / edit /
serve use; ``default``: onnxruntime's defaults; ``no_arena``, ``no_pattern``,
``project+no_prepack`` to take the memory apart). The ONNX processes import onnxruntime
and numpy only. Engines alternate (ABAB...) ``--rounds`` times, each process timing
``--repeats`` runs after a warm-up, so ratios come from one run; both start from raw
label ids (encoding included) and write their output, compared at the end (max |diff|).

``--publish`` writes the table and the plot (seconds and peak RSS by size) into the
docs (``bench/common.py``).

Usage: python bench/ort_vs_torch.py [--configs demo,global_1024,local_2048] [--rounds 2]
           [--repeats 2] [--threads 2] [--ort project,default] [--out FILE.json] [--publish]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Publication, pyplot, save_figure

ROOT = Path(__file__).resolve().parent.parent
NAME = "ort_vs_torch"  # docs/data/NAME.{json,md}, docs/plots/NAME.png
CONFIGS = {
    "demo": dict(params=True, size=(128, 256)),
    "global_1024": dict(ngf=64, n_local_enhancers=0, size=(512, 1024)),
    "local_2048": dict(ngf=32, n_local_enhancers=1, size=(1024, 2048)),
}
ORT_VARIANTS = {  # overrides of components.onnx_session.session_options()
    "project": {},
    "default": {
        "enable_cpu_mem_arena": True,
        "enable_mem_pattern": True,
        "session.intra_op.allow_spinning": "1",
    },
    "no_arena": {"enable_cpu_mem_arena": False, "enable_mem_pattern": True},
    "no_pattern": {"enable_cpu_mem_arena": True, "enable_mem_pattern": False},
    "project+no_prepack": {"session.disable_prepacking": "1"},
    "project+spinning": {"session.intra_op.allow_spinning": "1"},
}


def _status_mb() -> dict[str, float]:
    """Current and peak resident set of this process (MB), from /proc."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _model(name: str):
    from model.config import GeneratorConfig, ModelConfig
    from model.pix2pixhd import Pix2PixHD

    spec = CONFIGS[name]
    if spec.get("params"):
        from components.params import load_params, stage_model_config

        cfg = stage_model_config(load_params(ROOT / "params.yaml", []), "local")
    else:
        cfg = ModelConfig(
            generator=GeneratorConfig(ngf=spec["ngf"], n_local_enhancers=spec["n_local_enhancers"])
        )
    import torch

    torch.manual_seed(0)
    return Pix2PixHD(cfg, with_discriminator=False).eval()


def _inputs(name: str, feat_num: int, names: list[str]):
    import numpy as np

    h, w = CONFIGS[name]["size"]
    rng = np.random.default_rng(0)
    label = rng.integers(0, 34, (1, 1, h, w), dtype=np.int64)
    feeds = {"label": label}
    if "instance" in names:
        feeds["instance"] = label * 1000 + rng.integers(0, 3, label.shape)
    if "features" in names:
        feeds["features"] = (rng.random((1, feat_num, h, w), dtype=np.float32) * 2 - 1).astype(
            np.float32
        )
    return feeds


def do_export(name: str, path: Path) -> dict:
    from model.export import export_onnx

    model = _model(name)
    t = time.perf_counter()
    export_onnx(model, path)
    return {"export_s": round(time.perf_counter() - t, 1)}


def do_run(name: str, engine: str, onnx_path: Path, out: Path, repeats: int, threads: int):
    import numpy as np

    if engine == "torch":
        import torch

        torch.set_num_threads(threads)
        after_import = _status_mb()["VmRSS"]
        model = _model(name)
        from model.export import ExportableGenerator, input_names

        wrapper = ExportableGenerator(model).eval()
        feeds = _inputs(name, model.cfg.encoder.feat_num, input_names(model))
        tensors = [torch.from_numpy(v) for v in feeds.values()]

        def fn():
            with torch.inference_mode():
                return wrapper(*tensors).numpy()

        version = torch.__version__
    else:
        import onnxruntime as ort

        from components.onnx_session import session_options

        after_import = _status_mb()["VmRSS"]
        opts = session_options(threads)
        for key, value in ORT_VARIANTS[engine.removeprefix("ort:")].items():
            if key.startswith("session."):
                opts.add_session_config_entry(key, value)
            else:
                setattr(opts, key, value)
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        feat = next((i.shape[1] for i in session.get_inputs() if i.name == "features"), 0)
        feeds = _inputs(name, feat, names)

        def fn():
            return session.run(None, feeds)[0]

        version = ort.__version__
    loaded = _status_mb()["VmRSS"]
    t = time.perf_counter()
    result = fn()  # warm-up
    first_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    np.save(out, result)
    mem = _status_mb()
    return {
        "s": min(times),
        "all_s": [round(x, 3) for x in times],
        "first_s": round(first_s, 3),
        "rss_after_import_mb": round(after_import),
        "rss_loaded_mb": round(loaded),
        "peak_rss_mb": round(mem["VmHWM"]),
        "version": version,
    }


def _sub(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"{' '.join(args)}: failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_config(name: str, engines: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    import numpy as np

    onnx_path = tmp / f"{name}.onnx"
    info = _sub("--export", name, str(onnx_path))
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        order = engines if r % 2 == 0 else engines[::-1]
        for engine in order:
            res = _sub(
                "--run",
                name,
                engine,
                str(onnx_path),
                str(tmp / f"{name}_{engine}.npy".replace(":", "_")),
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            )
            runs[engine].append(res)
            print(
                f"  {name} round {r + 1} {engine:24s} {res['s']:8.3f} s  "
                f"peak {res['peak_rss_mb']:6d} MB  (loaded {res['rss_loaded_mb']} MB)",
                flush=True,
            )
    ref = np.load(tmp / f"{name}_torch.npy")
    h, w = CONFIGS[name]["size"]
    out = {"config": name, "size": f"{w}x{h}", **info, "engines": {}}
    for engine in engines:
        rs = runs[engine]
        got = np.load(tmp / f"{name}_{engine}.npy".replace(":", "_"))
        out["engines"][engine] = {
            "s": round(min(x["s"] for x in rs), 4),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in rs),
            "rss_after_import_mb": rs[0]["rss_after_import_mb"],
            "rss_loaded_mb": rs[0]["rss_loaded_mb"],
            "max_abs_diff_vs_torch": float(np.abs(got - ref).max()),
            "rounds": rs,
        }
    t = out["engines"]["torch"]
    for engine in engines[1:]:
        e = out["engines"][engine]
        # per-round ratios (same round = closest in time): their spread is the noise
        ratios = [a["s"] / b["s"] for a, b in zip(runs[engine], runs["torch"], strict=True)]
        e["time_ratio_vs_torch"] = round(e["s"] / t["s"], 3)
        e["time_ratio_per_round"] = [round(x, 3) for x in ratios]
        e["rss_ratio_vs_torch"] = round(e["peak_rss_mb"] / t["peak_rss_mb"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--rounds", type=int, default=2, help="ABAB... rounds of processes")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ort", default="project", help=f"of {', '.join(ORT_VARIANTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ort_vs_torch.json")
    parser.add_argument("--export", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--run", nargs=4, help=argparse.SUPPRESS)
    pub = Publication(NAME, table, figure)
    pub.add_arguments(parser)
    args = parser.parse_args()
    if pub.render_instead(args):
        return
    if args.export:
        print(json.dumps(do_export(args.export[0], Path(args.export[1]))))
        return
    if args.run:
        name, engine, path, out = args.run
        print(json.dumps(do_run(name, engine, Path(path), Path(out), args.repeats, args.threads)))
        return
    configs = args.configs.split(",")
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    variants = args.ort.split(",")
    for v in variants:
        if v not in ORT_VARIANTS:
            parser.error(f"unknown --ort variant {v!r}; choose from {', '.join(ORT_VARIANTS)}")
    engines = ["torch", *(f"ort:{v}" for v in variants)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in configs:
            results.append(bench_config(name, engines, args, Path(tmp)))
    print(
        f"\n{'config':12s} {'size':>9s} {'engine':22s} {'s/image':>8s} {'ratio':>6s} "
        f"{'peak RSS':>9s} {'ratio':>6s} {'max|diff|':>9s}"
    )
    for res in results:
        for engine, e in res["engines"].items():
            print(
                f"{res['config']:12s} {res['size']:>9s} {engine:22s} {e['s']:8.3f} "
                f"{e.get('time_ratio_vs_torch', 1.0):6.2f} {e['peak_rss_mb']:7d}MB "
                f"{e.get('rss_ratio_vs_torch', 1.0):6.2f} {e['max_abs_diff_vs_torch']:9.1e}"
            )
    for res in results:
        for engine, e in res["engines"].items():
            if "time_ratio_per_round" in e:
                spread = e["time_ratio_per_round"]
                print(
                    f"{res['config']} {engine}: time ratio per round {spread} "
                    f"(median {statistics.median(spread):.2f})"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "argv": sys.argv[1:]}
    args.out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    pub.finish(args, results)


LABELS = {  # how the table and the plot name the configurations and engines
    "demo": "demo local G (params.yaml)",
    "global_1024": "global G, ngf 64",
    "local_2048": "local G, ngf 32",
    "torch": "PyTorch eager",
    "ort:project": "ONNX Runtime, project options",
    "ort:default": "ONNX Runtime, its defaults",
    "ort:no_arena": "ORT, arena off only",
    "ort:no_pattern": "ORT, memory pattern off only",
    "ort:project+no_prepack": "ORT, project + prepacking off",
    "ort:project+spinning": "ORT, project + spinning threads",
}


def table(results: list[dict]) -> str:
    """One row per configuration and engine: best time, the per-round time ratios to
    PyTorch (same round = closest in time), peak RSS and its ratio, output difference."""
    out = [
        "| configuration | size | engine | s / image | vs PyTorch per round | peak RSS "
        "| vs PyTorch | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for engine, e in res["engines"].items():
            rounds = ", ".join(f"{x:.2f}" for x in e.get("time_ratio_per_round", [])) or "1"
            out.append(
                f"| {LABELS.get(res['config'], res['config'])} | {res['size']} "
                f"| {LABELS.get(engine, engine)} | {e['s']:.3f} | {rounds} "
                f"| {e['peak_rss_mb']} MB | {e.get('rss_ratio_vs_torch', 1.0):.2f}x "
                f"| {e['max_abs_diff_vs_torch']:.1e} |"
            )
    return "\n".join(out)


def figure(results: list[dict], path: Path) -> None:
    """Seconds per image and peak RSS by configuration, one bar per engine."""
    plt = pyplot()
    engines = list(results[0]["engines"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(engines)
    for ax, key, title in (
        (axes[0], "s", "seconds per image (batch 1, log scale)"),
        (axes[1], "peak_rss_mb", "peak RSS (MB)"),
    ):
        for k, engine in enumerate(engines):
            xs = [i + (k - (len(engines) - 1) / 2) * width for i in range(len(results))]
            values = [r["engines"][engine][key] for r in results]
            ax.bar(xs, values, width, label=LABELS.get(engine, engine))
            if engine != "torch":
                for x, r, v in zip(xs, results, values, strict=True):
                    ratio = v / r["engines"]["torch"][key]
                    ax.text(x, v, f"{ratio:.2f}x", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(
            range(len(results)),
            [f"{LABELS.get(r['config'], r['config'])}\n{r['size']}" for r in results],
            fontsize=8,
        )
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("ONNX Runtime vs PyTorch on CPU (bench/ort_vs_torch.py; ratios to PyTorch)")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
