"""Doing less work, with the cost measured: fp32 / int8 / fp16 graphs in ONNX Runtime and
PyTorch fp32 / bf16 autocast, by speed and by quality on the evaluation set.

Quality: the val split of ``--data`` at the checkpoint's training size, instance features
drawn once from the cluster centres (seeded) and given to every variant, each generated
image segmented by the same frozen segmenter: generated pixel accuracy and mean IoU
(components.evaluate's convention), and the max / mean difference of the 8-bit images
to the fp32 ONNX Runtime ones. Speed: seconds per image at that size, variants
interleaved image by image (batch 1, ``--threads``), median over the val images; plus,
with ``--profile``, ONNX Runtime's per-op-type time for the fp32 and int8 graphs.

``--paper-size``: the same fp32 vs int8 speed comparison on the Cityscapes global
generator (ngf 64, 1024x512, random weights, int8 calibrated on 4 training maps of
``--data`` at 256x128), where the convolutions dominate.

Usage: python bench/quantize.py --checkpoint data/features/model.pth \\
           --segmenter data/segmenter/segmenter.pth --data data/synth \\
           [--onnx data/export/model.onnx] [--calibration-samples 16] [--threads 2] \\
           [--variants ort_fp32,ort_int8,ort_fp16,torch_fp32,torch_bf16] [--profile] \\
           [--paper-size] [--out bench/results/quantize.json] [--publish]

``--publish`` writes the tables into the docs (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import Publication  # noqa: E402

NAME = "quantize"  # docs/data/NAME.{json,md}
NAMES = {
    "ort_fp32": "ONNX Runtime fp32 (the default engine)",
    "ort_int8": "ONNX Runtime int8 (QDQ, per channel)",
    "ort_fp16": "ONNX Runtime fp16 graph",
    "torch_fp32": "PyTorch fp32",
    "torch_bf16": "PyTorch bf16 autocast",
}
VARIANTS = ("ort_fp32", "ort_int8", "ort_fp16", "torch_fp32", "torch_bf16")


def _profile(path: Path, feed: dict, threads: int, tmp: Path) -> dict[str, float]:
    """Milliseconds per op type in one ONNX Runtime run (after a warm-up)."""
    import onnxruntime as ort

    from components.onnx_session import session_options

    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / path.stem)
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    runs = [e for e in events if e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            op = e["args"].get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1000
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def paper_size(data: Path, threads: int, tmp: Path) -> dict:
    import numpy as np
    import torch

    from components.onnx_session import make_session
    from components.quantize import calibration_feeds, op_counts, quantize_int8
    from model.config import GeneratorConfig, ModelConfig
    from model.export import export_onnx
    from model.pix2pixhd import Pix2PixHD

    torch.manual_seed(0)
    cfg = ModelConfig(use_instance_features=False, generator=GeneratorConfig(ngf=64))
    model = Pix2PixHD(cfg, with_discriminator=False).eval()
    fp32 = export_onnx(model, tmp / "paper.onnx")
    del model
    feeds = calibration_feeds(fp32, data, (256, 128), samples=4)
    int8 = quantize_int8(fp32, tmp / "paper_int8.onnx", feeds)
    rng = np.random.default_rng(0)
    label = rng.integers(0, 34, (1, 1, 512, 1024), dtype=np.int64)
    feed = {"label": label, "instance": label * 1000}
    sessions = {"ort_fp32": make_session(fp32, threads=threads)}
    sessions["ort_int8"] = make_session(int8, threads=threads)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feed)  # warm-up
    for _ in range(2):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feed)
            times[k].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "config": "global ngf 64, 1024x512, random weights",
        "s": {k: round(v, 3) for k, v in best.items()},
        "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "int8_time_ratio": round(best["ort_int8"] / best["ort_fp32"], 3),
        "int8_ops": op_counts(int8),
        "profile_ms": {
            k: _profile(p, feed, threads, tmp) for k, p in (("ort_fp32", fp32), ("ort_int8", int8))
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--segmenter", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--onnx", type=Path, help="its fp32 graph (default: export it)")
    parser.add_argument("--calibration-samples", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--limit", type=int, default=0, help="first N val images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--paper-size", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/quantize.json")
    pub = Publication(NAME, table)
    pub.add_arguments(parser)
    args = parser.parse_args()
    if pub.render_instead(args, parser, required=("checkpoint", "segmenter", "data")):
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")

    import numpy as np
    import torch

    from components.export import parity
    from components.onnx_session import make_session
    from components.quantize import calibration_feeds, op_counts, quantize_int8
    from components.segmenter import load_segmenter
    from model.checkpoint import build_model, load_checkpoint
    from model.datasets import PairedDataset, detect_layout, find_samples
    from model.export import export_onnx
    from model.features import features_from_clusters
    from model.image_io import tensor_to_rgb
    from model.metrics import ConfusionMatrix, label_ids_to_train_ids, scores
    from model.pspnet import segment

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    model = build_model(ckpt).eval()
    cfg = model.cfg
    width, height = (int(x) for x in ckpt["image_size"])
    centres = {int(k): v for k, v in (ckpt.get("cluster_centers") or {}).items()}
    seg, seg_params = load_segmenter(args.segmenter)
    val = find_samples(args.data, detect_layout(args.data), "val", cfg.use_instance_map)
    ds = PairedDataset(val, cfg.label_nc, width, height)
    n = min(len(ds), args.limit) if args.limit else len(ds)
    rng = torch.Generator().manual_seed(args.seed)
    items = []
    for i in range(n):
        it = ds[i]
        feed = {"label": it["label"][None]}
        if cfg.use_instance_map:
            feed["instance"] = it["instance"][None]
        if cfg.use_instance_features:
            feed["features"] = features_from_clusters(
                it["instance"][None], centres, cfg.encoder.feat_num, rng
            )
        items.append(feed)

    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    result: dict = {"checkpoint": str(args.checkpoint), "size": f"{width}x{height}", "images": n}
    fp32_path = args.onnx
    if fp32_path is None:
        fp32_path = export_onnx(model, tmp / "model.onnx", cluster_centers=centres or None)
    result["fp32_parity_vs_torch"] = parity(model, fp32_path, ((1, height, width),))
    runners = {}
    sessions = {}
    if "ort_fp32" in variants or "ort_int8" in variants:
        sessions["ort_fp32"] = fp32_path
    if "ort_int8" in variants:
        t = time.perf_counter()
        feeds = calibration_feeds(
            fp32_path, args.data, (width, height), args.calibration_samples, seed=args.seed
        )
        sessions["ort_int8"] = quantize_int8(fp32_path, tmp / "model_int8.onnx", feeds)
        result["int8_quantize_s"] = round(time.perf_counter() - t, 1)
        result["int8_ops"] = op_counts(sessions["ort_int8"])
    if "ort_fp16" in variants:
        fp16 = Path(str(fp32_path).replace(".onnx", "_fp16.onnx"))
        if not fp16.is_file():
            fp16 = export_onnx(model, tmp / "model_fp16.onnx", fp16=True)
        sessions["ort_fp16"] = fp16
    for name, path in sessions.items():
        if name in variants or name == "ort_fp32":
            s = make_session(path, threads=args.threads)
            runners[name] = lambda f, s=s: torch.from_numpy(
                s.run(None, {k: v.numpy() for k, v in f.items()})[0]
            )

    def torch_runner(dtype):
        def fn(f):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                return model.generate(
                    f["label"], f.get("instance"), features=f.get("features")
                ).float()

        return fn

    if "torch_fp32" in variants:
        runners["torch_fp32"] = torch_runner("fp32")
    if "torch_bf16" in variants:
        runners["torch_bf16"] = torch_runner("bf16")
    order = [v for v in variants if v in runners]
    if "ort_fp32" not in order:
        order.insert(0, "ort_fp32")  # the reference for pixel differences
    for name in order:  # warm-up
        runners[name](items[0])
    times: dict[str, list[float]] = {k: [] for k in order}
    cms = {k: ConfusionMatrix() for k in order}
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in order}
    for i, feed in enumerate(items):
        rot = order[i % len(order) :] + order[: i % len(order)]  # interleaved, rotating
        outs = {}
        for name in rot:
            t = time.perf_counter()
            outs[name] = runners[name](feed)
            times[name].append(time.perf_counter() - t)
        ref = tensor_to_rgb(outs["ort_fp32"][0]).astype(np.int16)
        target = label_ids_to_train_ids(feed["label"][0, 0].numpy())
        for name, fake in outs.items():
            with torch.inference_mode():
                pred = segment(
                    seg, (fake + 1) * 127.5, crop=seg_params.crop or None, flip=seg_params.flip
                ).argmax(1)
            cms[name].update(pred[0].numpy(), target)
            diffs[name].append(np.abs(tensor_to_rgb(fake[0]).astype(np.int16) - ref))
    result["variants"] = {}
    base = statistics.median(times["ort_fp32"])
    for name in order:
        s = scores(cms[name])
        med = statistics.median(times[name])
        d = np.stack(diffs[name])
        result["variants"][name] = {
            "s_per_image": round(med, 4),
            "time_ratio_vs_ort_fp32": round(med / base, 3),
            "pixel_accuracy": round(s.pixel_accuracy, 4),
            "mean_iou": round(s.mean_iou, 4),
            "max_pixel_diff_vs_ort_fp32": int(d.max()),
            "mean_pixel_diff_vs_ort_fp32": round(float(d.mean()), 3),
        }
    if args.profile:
        feed = {k: v.numpy() for k, v in items[0].items()}
        result["profile_ms"] = {
            k: _profile(Path(sessions[k]), feed, args.threads, tmp)
            for k in ("ort_fp32", "ort_int8")
            if k in sessions
        }
    if args.paper_size:
        result["paper_size"] = paper_size(args.data, args.threads, tmp)
    print(
        f"{'variant':12s} {'s/image':>8s} {'ratio':>6s} {'pix acc':>8s} {'mIoU':>7s} "
        f"{'max diff':>8s} {'mean diff':>9s}   ({n} val images, {width}x{height})"
    )
    for name, v in result["variants"].items():
        print(
            f"{name:12s} {v['s_per_image']:8.4f} {v['time_ratio_vs_ort_fp32']:6.2f} "
            f"{v['pixel_accuracy']:8.4f} {v['mean_iou']:7.4f} "
            f"{v['max_pixel_diff_vs_ort_fp32']:8d} {v['mean_pixel_diff_vs_ort_fp32']:9.3f}"
        )
    if "paper_size" in result:
        p = result["paper_size"]
        print(f"paper size ({p['config']}): {p['s']}, int8/fp32 = {p['int8_time_ratio']}")
    for k, prof in result.get("profile_ms", {}).items():
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(prof.items())[:8])
        print(f"profile {k} (ms per op type, one run): {top}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": sys.argv[1:], **result}, indent=2) + "\n")
    tmp_dir.cleanup()
    pub.finish(args, result)


def _top_ops(profile: dict[str, float], k: int = 4) -> str:
    total = sum(profile.values()) or 1.0
    return ", ".join(f"{op} {ms:.1f} ms ({ms / total:.0%})" for op, ms in list(profile.items())[:k])


def table(result: dict) -> str:
    out = [
        f"The demo model ({result['checkpoint']}), {result['images']} val images at "
        f"{result['size']}, variants interleaved image by image, median time:",
        "",
        "| variant | s / image | vs ORT fp32 | pixel accuracy | mean IoU "
        "| max / mean 8-bit diff to ORT fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        out.append(
            f"| {NAMES.get(name, name)} | {v['s_per_image']:.4f} | "
            f"{v['time_ratio_vs_ort_fp32']:.2f}x | {v['pixel_accuracy']:.4f} | "
            f"{v['mean_iou']:.4f} | {v['max_pixel_diff_vs_ort_fp32']} / "
            f"{v['mean_pixel_diff_vs_ort_fp32']:.3f} |"
        )
    profiles = result.get("profile_ms", {})
    paper = result.get("paper_size")
    if profiles or paper:
        out += ["", "| graph | time per op type, one run (ONNX Runtime's profile) |", "|---|---|"]
        for k, prof in profiles.items():
            out.append(f"| demo, {NAMES.get(k, k)} | {_top_ops(prof)} |")
        if paper:
            for k, prof in paper.get("profile_ms", {}).items():
                out.append(f"| paper size, {NAMES.get(k, k)} | {_top_ops(prof)} |")
    if paper:
        s = paper["s"]
        out += [
            "",
            f"The paper's global generator ({paper['config']}): fp32 {s['ort_fp32']:.2f} s, "
            f"int8 {s['ort_int8']:.2f} s per image (best of 2): int8 / fp32 = "
            f"{paper['int8_time_ratio']:.2f}.",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
