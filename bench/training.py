"""Global-stage training iteration time and peak memory on CPU, batch 1.

Sizes 256x128, 512x256, 1024x512; paper widths (ngf 64, 9 blocks, ndf 64, 2 D scales,
VGG loss with random weights of the real shape) and the demo widths of params.yaml;
fp32, bf16 autocast, fp32 + channels_last and fp32 + torch.compile. Each case runs in
its own process so its peak RSS is its own.

Usage: python bench/training.py [--repeats N] [--sizes 256x128,512x256,1024x512]
       [--widths demo,paper] [--variants fp32,bf16,fp32+channels_last,fp32+compile]
       python bench/training.py --compare-precision N --widths demo --sizes 256x128
         (fp32 vs bf16 autocast, same weights and batches, steps interleaved: losses
         after N iterations and the iteration time ratio)
bf16 autocast is emulated on CPUs without AVX512-BF16/AMX and then runs ~40x slower:
measure it at the small size first. ``--publish`` writes the table into the docs
(``bench/common.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import Publication, peak_rss_mb, run_case, write_results

NAME = "training"  # docs/data/NAME.{json,md}

WIDTHS = {
    "paper": dict(ngf=64, n_blocks=9, ndf=64, vgg=True),
    "demo": dict(ngf=16, n_blocks=4, ndf=16, vgg=False),
}
VARIANTS = {
    "fp32": dict(precision="fp32", channels_last=False),
    "bf16": dict(precision="bf16", channels_last=False),
    "fp32+channels_last": dict(precision="fp32", channels_last=True),
    "fp32+compile": dict(precision="fp32", channels_last=False, compile=True),
}


def one(width: str, size: str, variant: str, repeats: int, threads: int) -> dict:
    import torch
    from torchvision.models import vgg

    from model.config import DiscriminatorConfig, GeneratorConfig, LossConfig, ModelConfig
    from model.pix2pixhd import Pix2PixHD
    from model.training import TrainConfig, Trainer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec, var = WIDTHS[width], VARIANTS[variant]
    w, h = (int(v) for v in size.split("x"))
    cfg = ModelConfig(
        generator=GeneratorConfig(ngf=spec["ngf"], n_blocks_global=spec["n_blocks"]),
        discriminator=DiscriminatorConfig(num_D=2, ndf=spec["ndf"]),
        loss=LossConfig(use_vgg_loss=spec["vgg"]),
    )
    vgg_state = None
    if spec["vgg"]:
        feats = vgg.make_layers(vgg.cfgs["E"])
        vgg_state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    model = Pix2PixHD(cfg, vgg_state_dict=vgg_state)
    tc = TrainConfig(
        precision=var["precision"],
        channels_last=var["channels_last"],
        compile=var.get("compile", False),
        log_every=0,
        sample_every=0,
        checkpoint_every=0,
    )
    trainer = Trainer(model, [None], tc, Path("/tmp"), torch.device("cpu"))
    label = torch.randint(0, 35, (1, 1, h, w))
    batch = {"label": label, "instance": label.clone(), "image": torch.rand(1, 3, h, w) * 2 - 1}
    batch = trainer._to_device(batch)
    t0 = time.perf_counter()
    trainer.train_step(batch)  # warm-up (with torch.compile: the compilation)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t)
    return {
        "width": width,
        "size": size,
        "variant": variant,
        "seconds_per_iteration": min(times),
        "all": [round(t, 3) for t in times],
        "first_step_s": round(first_s, 1),
        "peak_rss_mb": peak_rss_mb(),
    }


def compare_precision(width: str, size: str, iters: int, threads: int) -> dict:
    """fp32 vs bf16 autocast from the same weights on the same batches, steps
    interleaved: the loss difference after ``iters`` iterations and the time ratio."""
    import copy
    import statistics

    import torch

    from model.config import DiscriminatorConfig, GeneratorConfig, LossConfig, ModelConfig
    from model.pix2pixhd import Pix2PixHD
    from model.training import TrainConfig, Trainer, cpu_has_native_bf16, resolve_precision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = WIDTHS[width]
    w, h = (int(v) for v in size.split("x"))
    cfg = ModelConfig(
        generator=GeneratorConfig(ngf=spec["ngf"], n_blocks_global=spec["n_blocks"]),
        discriminator=DiscriminatorConfig(num_D=2, ndf=spec["ndf"]),
        loss=LossConfig(use_vgg_loss=False),
    )
    base = Pix2PixHD(cfg)
    trainers = {}
    for prec in ("fp32", "bf16"):
        tc = TrainConfig(precision=prec, log_every=1, sample_every=0, checkpoint_every=0)
        trainers[prec] = Trainer(copy.deepcopy(base), [None], tc, Path("/tmp"), torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    losses: dict[str, list[dict]] = {k: [] for k in trainers}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for i in range(iters):
        label = torch.randint(0, 35, (1, 1, h, w), generator=g)
        batch = {"label": label, "instance": label * 1000 + i % 2}
        batch["image"] = torch.rand(1, 3, h, w, generator=g) * 2 - 1
        order = list(trainers) if i % 2 == 0 else list(trainers)[::-1]
        for prec in order:
            t = time.perf_counter()
            out = trainers[prec].train_step(dict(batch))
            times[prec].append(time.perf_counter() - t)
            losses[prec].append(out)
    last = {k: v[-1] for k, v in losses.items()}
    window = max(1, iters // 4)  # mean over the last quarter: less step-to-step noise
    mean_last = {
        k: {n: statistics.mean(x[n] for x in v[-window:]) for n in ("G_total", "D_total")}
        for k, v in losses.items()
    }
    med = {k: statistics.median(v[1:] or v) for k, v in times.items()}
    return {
        "width": width,
        "size": size,
        "iterations": iters,
        "native_bf16": cpu_has_native_bf16(),
        "auto_resolves_to": resolve_precision("auto", torch.device("cpu")),
        "s_per_iteration": {k: round(v, 4) for k, v in med.items()},
        "bf16_time_ratio": round(med["bf16"] / med["fp32"], 3),
        "last_losses": last,
        f"mean_losses_last_{window}": mean_last,
        "G_total_abs_diff_last": abs(last["bf16"]["G_total"] - last["fp32"]["G_total"]),
        "G_total_rel_diff_mean_last": abs(
            mean_last["bf16"]["G_total"] / mean_last["fp32"]["G_total"] - 1
        ),
        "D_total_rel_diff_mean_last": abs(
            mean_last["bf16"]["D_total"] / mean_last["fp32"]["D_total"] - 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="256x128,512x256,1024x512")
    parser.add_argument("--widths", default="demo,paper")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/training.json"))
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--compare-precision",
        type=int,
        metavar="N",
        help="instead: fp32 vs bf16 for N iterations on the first --widths / --sizes",
    )
    pub = Publication(NAME, table)
    pub.add_arguments(parser)
    args = parser.parse_args()
    if pub.render_instead(args):
        return
    if args.compare_precision:
        width, size = args.widths.split(",")[0], args.sizes.split(",")[0]
        res = compare_precision(width, size, args.compare_precision, args.threads)
        print(json.dumps(res, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        return
    if args.one:
        print(json.dumps(one(*args.one, args.repeats, args.threads)))
        return
    results = []
    print(f"{'widths':6s} {'size':9s} {'variant':20s} {'s/iter':>8s} {'peak RSS MB':>12s}")
    for width in args.widths.split(","):
        for size in args.sizes.split(","):
            for variant in args.variants.split(","):
                options = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
                try:
                    r = run_case(__file__, [width, size, variant, *options])
                except RuntimeError as exc:
                    print(f"{width:6s} {size:9s} {variant:20s} failed: {exc}")
                    continue
                results.append(r)
                print(
                    f"{width:6s} {size:9s} {variant:20s} {r['seconds_per_iteration']:8.3f} "
                    f"{r['peak_rss_mb']:12.1f}",
                    flush=True,
                )
    write_results(args.out, results, machine=False)
    pub.finish(args, results)


def table(results: list[dict]) -> str:
    """One row per widths and size; a column pair (s/iter, peak RSS) per variant."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    cases = list(dict.fromkeys((r["width"], r["size"]) for r in results))
    by = {(r["width"], r["size"], r["variant"]): r for r in results}
    head = "| widths | size | " + " | ".join(f"{v} s/iter | {v} peak RSS" for v in variants)
    out = [head + " |", "|---|---|" + "---|---|" * len(variants)]
    for width, size in cases:
        cells = []
        for v in variants:
            r = by.get((width, size, v))
            cells += (
                [f"{r['seconds_per_iteration']:.3f}", f"{r['peak_rss_mb'] / 1024:.2f} GB"]
                if r
                else ["failed", ""]
            )
        out.append(f"| {width} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
