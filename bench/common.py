"""What the benchmark scripts share: each case runs in its own process (so its peak RSS
is its own) and prints one JSON line; results are written with the machine's name."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


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
