"""Generation time and peak memory per image on CPU, batch 1, for the Cityscapes
configurations: global G (ngf 64) at 1024x512 and local G (ngf 32) at 2048x1024.

Each configuration runs in its own process so its peak RSS is its own.
Usage: python bench/generation.py [--repeats N] [--threads T] [--out bench/results/generation.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import peak_rss_mb, run_case, write_results

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
    rss_model_mb = peak_rss_mb()
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
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_build_mb": rss_model_mb,
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
        res = run_case(
            __file__, [name, "--repeats", str(args.repeats), "--threads", str(args.threads)]
        )
        results.append(res)
        print(
            f"{name:26s} {res['seconds_per_image']:7.2f} s/image   "
            f"peak RSS {res['peak_rss_mb']:8.1f} MB"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
