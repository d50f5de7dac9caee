"""The benchmark figures in the docs are what their scripts write (bench/common.py
``--publish``), never edited by hand: each published table is re-rendered here from its
JSON by its script's own ``table`` function and compared; its plot exists; the command
it was measured with still parses; and each benchmark page includes it."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from tests.docs.test_commands import parse_bench

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "docs" / "data"
PUBLISHED = sorted(p for p in DATA.glob("*.json") if "provenance" in json.loads(p.read_text()))


def script_module(name: str):
    """bench/NAME.py imported as the script sees itself (bench/ on sys.path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            f"bench_{name}", ROOT / "bench" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import does (dataclasses look it up)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_some_figures_are_published():
    assert len(PUBLISHED) >= 4, PUBLISHED


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_table_is_the_scripts_rendering(path):
    doc = json.loads(path.read_text())
    module = script_module(path.stem)
    assert module.NAME == path.stem
    common = script_module("common")
    expected = f"{module.table(doc['results']).rstrip()}\n\n{common.caption(doc['provenance'])}\n"
    assert (DATA / f"{path.stem}.md").read_text() == expected
    if hasattr(module, "figure"):
        assert (ROOT / "docs" / "plots" / f"{path.stem}.png").stat().st_size > 1000


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_page_includes_it(path):
    include = f'--8<-- "docs/data/{path.stem}.md"'
    pages = [p for p in (ROOT / "docs" / "benchmarks").glob("*.md") if include in p.read_text()]
    assert len(pages) == 1, f"{include}: in {pages}"


def test_measured_commands_still_parse():
    commands = []
    for path in PUBLISHED:
        argv = shlex.split(json.loads(path.read_text())["provenance"]["command"])
        assert argv[0] == "python" and argv[1] == f"bench/{path.stem}.py", argv
        commands.append((argv[1], argv[2:]))
    errors = [e for e in parse_bench(commands) if e]
    assert not errors, errors


def test_caption_says_where_when_and_how(tmp_path, monkeypatch):
    common = script_module("common")
    monkeypatch.setattr(common, "DOCS_DATA", tmp_path / "data")
    monkeypatch.setattr(common, "DOCS_PLOTS", tmp_path / "plots")
    prov = {
        "date": "2026-12-05",
        "commit": "abc1234",
        "cpu": "Some CPU",
        "cores": 2,
        "load_average_before": [0.5, 0.75, 1.0],
        "command": "python bench/x.py --fast",
        "versions": {"torch": "2.14.1"},
    }

    def figure(results, path):
        path.write_bytes(b"png")

    written = common.publish("x", prov, [1, 2], lambda r: f"| n |\n|---|\n| {len(r)} |", figure)
    assert [p.name for p in written] == ["x.json", "x.md", "x.png"]
    md = (tmp_path / "data" / "x.md").read_text()
    assert md.startswith("| n |\n|---|\n| 2 |\n\n*Measured on 2026-12-05 at abc1234 on Some CPU")
    assert "load average 0.5 / 0.75 / 1.0" in md and "`python bench/x.py --fast`" in md
    again = common.render("x", tmp_path / "data" / "x.json", lambda r: "other", None)
    assert (tmp_path / "data" / "x.md").read_text().startswith("other\n\n*Measured")
    assert len(again) == 2


def test_publication_renders_without_the_options_measuring_needs(tmp_path, monkeypatch, capsys):
    import argparse

    common = script_module("common")
    monkeypatch.setattr(common, "DOCS_DATA", tmp_path / "data")
    monkeypatch.setattr(common, "DOCS_PLOTS", tmp_path / "plots")
    pub = common.Publication("x", lambda r: f"| {r} |")
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    pub.add_arguments(parser)
    with pytest.raises(SystemExit) as exc:  # measuring needs --data
        pub.render_instead(parser.parse_args([]), parser, required=("data",))
    assert exc.value.code == 2 and "--data" in capsys.readouterr().err
    args = parser.parse_args(["--data", "d", "--publish"])
    assert not pub.render_instead(args, parser, required=("data",))
    (written_json, _) = pub.finish(args, 7)
    assert json.loads(written_json.read_text())["results"] == 7
    again = parser.parse_args(["--render", str(written_json)])  # no --data needed
    assert pub.render_instead(again, parser, required=("data",))
    assert (tmp_path / "data" / "x.md").read_text().startswith("| 7 |\n\n*Measured on")


def test_serving_tables_are_the_scripts_rendering():
    """bench/serve_load.py measures each size in its own run (docs/data/serve_demo.json,
    serve_1024.json) and writes the page's tables from both with ``--tables``."""
    module = script_module("serve_load")
    runs = [DATA / "serve_demo.json", DATA / "serve_1024.json"]
    assert (DATA / "serve_load.md").read_text() == module.tables(runs)
    assert (ROOT / "docs" / "plots" / "serve_load.png").stat().st_size > 1000
    include = '--8<-- "docs/data/serve_load.md"'
    pages = [p for p in (ROOT / "docs" / "benchmarks").glob("*.md") if include in p.read_text()]
    assert len(pages) == 1, pages


def test_the_engine_reference_has_no_more_streams_than_clients():
    module = script_module("serve_load")
    doc = {
        "engine": [
            {"streams": 1, "batch": 1, "images_per_s": 20.0},
            {"streams": 2, "batch": 1, "images_per_s": 30.0},
            {"streams": 1, "batch": 2, "images_per_s": 40.0},  # a batch: never the reference
        ]
    }
    assert [module.engine_at(doc, c) for c in (1, 2, 8)] == [20.0, 30.0, 30.0]
