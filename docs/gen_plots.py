"""The figures of the docs site, rendered into docs/plots/ (committed PNGs).

- losses.png: the demo's training losses, from data/train_global/losses.csv and
  data/train_local/losses.csv (DVC outputs of `make demo`; skipped, keeping the
  committed figure, when absent);
- ablation.png: bench/quality.py's table of 2026-11-30, from docs/data/ablation.csv
  (which names the commit and the machine), until the ablation is measured again.

The other benchmark plots are drawn by their scripts (bench/common.py ``--publish``;
bench/serve_load.py ``--tables --plot``).

Run by hand after a new measurement or demo run: `python docs/gen_plots.py`
(matplotlib comes with mlflow in the `mlops` extra). `make docs` does not run it, so the
site builds without the DVC outputs.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "data"
PLOTS = ROOT / "docs" / "plots"
SHORT = {  # the ablation's variants, as the x axis shows them
    "full (multi-scale D + FM)": "full\n(multi-scale D + FM)",
    "single D without FM": "single D,\nno FM",
    "U-Net generator (pix2pix)": "U-Net G\n(pix2pix)",
}
SAVE = {"dpi": 110, "bbox_inches": "tight", "metadata": {"Software": None}}


def rows(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def number(text: str) -> float:
    return float(text) if text not in ("", None) else float("nan")


def losses(out: Path) -> bool:
    stages = [
        ("global", ROOT / "data/train_global/losses.csv"),
        ("local", ROOT / "data/train_local/losses.csv"),
    ]
    if not all(path.exists() for _, path in stages):
        sys.stderr.write(
            f"skipped {out.name}: no losses.csv (run `make demo`); kept the committed one\n"
        )
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for ax, (stage, path) in zip(axes, stages, strict=True):
        data = rows(path)
        step = [int(r["step"]) for r in data]
        for key, style in (
            ("G_total", "-"),
            ("G_GAN", "--"),
            ("G_GAN_Feat", ":"),
            ("D_total", "-."),
        ):
            values = [number(r.get(key, "")) for r in data]
            if any(v == v for v in values):  # not all NaN
                ax.plot(step, values, style, label=key)
        ax.set_title(f"{stage} stage ({path.relative_to(ROOT)})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss (logged every log_every iterations)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("make demo: training losses", fontsize=10)
    fig.savefig(out, **SAVE)
    plt.close(fig)
    return True


def ablation(out: Path) -> None:
    data = rows(DATA / "ablation.csv")
    models = [r for r in data if r["iterations_mean"]]
    real = next(r for r in data if not r["iterations_mean"])
    names = [r["variant"] for r in models]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = (
        ("miou", "mean IoU (19 train ids)", float(real["miou_mean"])),
        ("pixel_acc", "pixel accuracy (%)", float(real["pixel_acc_mean"])),
        ("kid_seg", "KID in the segmenter's space (x1e3, lower is better)", None),
    )
    for ax, (key, label, oracle) in zip(axes, panels, strict=True):
        means = [number(r[f"{key}_mean"]) for r in models]
        sds = [number(r[f"{key}_sd"]) for r in models]
        ax.bar(range(len(models)), means, yerr=sds, capsize=5, color=["C0", "C3", "C2"])
        if oracle is not None:
            ax.axhline(oracle, color="k", ls="--", lw=1, label="real photos")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(models)), [SHORT.get(n, n) for n in names], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Ablation at 240 CPU-s per case (bench/quality.py, f048878): mean ± sd over seeds 0 and 1",
        fontsize=10,
    )
    fig.savefig(out, **SAVE)
    plt.close(fig)


def main() -> int:
    PLOTS.mkdir(exist_ok=True)
    if losses(PLOTS / "losses.png"):
        sys.stdout.write(f"{PLOTS / 'losses.png'}\n")
    for name, draw in (("ablation", ablation),):
        draw(PLOTS / f"{name}.png")
        sys.stdout.write(f"{PLOTS / f'{name}.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
