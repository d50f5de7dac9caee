"""validate through a Great Expectations Checkpoint: the Data Docs site works offline
(no CDN or other http(s) asset, every relative link resolves), a failing dataset's
report speaks the project's words, the outputs reproduce byte for byte, and they are
declared for DVC (outs, a few scores as metrics) and for Kubeflow (an HTML artifact)."""

import hashlib
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

from components import contract, steps, synth, validate

ROOT = Path(__file__).resolve().parents[2]

ASSET = re.compile(
    r"<(?:script|img|link|iframe|source|embed)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?\s*(https?:)?//"
    r"|url\(\s*[\"']?\s*(https?:)?//"
    r"|@import\s+[\"']?(https?:)?//",
    re.I,
)
LINK = re.compile(r"\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A small dataset and its validate report (with the Data Docs site)."""
    tmp = tmp_path_factory.mktemp("docs")
    synth.run(tmp / "data", num_train=4, num_val=2, width=64, height=32, seed=1)
    summary = validate.run(tmp / "data", tmp / "report")
    return tmp, summary


def _pages(docs: Path) -> list[Path]:
    return sorted(docs.rglob("*.html"))


def _relative_links(page: Path) -> list[str]:
    links = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path:  # external, or "#fragment"
            continue
        links.append(unquote(parts.path))
    return links


def test_data_docs_need_nothing_online_and_links_resolve(site):
    tmp, _ = site
    docs = tmp / "report" / validate.DOCS_DIR
    index = docs / "index.html"
    pages = _pages(docs)
    assert index in pages and len(pages) == 3  # index, the suite, the validation result
    for page in pages:
        text = page.read_text(encoding="utf-8")
        found = [m.group(0) for m in ASSET.finditer(text)]
        assert not found, f"{page.relative_to(docs)} loads assets online: {found[:3]}"
        assert "cdn" not in text.lower() and "unpkg" not in text.lower()
        assert "jquery" not in text.lower() and "$(" not in text  # nothing needs jQuery
        for link in _relative_links(page):
            assert (page.parent / link).resolve().is_file(), f"{page.name}: {link} is missing"
    links = _relative_links(index)
    result_page = validate.validation_page(docs)
    assert result_page is not None
    # the index links each page in plain HTML (GX fills its tables with jQuery)
    assert result_page.relative_to(docs).as_posix() in links
    assert "expectations/pix2pixhd_dataset.html" in links
    assert {"static/images/favicon.ico", "static/images/logo-long.png"} <= set(links)


def test_the_validation_page_shows_the_result(site):
    tmp, summary = site
    page = validate.validation_page(tmp / "report" / validate.DOCS_DIR)
    text = page.read_text(encoding="utf-8")
    assert "Expectation Validation Result" in text and "label_max" in text
    evaluated = re.search(r"Evaluated Expectations</div></td>\s*<td[^>]*><div[^>]*>(\d+)<", text)
    assert evaluated and int(evaluated.group(1)) == summary["expectations"]
    assert "<details" in text  # collapsed blocks open without JavaScript


def _break_label(root: Path) -> Path:
    p = sorted((root / "gtFine").rglob("*_labelIds.png"))[0]
    a = np.asarray(Image.open(p)).copy()
    a[0, 0] = 200
    Image.fromarray(a).save(p)
    return p


def test_a_failing_report_names_the_file_and_value_in_the_projects_words(site, tmp_path):
    tmp, _ = site
    root = tmp_path / "bad"
    shutil.copytree(tmp / "data", root)
    bad = _break_label(root)
    spec = contract.default_suite(35, True, 16)
    for e in spec["expectations"]:  # a table-level check with a row condition fails too
        if e["type"] == "expect_table_row_count_to_be_between" and "train" in str(e["kwargs"]):
            e["kwargs"]["min_value"] = 10
    suite = contract.write_suite(spec, tmp_path / "suite.json")
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(root, tmp_path / "r", suite=suite)
    report = (tmp_path / "r" / "report.txt").read_text().splitlines()
    assert report == [
        f"{bad}: label_max = 200, expected in [0, 34] (label ids outside [0, 34] (label_nc=35))",
        f"{root}: 4 samples where split==\"train\", expected >= 10 (too few 'train' samples)",
    ]
    message = str(err.value)
    for internal in ("pass_through", "filter", "batch_id", "unexpected_index", "{", "}"):
        assert internal not in message and all(internal not in line for line in report)
    assert (tmp_path / "r" / validate.DOCS_DIR / "index.html").is_file()
    result = json.loads((tmp_path / "r" / validate.RESULT_JSON).read_text())
    assert result["success"] is False
    assert not (tmp_path / "r" / "summary.json").exists()
    assert not (tmp_path / "r" / "metrics.json").exists()


def _md5s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_validate_outputs_reproduce_byte_for_byte(site, tmp_path):
    """Same data, same suite: every file (the result JSON, each Data Docs page, the
    summary, the scores, the manifest) has the same md5, for validate and drift."""
    tmp, _ = site
    first = _md5s(tmp / "report")
    validate.run(tmp / "data", tmp_path / "again")
    assert _md5s(tmp_path / "again") == first
    ref = tmp / "report" / "summary.json"
    args = dict(splits=("val",), reference=ref, drift_ratio=100.0, drift_min_delta=1.0)
    validate.run(tmp / "data", tmp_path / "d1", **args)
    validate.run(tmp / "data", tmp_path / "d2", **args)
    assert _md5s(tmp_path / "d1") == _md5s(tmp_path / "d2")
    result = json.loads((tmp / "report" / validate.RESULT_JSON).read_text())
    assert "ge_load_time" not in json.dumps(result) and "validation_id" not in result["meta"]


def test_metrics_hold_a_few_scores_and_the_profile_stays_in_the_summary(site, tmp_path):
    tmp, summary = site
    metrics = json.loads((tmp / "report" / "metrics.json").read_text())
    assert set(metrics) == {"samples", "classes", "instances", "expectations"}
    assert metrics["samples"] == 6 and all(isinstance(v, int | float) for v in metrics.values())
    saved = json.loads((tmp / "report" / "summary.json").read_text())
    assert saved["profile"]["class_frequencies"] == summary["profile"]["class_frequencies"]
    ref = tmp / "report" / "summary.json"
    out = tmp_path / "drift"
    validate.run(tmp / "data", out, splits=("val",), reference=ref, drift_ratio=100.0)
    drift = json.loads((out / "metrics.json").read_text())
    assert set(drift) == {"samples", "classes", "instances", "expectations", "max_frequency_shift"}
    assert 0.0 <= drift["max_frequency_shift"] <= 1.0


def test_result_and_site_are_dvc_outputs_of_validate_and_drift():
    stages = steps.dvc_yaml()["stages"]
    for name in ("validate", "drift"):
        outs = stages[name]["outs"]
        assert f"data/{name}/{validate.RESULT_JSON}" in outs
        assert f"data/{name}/{validate.DOCS_DIR}" in outs
        assert stages[name]["metrics"] == [{f"data/{name}/metrics.json": {"cache": False}}]


def test_kubeflow_gets_the_validation_page_as_an_html_artifact(site, tmp_path):
    from pipelines.hooks import HOOKS

    tmp, summary = site
    hook = HOOKS["validate"]
    assert hook.outputs["docs"] == "HTML"
    values = {
        "out": SimpleNamespace(path=str(tmp / "report"), metadata={}),
        "docs": SimpleNamespace(path=str(tmp_path / "docs.html"), metadata={}),
    }
    hook.after(values, summary, tmp / "report")
    html = (tmp_path / "docs.html").read_text(encoding="utf-8")
    assert "Expectation Validation Result" in html and not ASSET.search(html)
    assert values["out"].metadata["samples"] == 6


def test_compiled_validate_and_drift_tasks_output_the_data_docs_as_html(tmp_path):
    import yaml

    from pipelines.dag import ClusterSettings, compile_pipeline

    out = tmp_path / "pipeline.yaml"
    compile_pipeline(
        ROOT / "params.yaml",
        out,
        ClusterSettings(
            image="registry.example.com/pix2pixhd-cpu:0.1.0",
            gpu_image="registry.example.com/pix2pixhd-cuda:0.1.0",
        ),
    )
    spec = next(yaml.safe_load_all(out.read_text()))
    for component in ("comp-validate", "comp-drift"):
        artifacts = spec["components"][component]["outputDefinitions"]["artifacts"]
        assert artifacts["docs"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_relative_paths_as_dvc_gives_them(site, tmp_path, monkeypatch):
    tmp, _ = site
    shutil.copytree(tmp / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    validate.run(Path("data"), Path("out"))
    assert (tmp_path / "out" / validate.DOCS_DIR / "index.html").is_file()
    for page in _pages(tmp_path / "out" / validate.DOCS_DIR):  # GX was given an absolute
        assert str(tmp_path) not in page.read_text(encoding="utf-8")  # path: it stays out
