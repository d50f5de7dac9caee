"""GPU benchmark: training and generation at the paper's sizes, run where a GPU is
(never in tests).

Cases, each in its own process (so peak memory is its own):
- train: one iteration of the paper's recipe (batch 1, VGG + feature matching, D ndf 64
  on 2 scales for the global generator ngf 64 at 1024x512; 3 scales for the local
  generator ngf 32 at 2048x1024) in fp32 (TF32 off), TF32, AMP fp16 (grad scaler),
  AMP fp16 + channels_last and AMP fp16 + torch.compile;
- ddp: the project's data-parallel path (NCCL, one process per GPU, the Trainer's flat
  all-reduce) in AMP fp16, when two or more GPUs are present;
- generate: PyTorch generation in fp32 and fp16 autocast;
- ort_cuda: the exported graph (fp32, and the fp16 copy) in ONNX Runtime's CUDA
  execution provider, when onnxruntime-gpu is installed.
Time: median of ``--repeats`` after ``--warmup`` steps, with CUDA synchronisation; memory:
torch.cuda.max_memory_allocated (ONNX Runtime: the device's used memory before/after).
Prints one table and writes JSON. The VGG19 weights are random (same shapes and time).

Usage: python bench/gpu.py [--sizes 1024x512,2048x1024] [--cases train,ddp,generate,ort_cuda]
           [--variants fp32,tf32,amp_fp16,amp_fp16+channels_last,amp_fp16+compile]
           [--repeats 5] [--warmup 3] [--out bench/results/gpu.json]
       python bench/gpu.py --dry-run        # list the cases; needs no GPU
       python bench/gpu.py --cpu-smoke      # every code path on the CPU at a tiny size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {  # WxH -> the paper's generator at that size
    "1024x512": dict(n_local_enhancers=0, ngf=64, num_D=2),
    "2048x1024": dict(n_local_enhancers=1, ngf=32, num_D=3),
    "64x32": dict(n_local_enhancers=1, ngf=4, num_D=2, tiny=True),  # --cpu-smoke
}
VARIANTS = {
    "fp32": dict(precision="fp32", tf32=False),
    "tf32": dict(precision="fp32", tf32=True),
    "amp_fp16": dict(precision="fp16", tf32=True),
    "amp_fp16+channels_last": dict(precision="fp16", tf32=True, channels_last=True),
    "amp_fp16+compile": dict(precision="fp16", tf32=True, compile=True),
}
CASES = ("train", "ddp", "generate", "ort_cuda")


def _config(size: str):
    from model.config import (
        DiscriminatorConfig,
        EncoderConfig,
        GeneratorConfig,
        LossConfig,
        ModelConfig,
    )

    spec = SIZES[size]
    tiny = spec.get("tiny", False)
    gen = GeneratorConfig(ngf=spec["ngf"], n_local_enhancers=spec["n_local_enhancers"])
    if tiny:
        gen = GeneratorConfig(
            ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
        )
    return ModelConfig(
        use_instance_features=False,
        generator=gen,
        discriminator=DiscriminatorConfig(num_D=spec["num_D"], ndf=8 if tiny else 64),
        encoder=EncoderConfig(nef=4, n_downsample_E=2) if tiny else EncoderConfig(),
        loss=LossConfig(use_vgg_loss=not tiny),
    )


def _wh(size: str) -> tuple[int, int]:
    w, h = (int(v) for v in size.split("x"))
    return w, h


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU smoke: RSS


def _set_tf32(on: bool) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def _model(size: str):
    import torch
    from torchvision.models import vgg

    from model.pix2pixhd import Pix2PixHD

    cfg = _config(size)
    state = None
    if cfg.loss.use_vgg_loss:
        feats = vgg.make_layers(vgg.cfgs["E"])
        state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    torch.manual_seed(0)
    return Pix2PixHD(cfg, vgg_state_dict=state)


def _batch(size: str, device):
    import torch

    w, h = _wh(size)
    label = torch.randint(0, _config(size).label_nc, (1, 1, h, w))
    inst = label * 1000
    image = torch.rand(1, 3, h, w) * 2 - 1
    return {"label": label.to(device), "instance": inst.to(device), "image": image.to(device)}


def _timed(fn, device, warmup: int, repeats: int) -> tuple[float, list[float], float]:
    t = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    _sync(device)
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, first


def run_train(size: str, variant: str, device_name: str, warmup: int, repeats: int) -> dict:
    import torch

    from model.training import TrainConfig, Trainer

    device = torch.device(device_name)
    var = VARIANTS[variant]
    _set_tf32(var["tf32"])
    tc = TrainConfig(
        precision=var["precision"],
        channels_last=var.get("channels_last", False),
        compile=var.get("compile", False),
        log_every=0,
        sample_every=0,
        checkpoint_every=0,
    )
    trainer = Trainer(_model(size), [None], tc, Path(tempfile.gettempdir()), device)
    batch = trainer._to_device(_batch(size, device))
    med, times, first = _timed(lambda: trainer.train_step(batch), device, warmup, repeats)
    return {"s": med, "all_s": times, "warmup_s": first, "peak_gb": _peak_gb(device)}


def _ddp_worker(rank: int, world: int, size: str, warmup: int, repeats: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from model.training import DistInfo, TrainConfig, Trainer

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    _set_tf32(True)
    tc = TrainConfig(precision="fp16", log_every=0, sample_every=0, checkpoint_every=0)
    trainer = Trainer(
        _model(size),
        [None],
        tc,
        Path(tempfile.gettempdir()),
        device,
        dist_info=DistInfo(rank, world),
    )
    batch = trainer._to_device(_batch(size, device))

    def step():
        trainer.train_step(batch)
        dist.barrier()

    med, times, first = _timed(step, device, warmup, repeats)
    if rank == 0:
        Path(out).write_text(
            json.dumps({"s": med, "all_s": times, "warmup_s": first, "peak_gb": _peak_gb(device)})
        )
    dist.destroy_process_group()


def run_ddp(size: str, warmup: int, repeats: int) -> dict:
    import torch
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    if world < 2:
        return {"skipped": f"{world} GPU: the NCCL path needs two or more"}
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.spawn(_ddp_worker, args=(world, size, warmup, repeats, out), nprocs=world)
        res = json.loads(Path(out).read_text())
    res["gpus"] = world
    res["images_per_s"] = world / res["s"]
    return res


def run_generate(size: str, variant: str, device_name: str, warmup: int, repeats: int) -> dict:
    import torch

    device = torch.device(device_name)
    _set_tf32(variant != "fp32")
    model = _model(size).eval().to(device)
    batch = _batch(size, device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def fn():
        with torch.autocast(device.type, dtype=dtype, enabled=variant == "amp_fp16"):
            return model.generate(batch["label"], batch["instance"])

    med, times, first = _timed(fn, device, warmup, repeats)
    return {"s": med, "all_s": times, "warmup_s": first, "peak_gb": _peak_gb(device)}


def _gpu_used_gb() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return float(out.stdout.strip().splitlines()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def run_ort_cuda(size: str, variant: str, device_name: str, warmup: int, repeats: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    from components.onnx_session import session_options
    from model.export import export_onnx
    from model.pix2pixhd import Pix2PixHD

    cuda = device_name.startswith("cuda")
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"}
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    model = Pix2PixHD(_config(size), with_discriminator=False).eval()
    w, h = _wh(size)
    rng = np.random.default_rng(0)
    label = rng.integers(0, model.cfg.label_nc, (1, 1, h, w), dtype=np.int64)
    feeds = {"label": label, "instance": label * 1000}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "g.onnx", fp16=variant == "amp_fp16")
        del model
        before = _gpu_used_gb() if cuda else None
        session = ort.InferenceSession(str(path), session_options(), providers=providers)

        class Dev:
            type = "cpu"  # session.run returns host arrays: already synchronised

        med, times, first = _timed(lambda: session.run(None, feeds), Dev, warmup, repeats)
        after = _gpu_used_gb() if cuda else None
    res = {"s": med, "all_s": times, "warmup_s": first, "provider": session.get_providers()[0]}
    if before is not None and after is not None:
        res["peak_gb"] = after - before  # device memory the session holds after the runs
    return res


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    cases = []
    for size in args.sizes.split(","):
        for case in args.cases.split(","):
            if case == "train":
                cases += [("train", size, v) for v in args.variants.split(",")]
            elif case == "ddp":
                cases.append(("ddp", size, "amp_fp16"))
            else:
                cases += [(case, size, v) for v in ("fp32", "amp_fp16")]
    return cases


def table(results: list[dict]) -> str:
    lines = [f"{'case':9s} {'size':10s} {'variant':24s} {'s/iter':>9s} {'peak GB':>8s}  note"]
    for r in results:
        s = f"{r['s']:9.4f}" if "s" in r else f"{'-':>9s}"
        gb = f"{r['peak_gb']:8.2f}" if r.get("peak_gb") is not None else f"{'-':>8s}"
        note = r.get("skipped") or r.get("error") or ""
        if "gpus" in r:
            note = f"{r['gpus']} GPUs, {r['images_per_s']:.2f} images/s"
        if "provider" in r:
            note = r["provider"]
        lines.append(f"{r['case']:9s} {r['size']:10s} {r['variant']:24s} {s} {gb}  {note}")
    return "\n".join(lines)


def one(case: str, size: str, variant: str, device: str, warmup: int, repeats: int) -> dict:
    if case == "train":
        return run_train(size, variant, device, warmup, repeats)
    if case == "ddp":
        return run_ddp(size, warmup, repeats)
    if case == "generate":
        return run_generate(size, variant, device, warmup, repeats)
    return run_ort_cuda(size, variant, device, warmup, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024x512,2048x1024")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gpu.json")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny size on the CPU")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        case, size, variant, device = args.one
        print(json.dumps(one(case, size, variant, device, args.warmup, args.repeats)))
        return 0
    if args.cpu_smoke:
        args.sizes, args.repeats, args.warmup = "64x32", 1, 1
    for size in args.sizes.split(","):
        if size not in SIZES:
            parser.error(f"--sizes: unknown {size!r}; choose from {', '.join(SIZES)}")
    for case in args.cases.split(","):
        if case not in CASES:
            parser.error(f"--cases: unknown {case!r}; choose from {', '.join(CASES)}")
    for v in args.variants.split(","):
        if v not in VARIANTS:
            parser.error(f"--variants: unknown {v!r}; choose from {', '.join(VARIANTS)}")
    cases = plan(args)
    if args.dry_run:
        for c in cases:
            print(" ".join(c))
        return 0
    import torch

    if args.cpu_smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print(
            "no CUDA device: nothing measured (--dry-run lists the cases, --cpu-smoke "
            "runs them on the CPU at a tiny size)",
            file=sys.stderr,
        )
        return 2
    results = []
    for case, size, variant in cases:
        row = {"case": case, "size": size, "variant": variant}
        if case == "ddp" and device == "cpu":
            row["skipped"] = "NCCL needs GPUs"
            results.append(row)
            continue
        cmd = [sys.executable, __file__, "--one", case, size, variant, device]
        cmd += ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT
            )
            if proc.returncode == 0:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            else:
                lines = proc.stderr.strip().splitlines() or ["failed"]
                row["error"] = lines[-1][:160]  # e.g. out of memory: recorded, not fatal
        except subprocess.TimeoutExpired:
            row["error"] = f"timed out after {args.timeout} s"
        results.append(row)
        print(table([row]).splitlines()[1], flush=True)
    meta = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "gpus": torch.cuda.device_count() if device == "cuda" else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    print()
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
