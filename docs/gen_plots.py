"""The demo's training losses, rendered into docs/plots/losses.png (a committed PNG),
from data/train_global/losses.csv and data/train_local/losses.csv (DVC outputs of `make
demo`; skipped, keeping the committed figure, when absent).

The benchmark plots are drawn by their scripts (bench/common.py ``--publish``;
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
PLOTS = ROOT / "docs" / "plots"
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


def main() -> int:
    PLOTS.mkdir(exist_ok=True)
    if losses(PLOTS / "losses.png"):
        sys.stdout.write(f"{PLOTS / 'losses.png'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
