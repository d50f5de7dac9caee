"""Time of `validate` on a dataset, split into reading the files and Great Expectations'
part, for this version and (optionally) an older components/validate.py, interleaved in
one process so that both see the same machine load.

    git show 29cafb0:components/validate.py > /tmp/validate_old.py   # before issue 15
    python bench/validate_speed.py --data data/synth --old /tmp/validate_old.py

Wall and CPU (process) seconds are reported; on a shared machine the CPU figure is the
steadier one. The Great Expectations import is timed once (a fixed cost per process).
``--publish`` writes the table into the docs (``bench/common.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from common import Publication

NAME = "validate_speed"  # docs/data/NAME.{json,md}


def _timed(fn, *args, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the dataset (required to measure)")
    parser.add_argument("--old", type=Path, help="an older components/validate.py")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/validate_speed.json"))
    pub = Publication(NAME, table)
    pub.add_arguments(parser)
    args = parser.parse_args()
    if pub.render_instead(args, parser, required=("data",)):
        return
    logging.basicConfig(level=logging.WARNING)

    from components import contract, validate

    old = None
    if args.old:
        spec = importlib.util.spec_from_file_location("validate_old", args.old)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
    t = time.perf_counter()
    with validate._quiet_gx():
        import great_expectations  # noqa: F401
    gx_import = time.perf_counter() - t

    runs: dict[str, list[dict[str, float]]] = {"new": [], "old": []}
    for _ in range(args.repeats):
        (rows, _), read_w, read_c = _timed(
            validate.build_manifest, args.data, "auto", 35, True, ("train", "val")
        )
        suite = contract.default_suite(35, True, 32)
        df = validate._frame(rows, 35, set())
        (_, result), gx_w, gx_c = _timed(validate.run_suite, df, suite, "default")
        with tempfile.TemporaryDirectory() as site:  # the Checkpoint's Data Docs action
            _, docs_w, docs_c = _timed(validate.run_suite, df, suite, "default", Path(site))
        docs_w, docs_c = docs_w - gx_w, docs_c - gx_c  # the site's share
        runs["new"].append(
            dict(
                read=read_w,
                read_cpu=read_c,
                gx=gx_w,
                gx_cpu=gx_c,
                docs=docs_w,
                docs_cpu=docs_c,
                ok=result["success"],
            )
        )
        if old is not None:
            (rows_o, dupes), read_w, read_c = _timed(
                old.build_manifest, args.data, "auto", 35, True, 32, ("train", "val")
            )
            with validate._quiet_gx():
                (_, result_o), gx_w, gx_c = _timed(old._suite_result, rows_o, dupes)
            _, docs_w, docs_c = _timed(old._html, result_o, [])
            runs["old"].append(
                dict(
                    read=read_w,
                    read_cpu=read_c,
                    gx=gx_w,
                    gx_cpu=gx_c,
                    docs=docs_w,
                    docs_cpu=docs_c,
                    ok=result_o["success"],
                )
            )
    with tempfile.TemporaryDirectory() as tmp:  # the whole step once, for the samples count
        summary = validate.run(args.data, Path(tmp) / "r", size_multiple=32)
    out = {
        "data": str(args.data),
        "samples": summary["samples"],
        "gx_import_s": round(gx_import, 2),
        "median": {
            k: {m: round(statistics.median(r[m] for r in v), 3) for m in v[0] if m != "ok"}
            for k, v in runs.items()
            if v
        },
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("samples", "gx_import_s", "median")}, indent=2))
    pub.finish(args, out)


def table(out: dict) -> str:
    """Medians over the repeats: wall / CPU seconds of each part, and per sample."""
    n = out["samples"]
    names = {"new": "this version", "old": "the older validate.py (--old)"}
    rows = [
        f"{out['samples']} samples ({out['data']}), median of the repeats; Great "
        f"Expectations import (once per process): {out['gx_import_s']:.2f} s.",
        "",
        "| version | reading the files | Great Expectations validation | Data Docs site "
        "| all, CPU per sample |",
        "|---|---|---|---|---|",
    ]
    for key, m in out["median"].items():
        cpu = m["read_cpu"] + m["gx_cpu"] + m["docs_cpu"]
        rows.append(
            f"| {names[key]} | {m['read']:.2f} s / {m['read_cpu']:.2f} s "
            f"| {m['gx']:.2f} s / {m['gx_cpu']:.2f} s | {m['docs']:.2f} s / {m['docs_cpu']:.2f} s "
            f"| {cpu / n * 1000:.1f} ms |"
        )
    rows += ["", "Each cell: wall / CPU seconds."]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
