"""The code map (reference/code-map.md), generated at build time from the first
paragraph of each module's docstring, so a new module appears without anyone editing
a list. Read with ``ast`` (nothing imported). Run by mkdocs-gen-files (mkdocs.yml);
``python docs/gen_code_map.py`` prints the page."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = "reference/code-map.md"
PACKAGES = {
    "model": "the ML library (PyTorch + numpy; no MLflow, DVC, kfp or command line)",
    "components": "one module per step (`run(...) -> summary dict`), tracking, storage, "
    "the step declarations",
    "components/serve": "the HTTP API and the web editor (no torch)",
    "pipelines": "Kubeflow wiring only: the DAG generated from `components/steps.py`",
    "pix2pixhd": "the command line, generated from `components/steps.py` (the top floor)",
    "bench": "benchmarks (not run by CI; see the Benchmarks pages)",
}


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    parts = first.replace("``", "`").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts)


def render() -> str:
    out = [
        "# Code map",
        "",
        "Layering: the command line on top, then the steps (`components/`) and the "
        "Kubeflow drivers (`pipelines/`), then `model/`; no cycles. `infra/` holds the "
        "Dockerfiles and Kubernetes manifests ([infra/README.md](../guides/infra.md)), "
        "`tests/` the unit, integration, pipeline, serving, container and docs tests, "
        "`data/` DVC-managed data only ([data/README.md](../guides/data-layout.md)).",
        "",
        "Generated from each module's docstring (its first paragraph) when the site is built.",
        "",
    ]
    for package, what in PACKAGES.items():
        out += [f"## `{package}/`", "", what[0].upper() + what[1:] + ".", ""]
        out += ["| module | what |", "|---|---|"]
        for path in sorted((ROOT / package).glob("*.py")):
            text = summary(path)
            if path.name == "__init__.py" and not text:
                continue
            out.append(f"| `{path.name}` | {text} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
elif __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path)
    import mkdocs_gen_files

    with mkdocs_gen_files.open(PAGE, "w") as f:
        f.write(render())
