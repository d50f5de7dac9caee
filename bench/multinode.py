"""Training throughput on 1 and 2 nodes at the same global batch, the nodes being
containers of the CPU image on this machine (``pipelines.local_nodes``, the TrainJob the
launcher renders: torchrun, c10d rendezvous, gloo).

Both runs train the demo's global stage (params.yaml) on ``--samples`` synthetic scenes
for one epoch at a global batch of ``--batch``: one node with the whole batch, two nodes
with half each. Reported from each run's own summary (rank 0): images per second over
the training loop, and for two nodes the share of it spent in the gradients' all-reduce
(the wait for the slower rank included). The nodes share this machine's cores (each gets
``cores / nodes`` torch threads): on one machine two nodes cannot be faster than one;
what the run shows is the communication's cost. ``bench/gpu.py`` projects the cluster.

Usage: python bench/multinode.py [--image pix2pixhd-cpu:local] [--samples 32] [--batch 4]
           [--out docs/data/multinode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def train_on(nodes: int, root: Path, image: str, batch: int) -> dict[str, Any]:
    from components import steps
    from components.params import load_params
    from pipelines import launcher, local_nodes, trainjob
    from pipelines.containers import container_user
    from pipelines.settings import local_distributed

    out = root / f"nodes{nodes}"
    sets = [
        f"train_global.batch_size={batch // nodes}",
        "train_global.niter=1",
        "train_global.niter_decay=0",
        "train_global.checkpoint_every=0",
        "train_global.sample_every=0",
        "train_global.log_every=0",
    ]
    task = next(t for t in steps.TASKS if t.name == "train_global")
    given = {"stage": "global", "data": str(root / "data"), "out": str(out), "tracking": False}
    args = launcher.train_argv(task, load_params(ROOT / "params.yaml", sets), given)
    dist = json.loads(local_distributed(nodes, image, str(root), 0))
    manifest = trainjob.render(launcher.job_spec("global", args, dist), "trainjob")
    local_nodes.run(manifest, [root], container_user(root), backoff_limit=0, timeout_s=3600)
    summary = json.loads((out / "summary.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    images = summary["iterations"] * batch
    row = {
        "nodes": nodes,
        "batch_per_node": batch // nodes,
        "iterations": summary["iterations"],
        "seconds": timings["seconds"],
        "images_per_s": round(images / timings["seconds"], 3),
    }
    if "allreduce_share" in timings:
        row["allreduce_seconds"] = timings["allreduce_seconds"]
        row["allreduce_share"] = timings["allreduce_share"]
    return row


def table(result: dict[str, Any]) -> str:
    """The page's Markdown table of a result."""
    one = result["runs"][0]["images_per_s"]
    out = [
        "| nodes | batch per node | iterations | training loop | images/s | all-reduce share |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        speed = f"{r['images_per_s']:.1f}" + (
            f" ({r['images_per_s'] / one:.2f}x)" if r["nodes"] > 1 else ""
        )
        share = (
            f"{r['allreduce_share'] * 100:.0f}% ({r['allreduce_seconds']:.2f} s)"
            if "allreduce_share" in r
            else "-"
        )
        out.append(
            f"| {r['nodes']} | {r['batch_per_node']} | {r['iterations']} | "
            f"{r['seconds']:.2f} s | {speed} | {share} |"
        )
    out.append(f"\nLoad average before the run: {result['load_average_before']}.")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default="pix2pixhd-cpu:local")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch", type=int, default=4, help="the global batch (even; the demo's 4)")
    p.add_argument("--out", type=Path)
    p.add_argument("--table", type=Path, help="print the Markdown table of a result file")
    args = p.parse_args()
    if args.table:
        sys.stdout.write(table(json.loads(args.table.read_text())))
        return
    from components import synth
    from components.params import load_params
    from pipelines.containers import container_user

    data = load_params(ROOT / "params.yaml").data
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shared"
        container_user(root)
        synth.run(
            root / "data",
            num_train=args.samples,
            num_val=2,
            width=data.width,
            height=data.height,
            seed=0,
        )
        rows = [train_on(n, root, args.image, args.batch) for n in (1, 2)]
    result = {
        "samples": args.samples,
        "global_batch": args.batch,
        "size": f"{data.width}x{data.height} (global stage at half)",
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": round(before, 2),
        "runs": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
