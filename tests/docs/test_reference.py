"""The generated reference pages render from the current code (without the docs extra:
the generators' render() functions are plain Python). `make docs` builds the site itself;
this catches a generator broken by a code change already in `make test`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def generator(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # without mkdocs_gen_files' context: writes nothing
    return module


def test_cli_reference_has_every_step():
    from components.steps import STEPS

    page = generator("gen_cli").render()
    for step in STEPS:
        assert f"pix2pixhd {step.name}\n" in page, step.name
    assert "--print-completion" in page


def test_http_reference_has_every_route():
    module = generator("gen_http_api")
    document = module.openapi()
    page = module.render(document)
    for path, operations in document["paths"].items():
        for method in operations:
            assert f"### {method.upper()} `{path}`" in page, (method, path)
    assert "### ErrorBody" in page and "| 503 |" in page


def test_code_map_lists_every_module():
    page = generator("gen_code_map").render()
    for package in ("model", "components", "components/serve", "pipelines", "bench"):
        for path in (ROOT / package).glob("*.py"):
            if path.name != "__init__.py":
                assert f"| `{path.name}` |" in page, path
