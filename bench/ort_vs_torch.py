"""ONNX Runtime vs PyTorch eager: generation time per image on CPU, batch 1.

Configurations: the demo generator of params.yaml (local, 256x128) and the Cityscapes
ones (global ngf 64 at 1024x512, local ngf 32 at 2048x1024), random weights (time does
not depend on them). Each configuration runs in its own process: both engines are
timed there, interleaved, with the same inputs and thread count, so the ratio comes
from one run. Both paths start from raw label ids (encoding included).

Usage: python bench/ort_vs_torch.py [--configs demo,global_1024,local_2048] [--repeats N]
                            [--threads T] [--out bench/results/ort_vs_torch.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import run_case, write_results

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "demo": dict(params=True, size=(128, 256)),
    "global_1024": dict(ngf=64, n_local_enhancers=0, size=(512, 1024)),
    "local_2048": dict(ngf=32, n_local_enhancers=1, size=(1024, 2048)),
}


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
    return Pix2PixHD(cfg, with_discriminator=False).eval()


def one(name: str, repeats: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from model.export import ExportableGenerator, example_inputs, export_onnx, input_names

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = _model(name)
    h, w = CONFIGS[name]["size"]
    inputs = example_inputs(model, n=1, h=h, w=w)
    wrapper = ExportableGenerator(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = export_onnx(model, Path(tmp) / "g.onnx")
        export_s = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in zip(input_names(model), inputs, strict=True)}

    def run_torch():
        with torch.inference_mode():
            return wrapper(*inputs)

    def run_ort():
        return session.run(None, feeds)[0]

    diff = float(np.abs(run_torch().numpy() - run_ort()).max())  # also the warm-up
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(repeats):
        for engine, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            t = time.perf_counter()
            fn()
            times[engine].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "config": name,
        "size": f"{w}x{h}",
        "torch_s": round(best["torch"], 4),
        "onnxruntime_s": round(best["onnxruntime"], 4),
        "speedup_ort_over_torch": round(best["torch"] / best["onnxruntime"], 3),
        "max_abs_diff": diff,
        "export_s": round(export_s, 1),
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ort_vs_torch.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.repeats, args.threads)))
        return
    results = []
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        options = ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        try:
            res = run_case(__file__, [name, *options], cwd=ROOT)
        except RuntimeError as exc:
            raise SystemExit(f"{name}: failed: {exc}") from None
        results.append(res)
        print(
            f"{name:12s} {res['size']:>10s}  torch {res['torch_s']:.3f} s  "
            f"onnxruntime {res['onnxruntime_s']:.3f} s  "
            f"ratio {res['speedup_ort_over_torch']:.2f}x  max|diff| {res['max_abs_diff']:.1e}"
        )
    write_results(args.out, results)


if __name__ == "__main__":
    main()
