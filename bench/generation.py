"""Generation time and peak memory per image on CPU, batch 1, for the Cityscapes
configurations: global G (ngf 64) at 1024x512 and local G (ngf 32) at 2048x1024.

Each configuration runs in its own process so its peak RSS is its own.
Usage: python bench/generation.py [--repeats N] [--threads T] [--out bench/results/generation.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "global_ngf64_1024x512": dict(ngf=64, n_local_enhancers=0, size=(512, 1024)),
    "local_ngf32_2048x1024": dict(ngf=32, n_local_enhancers=1, size=(1024, 2048)),
}


def one(name: str, repeats: int, threads: int) -> dict:
    import torch

    from model.config import GeneratorConfig, ModelConfig
    from model.pix2pixhd import Pix2PixHD

    torch.set_num_threads(threads)
    spec = CONFIGS[name]
    cfg = ModelConfig(
        generator=GeneratorConfig(ngf=spec["ngf"], n_local_enhancers=spec["n_local_enhancers"])
    )
    model = Pix2PixHD(cfg, with_discriminator=False).eval()
    h, w = spec["size"]
    label = torch.randint(0, 35, (1, 1, h, w))
    inst = label.clone()
    rss_model_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.generate(label, inst)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.generate(label, inst)
        times.append(time.perf_counter() - t)
    return {
        "config": name,
        "seconds_per_image": min(times),
        "seconds_all": [round(t, 3) for t in times],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_build_mb": round(rss_model_mb, 1),
        "threads": threads,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/generation.json"))
    parser.add_argument("--one", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.repeats, args.threads)))
        return
    results = []
    for name in CONFIGS:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                "--repeats",
                str(args.repeats),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        print(
            f"{name:26s} {res['seconds_per_image']:7.2f} s/image   "
            f"peak RSS {res['peak_rss_mb']:8.1f} MB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"machine": platform.processor() or platform.machine(), "results": results}, indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
