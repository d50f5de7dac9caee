"""The demo's reproducibility band: the same configuration trained with other seeds,
precisions and CPU instruction sets, every score of evaluate's metrics.json compared.

One dataset and one frozen segmenter are made once (as `make demo` makes them); then,
for every case, the two training stages, the features and evaluate run through the
`pix2pixhd` command line exactly as dvc.yaml runs them, with `--set` for the case:

  seed S          train_global.seed = train_local.seed = S (initialisation, data order,
                  augmentation draws); everything else as params.yaml
  precision P     train_*.precision = P (fp32 | bf16 | auto)
  isa I           ONEDNN_MAX_CPU_ISA = I for the training processes (oneDNN's own way to
                  emulate an older CPU: AVX2, AVX512_CORE, AVX512_CORE_BF16 ...; only
                  instruction sets the CPU has can be selected, the others fall back)

Usage (each case is one demo training, about 7-10 minutes on 2 cores):
  python bench/band.py --out bench/results/band --seeds 0,1,2 --precisions fp32
  python bench/band.py --out bench/results/band --seeds 0 --precisions fp32 --isas SSE41
  python bench/band.py --out bench/results/band --report     # table + plot of what ran

Cases already in OUT/cases/ are not run again. Writes OUT/band.json (every case's
metrics.json and the CPU), OUT/band.md (the table: mean, sd, min and max of every score
over the seed cases, and each other case beside it) and OUT/band.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCORES = (
    ("generated.mean_iou", 1.0, "mIoU"),
    ("generated.pixel_accuracy", 1.0, "pixel acc"),
    ("generated.kid_seg", 1e3, "KID_seg x1e3"),
    ("generated.kid_inception", 1e3, "KID_inc x1e3"),
)


def cli(*args: str, env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, "-m", "pix2pixhd", "-q", *map(str, args)]
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")


def cpu() -> str:
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(line for line in text.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("amx_tile", "avx512_bf16", "avx512f", "avx2") if f" {f}" in flags]
    name = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line),
        platform.processor(),
    )
    return f"{name} ({', '.join(isa) or 'no avx2'})"


def shared(out: Path, params: Path) -> tuple[Path, Path]:
    data, seg = out / "synth", out / "segmenter"
    if not (data / "gtFine").exists():
        cli("data", "synth", "--params", params, "--out", data)
    if not (seg / "segmenter.pth").exists():
        cli("segmenter", "train", "--params", params, "--data", data, "--out", seg)
    return data, seg


def run_case(out: Path, params: Path, seed: int, precision: str, isa: str) -> dict:
    name = f"seed{seed}_{precision}_{isa or 'native'}"
    case = out / "cases" / name
    if (case / "evaluate" / "metrics.json").exists():
        return json.loads((case / "case.json").read_text())
    data, seg = shared(out, params)
    env = {"ONEDNN_MAX_CPU_ISA": isa} if isa else {}
    sets = []
    for stage in ("train_global", "train_local"):
        sets += ["--set", f"{stage}.seed={seed}", "--set", f"{stage}.precision={precision}"]
    common = ["--params", params, "--data", data, "--no-tracking", *sets]
    start = time.perf_counter()
    cli("boundaries", "--params", params, "--data", data, "--out", out / "boundaries")
    cli(
        "train",
        "--stage",
        "global",
        *common,
        "--boundaries",
        out / "boundaries",
        "--out",
        case / "train_global",
        env=env,
    )
    cli(
        "train",
        "--stage",
        "local",
        *common,
        "--boundaries",
        out / "boundaries",
        "--init",
        case / "train_global" / "latest.pth",
        "--out",
        case / "train_local",
        env=env,
    )
    cli(
        "features",
        "--params",
        params,
        "--checkpoint",
        case / "train_local" / "latest.pth",
        "--data",
        data,
        "--out",
        case / "features",
    )
    cli(
        "evaluate",
        "--params",
        params,
        "--checkpoint",
        case / "features" / "model.pth",
        "--segmenter",
        seg / "segmenter.pth",
        "--data",
        data,
        "--out",
        case / "evaluate",
        "--no-tracking",
    )
    result = {
        "case": name,
        "seed": seed,
        "precision": precision,
        "isa": isa or "native",
        "cpu": cpu(),
        "wall_s": round(time.perf_counter() - start, 1),
        "load_average": os.getloadavg()[0],
        "metrics": json.loads((case / "evaluate" / "metrics.json").read_text()),
    }
    (case / "case.json").write_text(json.dumps(result, indent=2))
    return result


def value(metrics: dict, key: str) -> float | None:
    node = metrics
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node)


def report(out: Path) -> str:
    cases = [json.loads(p.read_text()) for p in sorted(out.glob("cases/*/case.json"))]
    band = {
        "what": "evaluate's metrics.json of the demo configuration trained with other seeds, "
        "precisions and instruction sets (bench/band.py); components/compare.py reads it",
        "runs": [c["metrics"] for c in cases],
        "cases": [{k: v for k, v in c.items() if k != "metrics"} for c in cases],
    }
    (out / "band.json").write_text(json.dumps(band, indent=2))
    seeds = [c for c in cases if c["isa"] == "native"]
    lines = [
        f"CPU: {cases[0]['cpu'] if cases else '-'}; {len(cases)} cases.",
        "",
        "| cases | " + " | ".join(label for _, _, label in SCORES) + " |",
        "|---|" + "---|" * len(SCORES),
    ]
    for precision in sorted({c["precision"] for c in seeds}):
        group = [c for c in seeds if c["precision"] == precision]
        cells = []
        for key, scale, _ in SCORES:
            vals = [value(c["metrics"], key) for c in group]
            vals = [v * scale for v in vals if v is not None]
            if not vals:
                cells.append("-")
                continue
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(
                f"{statistics.mean(vals):.4g} ± {sd:.2g} [{min(vals):.4g}, {max(vals):.4g}]"
            )
        seeds_used = ",".join(str(c["seed"]) for c in group)
        lines.append(
            f"| {precision}, seeds {seeds_used} (mean ± sd [min, max]) | "
            + " | ".join(cells)
            + " |"
        )
    for c in cases:
        cells = []
        for key, scale, _ in SCORES:
            v = value(c["metrics"], key)
            cells.append("-" if v is None else f"{v * scale:.4g}")
        lines.append(f"| {c['case']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "band.md").write_text(text)
    try:
        plot(cases, out / "band.png")
    except ImportError:
        pass
    return text


def plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2))
    for ax, (key, scale, label) in zip(axes, SCORES, strict=True):
        for i, c in enumerate(cases):
            v = value(c["metrics"], key)
            if v is not None:
                ax.plot([v * scale], [i], "o")
        ax.set_yticks(range(len(cases)), [c["case"] for c in cases], fontsize=7)
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "band")
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--seeds", default="0")
    p.add_argument("--precisions", default="fp32")
    p.add_argument("--isas", default="", help="ONEDNN_MAX_CPU_ISA values (empty: native)")
    p.add_argument("--report", action="store_true", help="only write the table and plot")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.report:
        isas = [i for i in a.isas.split(",") if i] or [""]
        for isa in isas:
            for precision in a.precisions.split(","):
                for seed in (int(s) for s in a.seeds.split(",")):
                    r = run_case(a.out, a.params, seed, precision, isa)
                    print(r["case"], json.dumps(r["metrics"]["generated"]), flush=True)
    print(report(a.out))


if __name__ == "__main__":
    main()
