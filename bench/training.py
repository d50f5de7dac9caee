"""Global-stage training iteration time and peak memory on CPU, batch 1.

Sizes 256x128, 512x256, 1024x512; paper widths (ngf 64, 9 blocks, ndf 64, 2 D scales,
VGG loss with random weights of the real shape) and the demo widths of params.yaml;
fp32, bf16 autocast, fp32 + channels_last and fp32 + torch.compile. Each case runs in
its own process so its peak RSS is its own.

Usage: python bench/training.py [--repeats N] [--sizes 256x128,512x256,1024x512]
       [--widths demo,paper] [--variants fp32,bf16,fp32+channels_last,fp32+compile]
bf16 autocast is emulated on CPUs without AVX512-BF16/AMX and then runs ~40x slower:
measure it at the small size first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import peak_rss_mb, run_case, write_results

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="256x128,512x256,1024x512")
    parser.add_argument("--widths", default="demo,paper")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("bench/results/training.json"))
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
