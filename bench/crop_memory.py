"""Peak memory (CPU RSS) of one local-stage training iteration of the paper's 1024p model
(local G ngf 32 with a global part of ngf 64 and 9 blocks, 3 local blocks, 3 D scales
of ndf 64, feature matching and VGG loss with random weights of the real shape), batch 1,
at full frame and with the square crops of ``data.preprocess: *_and_crop``.

The reference's figures are for 2048x1024 on a GPU (24 GB full, 12 GB with 1024x1024
crops); on this CPU the same model is measured at a quarter of the side (512x256 full
frame vs 256x256 and 128x128 crops) so that one iteration fits in minutes. Each case
runs in its own process so its peak RSS is its own.

``--publish`` writes the table (with the fixed part and the per-pixel slope of a least
squares line through the measured points, and the reference's sizes extrapolated along
it) and the plot into the docs (``bench/common.py``).

Usage: python bench/crop_memory.py [--cases 512x256,256x256,128x128] [--threads 2]
       [--out bench/results/crop_memory.json] [--publish]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import Publication, peak_rss_mb, pyplot, run_case, save_figure, write_results

NAME = "crop_memory"  # docs/data/NAME.{json,md}, docs/plots/NAME.png
REFERENCE = {"1024x1024 crop": 1024 * 1024, "2048x1024 full frame": 2048 * 1024}


def one(size: str, threads: int) -> dict:
    import torch
    from torchvision.models import vgg

    from model.config import DiscriminatorConfig, GeneratorConfig, LossConfig, ModelConfig
    from model.pix2pixhd import Pix2PixHD
    from model.training import TrainConfig, Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    w, h = (int(v) for v in size.split("x"))
    cfg = ModelConfig(
        generator=GeneratorConfig(ngf=32, n_local_enhancers=1),
        discriminator=DiscriminatorConfig(num_D=3, ndf=64),
        loss=LossConfig(use_vgg_loss=True),
    )
    feats = vgg.make_layers(vgg.cfgs["E"])
    model = Pix2PixHD(
        cfg, vgg_state_dict={f"features.{k}": v for k, v in feats.state_dict().items()}
    )
    rss_model = peak_rss_mb()
    tc = TrainConfig(log_every=0, sample_every=0, checkpoint_every=0)
    trainer = Trainer(model, [None], tc, Path("/tmp"), torch.device("cpu"))
    label = torch.randint(0, 35, (1, 1, h, w))
    batch = {"label": label, "instance": label.clone(), "image": torch.rand(1, 3, h, w) * 2 - 1}
    t = time.perf_counter()
    trainer.train_step(trainer._to_device(batch))
    return {
        "input": size,
        "pixels": w * h,
        "seconds_per_iteration": round(time.perf_counter() - t, 1),
        "rss_after_model_mb": rss_model,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="512x256,256x256,128x128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/crop_memory.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    pub = Publication(NAME, table, figure)
    pub.add_arguments(parser)
    args = parser.parse_args()
    if pub.render_instead(args):
        return
    if args.one:
        print(json.dumps(one(args.one, args.threads)))
        return
    results = []
    print(f"{'input':9s} {'pixels':>8s} {'s/iter':>7s} {'RSS model MB':>13s} {'peak RSS MB':>12s}")
    for size in args.cases.split(","):
        r = run_case(__file__, [size, "--threads", str(args.threads)])
        results.append(r)
        print(
            f"{r['input']:9s} {r['pixels']:8d} {r['seconds_per_iteration']:7.1f} "
            f"{r['rss_after_model_mb']:13.0f} {r['peak_rss_mb']:12.0f}",
            flush=True,
        )
    write_results(args.out, results, machine=False)
    pub.finish(args, results)


def fit(results: list[dict]) -> tuple[float, float]:
    """Least squares peak RSS (MB) = fixed + slope * pixels over the measured cases."""
    import numpy as np

    x = np.array([r["pixels"] for r in results], float)
    y = np.array([r["peak_rss_mb"] for r in results], float)
    slope, fixed = np.polyfit(x, y, 1)
    return float(fixed), float(slope)


def table(results: list[dict]) -> str:
    out = [
        "| input (W x H) | pixels | peak RSS | RSS with the model built | s / iteration |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: r["pixels"]):
        out.append(
            f"| {r['input']} | {r['pixels']:,} | {r['peak_rss_mb'] / 1024:.2f} GB "
            f"| {r['rss_after_model_mb'] / 1024:.2f} GB | {r['seconds_per_iteration']} |"
        )
    if len(results) >= 2:
        fixed, slope = fit(results)
        for name, pixels in REFERENCE.items():
            out.append(
                f"| {name} (extrapolated) | {pixels:,} | ~{(fixed + slope * pixels) / 1024:.1f} GB "
                "| | |"
            )
        out += [
            "",
            f"Least squares line through the measured points: {fixed / 1024:.2f} GB fixed "
            f"+ {slope * 1024:.2f} KB per pixel.",
        ]
    return "\n".join(out)


def figure(results: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = [r["pixels"] / 1e6 for r in results]
    ax.plot(xs, [r["peak_rss_mb"] / 1024 for r in results], "o", label="measured")
    if len(results) >= 2:
        fixed, slope = fit(results)
        top = max(REFERENCE.values())
        ax.plot(
            [0, top / 1e6],
            [fixed / 1024, (fixed + slope * top) / 1024],
            "--",
            lw=1,
            label="least squares line",
        )
        for name, pixels in REFERENCE.items():
            y = (fixed + slope * pixels) / 1024
            ax.plot([pixels / 1e6], [y], "x", color="C3")
            ax.annotate(
                f"{name} (extrapolated)",
                (pixels / 1e6, y),
                fontsize=7,
                xytext=(-8, 4),
                textcoords="offset points",
                ha="right",
            )
    ax.set_xlabel("input pixels (millions)")
    ax.set_ylabel("peak RSS (GB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("One local-stage training iteration, 1024p model, batch 1, fp32 (CPU)", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
