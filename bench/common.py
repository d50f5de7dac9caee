"""What the benchmark scripts share: each case runs in its own process (so its peak RSS
is its own) and prints one JSON line; results are written with the machine's name; and
``--publish`` writes a script's figures into the docs site, with where, when and how they
were measured:

- ``docs/data/NAME.json``: the provenance and the results;
- ``docs/data/NAME.md``: the script's Markdown table(s) and a line giving the date, the
  commit, the machine, the load average before the run and the command (the benchmark
  page includes this file: ``--8<-- "docs/data/NAME.md"``);
- ``docs/plots/NAME.png``: its plot, where it draws one.

``--render`` writes the same files again from a published JSON (after a change to how a
table or plot is drawn) without measuring anything. A script wires both through one
``Publication``. Every file is written through a temporary file and a rename
(``model.fileio``): a killed run leaves the previous figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS_DATA, DOCS_PLOTS = ROOT / "docs" / "data", ROOT / "docs" / "plots"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_case(script: str, args: list[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run ``python script --one ARGS`` in a fresh process; the JSON object on the last
    line of its stdout. A failure raises RuntimeError with the last line of its stderr."""
    cmd = [sys.executable, script, "--one", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        raise RuntimeError(lines[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(path: Path, results: Any, machine: bool = True) -> None:
    """``results`` as JSON at ``path`` (with ``machine``: wrapped as
    ``{"machine": ..., "results": ...}``)."""
    doc = {"machine": platform.processor() or platform.machine(), "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc if machine else results, indent=2) + "\n")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """Where, when and how this run measures: call it before measuring (the load average
    is the one before the run). ``commit`` ends in ``+changes`` when tracked files differ
    from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = script.name
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "commit": commit,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join(["python", script_name, *sys.argv[1:]]),
        "versions": {
            p: v for p in ("torch", "onnxruntime", "numpy") if (v := _version(p)) is not None
        },
    }


def caption(prov: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    load = prov["load_average_before"]
    return (
        f"*Measured on {prov['date']} at {prov['commit']} on {prov['cpu']} "
        f"({prov['cores']} cores), load average {load[0]} / {load[1]} / {load[2]} "
        f"(1 / 5 / 15 min) before the run; {versions}. Command: `{prov['command']}`.*"
    )


Table = Callable[[Any], str]
Figure = Callable[[Any, Path], None]


def publish(
    name: str, prov: dict[str, Any], results: Any, table: Table, figure: Figure | None = None
) -> list[Path]:
    """Write ``docs/data/NAME.json``, ``docs/data/NAME.md`` (``table(results)`` and the
    caption) and, with ``figure``, ``docs/plots/NAME.png`` (``figure(results, path)``);
    the paths written."""
    from model.fileio import atomic_path, write_json, write_text

    data, md = DOCS_DATA / f"{name}.json", DOCS_DATA / f"{name}.md"
    write_json(data, {"provenance": prov, "results": results})
    write_text(md, f"{table(results).rstrip()}\n\n{caption(prov)}\n")
    written = [data, md]
    if figure is not None:
        with atomic_path(DOCS_PLOTS / f"{name}.png") as tmp:
            figure(results, tmp)
        written.append(DOCS_PLOTS / f"{name}.png")
    return written


def render(name: str, path: Path, table: Table, figure: Figure | None = None) -> list[Path]:
    """``publish`` again from the published JSON at ``path``, nothing measured."""
    doc = json.loads(Path(path).read_text())
    return publish(name, doc["provenance"], doc["results"], table, figure)


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as the docs' PNGs are saved (no software tag: reproducible)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Publication:
    """A script's figures in the docs (``publish``), wired into its command line:

    1. ``add_arguments(parser)``: ``--publish`` and ``--render JSON``;
    2. ``render_instead(args, parser, required)``: with ``--render``, writes the files
       again from that JSON and returns True (the script stops there); otherwise checks
       the options measuring needs and takes the provenance, so call it before measuring;
    3. ``finish(args, results)``: with ``--publish``, writes them; the paths written."""

    name: str  # docs/data/NAME.{json,md}, docs/plots/NAME.png: the script's stem
    table: Table
    figure: Figure | None = None
    prov: dict[str, Any] | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        plot = f" and docs/plots/{self.name}.png" if self.figure else ""
        parser.add_argument(
            "--publish",
            action="store_true",
            help=f"also write docs/data/{self.name}.json and .md (tables){plot}",
        )
        parser.add_argument(
            "--render",
            type=Path,
            metavar="JSON",
            help="instead of measuring: write the tables and plot again from a published JSON",
        )

    def render_instead(
        self,
        args: argparse.Namespace,
        parser: argparse.ArgumentParser | None = None,
        required: tuple[str, ...] = (),
    ) -> bool:
        """``required``: options that measuring needs and rendering does not (declare
        them without ``required=True``): a missing one is the parser's usage error."""
        if args.render:
            _report(render(self.name, args.render, self.table, self.figure))
            return True
        missing = [f"--{o.replace('_', '-')}" for o in required if getattr(args, o) is None]
        if missing and parser is not None:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
        self.prov = provenance()
        return False

    def finish(self, args: argparse.Namespace, results: Any) -> list[Path]:
        if not args.publish:
            return []
        if self.prov is None:
            raise RuntimeError("Publication.render_instead was not called before measuring")
        return _report(publish(self.name, self.prov, results, self.table, self.figure))


def _report(paths: list[Path]) -> list[Path]:
    sys.stdout.write("".join(f"{p}\n" for p in paths))
    return paths
