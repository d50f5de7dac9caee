"""Step `validate`: measure every sample, check the measurements with a Great
Expectations suite (the data contract, see ``components.contract``), and optionally
compare the dataset with a training profile (drift).

The manifest holds one row per sample of measured values (``contract.MANIFEST_COLUMNS``); the
suite states what they must be. Validation runs through a Great Expectations Checkpoint
(one ValidationDefinition over the manifest) whose actions make the stored result
reproducible and build a Data Docs site (``data_docs/index.html``) that works offline.

On a broken contract: ``report.txt`` naming each file and measured value, the result
JSON (``great_expectations_result.json``), the Data Docs site and ``manifest.json``;
exit 2. On drift only (``--reference``): the same report, exit 3. On success:
``summary.json`` (counts, class histogram, training profile, dataset hash),
``metrics.json`` (a few scores), ``manifest.json``, the result JSON and the site. The
files are replaced as one set (a run that fails while writing leaves the previous set),
and the verdict of an earlier run (``summary.json`` or ``report.txt``) never stays
beside a new one. Nothing written depends on when or where it ran: the same data and
suite give byte-identical files (timings go to the log and the returned dict only).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components import contract
from components.signature import PositiveInt
from components.tracking import Orchestrator, Tracker, tracked_step
from model.config import LayoutOrAuto
from model.datasets import (
    LAYOUTS,
    SampleFiles,
    detect_layout,
    files_matching,
    find_samples,
    role_dirs,
)
from model.errors import InputError, Pix2PixHDError
from model.fileio import TMP_SUFFIX, StagedFiles, prepare_out_dir, write_json, write_text
from model.image_io import open_image, sample_stem
from model.palette import Palette, decode, describe_unknown, load_palette
from model.progress import progress

log = logging.getLogger(__name__)

_BITS = {"1": 1, "L": 8, "P": 8, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "RGB": 8}


class ValidationFailed(InputError):
    """Raised after the report is written: the dataset breaks the contract (exit 2)."""


class DriftDetected(Pix2PixHDError):
    """Raised after the report is written: the dataset drifted from the training profile
    (exit 3: a finding about the data, told apart from bad input (2) and a bug (1))."""

    exit_code = 3


def min_file_size(preprocess: str, crop_size: int) -> int:
    """The smallest side files need when the training crop is cut from them unresized."""
    return crop_size if preprocess == "crop" else 0


def _measure(s: SampleFiles, label_nc: int, palette: Palette | None = None) -> dict[str, Any]:
    """The measured columns of one sample (None where a file is missing or unreadable)."""
    row: dict[str, Any] = {
        "key": f"{s.split}/{s.stem}",
        "split": s.split,
        "stem": s.stem,
        "label_path": str(s.label) if s.label else None,
        "instance_path": str(s.instance) if s.instance else None,
        "image_path": str(s.image) if s.image else None,
        "read_error": None,
    }
    arrays: dict[str, np.ndarray] = {}
    sizes = []
    for role, path in (("label", s.label), ("instance", s.instance), ("image", s.image)):
        if path is None:
            continue
        try:
            data = path.read_bytes()
            with open_image(path) as img:  # header pixel limit checked before decoding
                mode, size = img.mode, img.size
                if role != "image":
                    arrays[role] = np.asarray(img)
                bands = len(img.getbands())
        except InputError as exc:
            row["read_error"] = str(exc)
            continue
        row[f"{role}_mode"] = mode
        row[f"{role}_width"], row[f"{role}_height"] = size
        row[f"{role}_bytes"] = len(data)
        row[f"{role}_sha1"] = hashlib.sha1(data).hexdigest()
        if role == "image":
            row["image_channels"] = bands
        if role == "instance":
            row["instance_bits"] = _BITS.get(mode, 0)
        sizes.append(size)
    row["sizes_agree"] = len(set(sizes)) <= 1 if sizes else None
    lab = arrays.get("label")
    if lab is not None and palette is not None and lab.ndim == 3 and label_nc > 0:
        lab, unknown = decode(lab, palette)  # the loader's decoding (data.palette)
        row["label_unknown_colours"] = describe_unknown(s.label, unknown) if unknown else None
    if lab is not None and label_nc > 0 and lab.ndim == 2:
        hist = np.bincount(lab.reshape(-1).astype(np.int64), minlength=label_nc)
        present = np.flatnonzero(hist)
        row["label_min"], row["label_max"] = int(present[0]), int(present[-1])
        row["label_classes"] = int(present.size)
        row["histogram"] = {int(k): float(hist[k] / lab.size) for k in present}
    inst = arrays.get("instance")
    if inst is not None and inst.ndim == 2:
        inst = inst.astype(np.int64)
        row["instance_min"], row["instance_max"] = int(inst.min()), int(inst.max())
        things = inst >= 1000
        row["instance_count"] = int(np.unique(inst[things]).size)
        if lab is not None and lab.shape == inst.shape:
            wrong = things & (inst // 1000 != lab.astype(np.int64))
            row["instance_label_mismatch"] = int(wrong.sum())
    return row


def _duplicates(
    data: Path, layout: str, split: str, roles: set[str], found: list[SampleFiles]
) -> list[SampleFiles]:
    """Files whose stem another file of the same role already has: one extra sample each
    (the other roles' files from the first), so the suite's key uniqueness sees them."""
    first = {s.stem: s for s in found}
    out = []
    for role, (directory, pattern) in role_dirs(data, layout, split).items():
        if role not in roles or not directory.is_dir():
            continue
        seen: set[str] = set()
        for p in files_matching(directory, pattern):
            stem = sample_stem(p)
            if stem in seen:
                base = first.get(stem, SampleFiles(split, stem, None, None, None))
                files = {r: getattr(base, r) for r in _ROLES} | {role: p}
                out.append(SampleFiles(split, stem, *(files[r] for r in _ROLES)))
            seen.add(stem)
    return out


_ROLES = ("label", "instance", "image")


def build_manifest(
    data: Path,
    layout: str,
    label_nc: int,
    use_instance_map: bool,
    splits: tuple[str, ...],
    palette: Palette | None = None,
) -> tuple[list[dict[str, Any]], str]:
    lay = detect_layout(data) if layout == "auto" else layout
    if lay not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: expected auto, {', '.join(LAYOUTS)}")
    needs = use_instance_map and lay != "rgb"
    samples: list[SampleFiles] = []
    for split in splits:
        found = find_samples(data, lay, split, needs, problems=[])
        samples += found
        roles = {"label", "image"} | ({"instance"} if needs else set())
        samples += _duplicates(data, lay, split, roles, found)
    if not samples:
        raise InputError(f"{data}: no samples found for splits {', '.join(splits)} (layout {lay})")
    rows = [
        _measure(s, label_nc, palette) for s in progress(samples, desc="validate", unit="sample")
    ]
    return rows, lay


def _frame(rows: list[dict[str, Any]], label_nc: int, extra: set[str]) -> Any:
    import pandas as pd

    flat = []
    for r in rows:
        d = {k: v for k, v in r.items() if k != "histogram" and not k.endswith("_sha1")}
        for k, f in r.get("histogram", {}).items():
            d[f"frac_{k}"] = f
        flat.append(d)
    df = pd.DataFrame(flat)
    wanted = {f"frac_{k}" for k in range(label_nc)} | {c for c in extra if c.startswith("frac_")}
    for c in sorted(wanted - set(df.columns)):
        df[c] = 0.0
    for c in [c for c in df.columns if c.startswith("frac_")]:  # a class absent is 0 %
        df[c] = df[c].fillna(0.0)
    for role in _ROLES:  # columns the suite may name even when no file of a role exists
        for c in ("path", "mode", "width", "height", "bytes"):
            if f"{role}_{c}" not in df.columns:
                df[f"{role}_{c}"] = None
    for c in (
        "instance_label_mismatch",
        "label_max",
        "read_error",
        "instance_bits",
        "label_unknown_colours",
    ):
        if c not in df.columns:
            df[c] = None
    return df


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """Great Expectations logs hundreds of INFO lines at import and run: keep them to
    warnings unless debug logging (``pix2pixhd -v``) is on."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    names = ["great_expectations"] + [
        n for n in logging.root.manager.loggerDict if n.startswith("great_expectations.")
    ]
    loggers = [logging.getLogger(n) for n in names]  # some set their own level at import
    old = [g.level for g in loggers]
    for g in loggers:
        g.setLevel(max(g.level, logging.WARNING))
    try:
        yield
    finally:
        for g, level in zip(loggers, old, strict=True):
            g.setLevel(level)


# ---------------------------------------------------------------------------
# Great Expectations: a Checkpoint (one ValidationDefinition) whose action builds the
# Data Docs site from a reproducible copy of the result

SITE = "pix2pixhd"  #: the Data Docs site's name in the context
DOCS_DIR = "data_docs"  #: the site's folder in the report directory (index.html)
RESULT_JSON = "great_expectations_result.json"
#: the run time every result and page carries: the same data and suite give byte-identical
#: outputs (DVC outputs reproduce); when a run happened is the business of git, DVC, MLflow
RUN_TIME = "1970-01-01T00:00:00+00:00"


@functools.cache
def _data_docs_action() -> type:
    """GX's ``UpdateDataDocsAction`` that first drops what changes from run to run (the
    batch's load time) from the stored result, so the same data gives byte-identical
    pages. Defined on first use (Great Expectations is imported lazily); GX registers
    it by its ``type``."""
    from great_expectations.checkpoint.actions import UpdateDataDocsAction

    class ReproducibleDataDocsAction(UpdateDataDocsAction):
        type: Literal["pix2pixhd_data_docs"] = "pix2pixhd_data_docs"

        def run(self, checkpoint_result: Any, action_context: Any = None) -> dict:
            store = self._resolve_context().context.validation_results_store
            for key, result in checkpoint_result.run_results.items():
                result.meta.get("batch_markers", {}).pop("ge_load_time", None)
                store.set(key, result)
            return super().run(checkpoint_result, action_context)

    return ReproducibleDataDocsAction


def _site_config(base: Path) -> dict[str, Any]:
    """A local-filesystem Data Docs site at ``base`` whose pages need nothing online
    (the views below); no profiling section."""
    view = {"module_name": __name__, "class_name": "OfflinePageView"}
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(Path(base).absolute()),  # GX wants an absolute path
        },
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": __name__, "class_name": "OfflineIndexView"},
        },
        "site_section_builders": {
            "expectations": {"view": view},
            "validations": {"view": view},
            "profiling": "None",
        },
    }


def _plain(result: Any) -> dict[str, Any]:
    """The result as JSON data without what differs between two runs on the same data
    (generated ids, the load time); numpy scalars become plain numbers."""
    doc = json.loads(json.dumps(result.to_json_dict(), default=str))
    meta = doc.get("meta", {})
    for key in ("validation_id", "checkpoint_id"):
        meta.pop(key, None)
    meta.get("batch_markers", {}).pop("ge_load_time", None)
    for r in doc.get("results", []):
        r.get("expectation_config", {}).pop("id", None)
    return doc


def run_suite(
    df: Any,
    suite: dict[str, Any],
    source: str,
    docs: Path | None = None,
    run_name: str = "validate",
) -> tuple[Any, dict[str, Any]]:
    """Validate the manifest frame with the suite through a Checkpoint; with ``docs``,
    its ``UpdateDataDocsAction`` builds the Data Docs site there. Returns (the result
    object, the result as JSON data, see :func:`_plain`)."""
    with _quiet_gx():
        import great_expectations as gx
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        for name in list(ctx.variables.data_docs_sites or {}):  # its default temp-dir site
            ctx.delete_data_docs_site(name)
        actions: list[Any] = []
        if docs is not None:
            ctx.add_data_docs_site(SITE, _site_config(docs))
            actions.append(_data_docs_action()(name="data_docs", site_names=[SITE]))
        batch = (
            ctx.data_sources.add_pandas("manifest")
            .add_dataframe_asset("samples")
            .add_batch_definition_whole_dataframe("all")
        )
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(
                name="manifest", data=batch, suite=ctx.suites.add(contract.gx_suite(suite, source))
            )
        )
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name="pix2pixhd_validate",
                validation_definitions=[definition],
                actions=actions,
                result_format="COMPLETE",
            )
        )
        run_id = RunIdentifier(run_name=run_name, run_time=RUN_TIME)
        outcome = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        (result,) = outcome.run_results.values()
        return result, _plain(result)


# ---------------------------------------------------------------------------
# Data Docs that work offline: GX's site builder with its pages drawn by the views below,
# which load a few templates of their own before the library's. They drop every CDN
# asset (Bootstrap, jQuery, Font Awesome, Vega) and the S3-hosted logo: the library's
# own styles, a small stylesheet for the layout classes the pages use, tables rendered
# as HTML (GX fills them with jQuery), <details> for collapsed blocks (GX's have random
# ids), and the links from each page to index.html and static/ at the right depth.

_DEPTH = """{% set up = "" %}{% if "ValidationResults" in renderer_type %}{% set up = "../" * \
(expectation_suite_name.count(".") + 4) %}{% elif "ExpectationSuite" in renderer_type %}\
{% set up = "../" * (expectation_suite_name.count(".") + 1) %}{% endif %}"""

_PAGE = (
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{{ page_title or "Data Docs" }}</title>
<style>{% include 'data_docs_default_styles.css' %}</style>
<style>{% include 'pix2pixhd_offline.css' %}</style>
"""
    + _DEPTH
    + """
<link rel="icon" href="{{ up }}static/images/favicon.ico" type="image/x-icon">
</head>
<body>
<nav class="navbar border-bottom">
  <a href="{{ up }}index.html"><img src="{{ up }}static/images/logo-long.png"
     alt="Great Expectations" style="height: 40px"></a>
  {% if page_title %}<ol class="breadcrumb"><li><a href="{{ up }}index.html">Home</a></li>
  <li>{{ page_title }}</li></ol>{% endif %}
</nav>
<div class="container-fluid"><div class="row">
{% include 'sidebar.j2' %}
<div class="col-md-10 main">
{% for section in sections %}{% set section_loop = loop -%}{% include 'section.j2' %}{% endfor %}
</div>
</div></div>
</body>
</html>
"""
)

_TABLE = """{% include 'content_block_header.j2' %}
{% set columns = content_block["table_columns"] %}
<table id="{{ content_block_id }}-body-table" class="table table-sm table-bordered">
<thead><tr>{% for c in columns %}<th>{{ c["title"] }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in content_block["table_data"] | render_bootstrap_table_data %}
<tr>{% for c in columns %}<td>{% set cell = row.get(c["field"], "") | string | safe %}
{% if loop.first and row.get("_table_row_link_path") %}<a href="{{ row["_table_row_link_path"] }}">\
{{ cell }}</a>{% else %}{{ cell }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</tbody>
</table>
"""

_COLLAPSE = """<details id="{{ content_block_id }}-parent" class="m-2">
<summary>{{ content_block.get("collapse_toggle_link", "Show more...") | render_content_block }}\
</summary>
{% set content_block_body_styling = "" %}{% include 'content_block_header.j2' %}
{% for block in content_block["collapse"] %}\
{% set item_id = content_block_id ~ "-collapse-item-" ~ loop.index %}\
{{ block | render_content_block(content_block_id=item_id) }}
{% endfor %}
</details>
"""

_ACTIONS = """{% if renderer_type == "ValidationResultsPageRenderer" %}
<div class="card mb-3"><div class="card-header"><strong>Actions</strong></div>
<div class="card-body"><label><input type="checkbox"
 onchange="document.body.classList.toggle('failed-only', this.checked)"> Failed only</label>
</div></div>
{% endif %}
"""

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #212529; font-size: 15px; line-height: 1.45; }
a { color: #0062cc; }
.navbar { display: flex; align-items: center; gap: 1rem; padding: .6rem 1.5rem;
  border-bottom: 1px solid #dee2e6; }
.breadcrumb { display: flex; gap: .5rem; list-style: none; margin: 0; padding: 0; }
.breadcrumb li + li::before { content: "/"; padding-right: .5rem; color: #6c757d; }
.container-fluid { padding: 1rem 1.5rem; }
.row { display: flex; flex-wrap: wrap; margin: 0 -.5rem; }
.row > * { box-sizing: border-box; padding: 0 .5rem; }
.col-12, .col-sm-12, .col-xs-12 { flex: 0 0 100%; max-width: 100%; }
.col-6 { flex: 0 0 50%; max-width: 50%; } .col-4 { flex: 0 0 33.3%; max-width: 33.3%; }
.col-3 { flex: 0 0 25%; max-width: 25%; }
.col-md-2, .col-lg-2 { flex: 0 0 16.6%; max-width: 16.6%; }
.col-md-10, .col-lg-10 { flex: 0 0 83.3%; max-width: 83.3%; }
@media (max-width: 768px) { .row > * { flex: 0 0 100% !important; max-width: 100% !important; } }
.card { border: 1px solid #dee2e6; border-radius: .3rem; margin-bottom: 1rem; overflow: auto; }
.card-header { background: #f7f7f9; padding: .4rem .75rem; border-bottom: 1px solid #dee2e6; }
.card-body { padding: .6rem .75rem; }
.table { width: 100%; border-collapse: collapse; margin-bottom: 1rem; }
.table th, .table td { border-top: 1px solid #dee2e6; padding: .4rem; text-align: left;
  vertical-align: top; }
.table-bordered th, .table-bordered td { border: 1px solid #dee2e6; }
.table-sm th, .table-sm td { padding: .25rem; }
.nav, .list-unstyled { list-style: none; padding-left: 0; }
.d-none { display: none; } .d-md-block { display: block; }
.text-danger { color: #dc3545; } .text-success { color: #28a745; }
.text-muted { color: #6c757d; } .lead { font-size: 1.1rem; }
.badge { display: inline-block; padding: .1rem .4rem; border-radius: .25rem;
  background: #e9ecef; font-size: 85%; }
.alert { padding: .5rem .75rem; border: 1px solid #dee2e6; border-radius: .25rem; }
.m-2 { margin: .5rem; } .mb-3 { margin-bottom: 1rem; } .mb-4 { margin-bottom: 1.5rem; }
.fas.fa-check-circle::before { content: "\\2714"; color: #28a745; }
.fas.fa-times::before { content: "\\2718"; color: #dc3545; }
.navbar-brand a, .navbar a { background: none; }
.navbar a img { visibility: visible; }
summary { cursor: pointer; color: #0062cc; }
body.failed-only .hide-succeeded-validation-target,
body.failed-only tr:has(.hide-succeeded-validation-target-child),
body.failed-only .ge-section:has(.hide-succeeded-validations-column-section-target-child) {
  display: none; }
"""

#: the templates the offline views load first (name -> Jinja source)
OFFLINE_TEMPLATES = {
    "page.j2": _PAGE,
    "index_page.j2": _PAGE,
    "bootstrap_table.j2": _TABLE,
    "collapse.j2": _COLLAPSE,
    "page_action_card.j2": _ACTIONS,
    "pix2pixhd_offline.css": _CSS,
    "js_script_imports.j2": "",
    "bootstrap_table_js_functions.j2": "",
    "cloud-footer.j2": "",
}


@functools.cache
def _offline_views() -> dict[str, type]:
    import re

    from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
    from jinja2 import ChoiceLoader, DictLoader

    def offline(self: Any) -> None:
        gx_loader = self.env.loader
        css = gx_loader.get_source(self.env, "data_docs_default_styles.css")[0]
        css = re.sub(r"url\(\s*['\"]?https?://[^)]*\)", "none", css)  # the S3 logo
        own = {**OFFLINE_TEMPLATES, "data_docs_default_styles.css": css}
        self.env.loader = ChoiceLoader([DictLoader(own), gx_loader])

    class OfflinePageView(DefaultJinjaPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            offline(self)

    class OfflineIndexView(DefaultJinjaIndexPageView):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            offline(self)

    return {"OfflinePageView": OfflinePageView, "OfflineIndexView": OfflineIndexView}


def __getattr__(name: str) -> Any:
    """The offline views, made on first use: the Data Docs site configuration names
    them as ``components.validate.OfflinePageView`` / ``OfflineIndexView``."""
    if name in ("OfflinePageView", "OfflineIndexView"):
        return _offline_views()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def validation_page(docs: Path) -> Path | None:
    """The validation result's page in a Data Docs site (one per run)."""
    pages = sorted((Path(docs) / "validations").rglob("*.html"))
    return pages[0] if pages else None


def _profile(rows: list[dict[str, Any]], split: str | None) -> dict[str, Any]:
    """Mean per-sample class frequencies and the sizes and modes of a split (all: None)."""
    sel = [r for r in rows if split is None or r["split"] == split]
    classes = sorted({k for r in sel for k in r.get("histogram", {})})
    shares = np.array([[r.get("histogram", {}).get(k, 0.0) for k in classes] for r in sel])
    values = {
        c: sorted({r[c] for r in sel if r.get(c) is not None}, key=str)
        for c in ("label_width", "label_height", "label_mode", "image_mode")
    }
    return {
        "split": split or "all",
        "samples": len(sel),
        "class_frequencies": {
            str(k): round(float(shares[:, i].mean()), 6) for i, k in enumerate(classes)
        },
        "class_std": {str(k): round(float(shares[:, i].std()), 6) for i, k in enumerate(classes)},
        "values": values,
    }


def _summary(
    rows: list[dict[str, Any]],
    data: Path,
    source: str,
    spec: dict[str, Any],
    reference: Path | None,
    ref: dict[str, Any] | None,
) -> dict[str, Any]:
    """``summary.json``: counts, class histogram, the training profile (what
    ``--reference`` compares new data with), the dataset hash; against a reference, the
    largest class frequency shift."""
    hist: dict[int, int] = {}
    for row in rows:
        for i in row.get("histogram", {}):
            hist[i] = hist.get(i, 0) + 1
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["key"]):
        digest.update(row["key"].encode())
        for role in _ROLES:
            digest.update(str(row.get(f"{role}_sha1", "")).encode())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    train = "train" if "train" in counts else None
    summary = {
        "data": str(data),
        "suite": source,
        "counts": counts,
        "samples": len(rows),
        "images_per_class": {str(k): v for k, v in sorted(hist.items())},
        "instances": sum(r.get("instance_count", 0) for r in rows),
        "profile": _profile(rows, train),
        "dataset_hash": digest.hexdigest(),
        "expectations": len(spec["expectations"]),
    }
    if ref is not None:
        summary["reference"] = str(reference)
        now = _profile(rows, None)["class_frequencies"]
        was = ref["profile"]["class_frequencies"]
        shift = max((abs(now.get(k, 0.0) - was.get(k, 0.0)) for k in {*now, *was}), default=0.0)
        summary["max_frequency_shift"] = round(float(shift), 6)
    return summary


def _scores(summary: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: a few scores for ``dvc exp show`` / ``dvc metrics diff`` (the
    profile, counts per split and class histogram stay in ``summary.json``)."""
    keys = ("samples", "instances", "expectations", "max_frequency_shift")
    return {"classes": len(summary["images_per_class"])} | {
        k: summary[k] for k in keys if k in summary
    }


def _replace_dir(new: Path | None, dst: Path) -> None:
    """Put the directory ``new`` at ``dst`` (None: remove ``dst``); the old one is moved
    aside first and removed after, so ``dst`` is never half of each."""
    old = dst.parent / f".{dst.name}.old.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
    if dst.exists():
        os.replace(dst, old)
    if new is not None:
        os.replace(new, dst)
    shutil.rmtree(old, ignore_errors=True)


def _write_set(
    staged: StagedFiles,
    result_json: dict[str, Any],
    docs: Path | None,
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    failures: list[str],
) -> None:
    """Replace the report set as one: the result JSON, the Data Docs site, the manifest
    and the verdict (on success ``summary.json`` and its scores in ``metrics.json``, on
    failure ``report.txt`` with the ``failures``); the other verdict of an earlier run is
    removed, so a stale one never stays beside the new set."""
    out = staged.out
    write_json(staged.path(RESULT_JSON), result_json, indent=2)
    if summary is not None:  # success: the summary and its scores
        write_json(staged.path("metrics.json"), _scores(summary))
        write_json(staged.path("summary.json"), summary, indent=2)
    else:
        write_text(staged.path("report.txt"), "\n".join(failures) + "\n")
    write_json(staged.path("manifest.json"), rows, indent=1)
    stale = ["report.txt"] if summary is not None else ["summary.json", "metrics.json"]
    for name in [*stale, "great_expectations_result.html"]:  # the last: an older layout's
        (out / name).unlink(missing_ok=True)
    _replace_dir(docs, out / DOCS_DIR)
    staged.commit()


def _track(tracker: Tracker, args: Any, summary: dict[str, Any] | None) -> None:
    """MLflow: the data read as input dataset (its hash as digest; for drift also the
    reference's training data) and the verdict file (summary.json or report.txt)."""
    out = Path(args["out"])
    for name in ("summary.json", "report.txt"):
        if (out / name).is_file():
            tracker.log_artifact(out / name)
    if summary is None:  # no hash without a verdict: the report says why
        return
    splits = ",".join(args["splits"])
    context = "drift" if args.get("reference") else "validation"
    tracker.log_input_dataset(str(args["data"]), splits, summary["dataset_hash"], context)
    tracker.set_tags({"dataset_hash": summary["dataset_hash"]})
    if args.get("reference"):
        ref = json.loads(Path(args["reference"]).read_text())
        if isinstance(ref, dict) and ref.get("data") and ref.get("dataset_hash"):
            digest = str(ref["dataset_hash"])
            tracker.log_input_dataset(str(ref["data"]), "reference", digest, "reference")


@tracked_step(lambda args: "drift" if args.get("reference") else "validate", after=_track)
def run(
    data: Path,
    out: Path,
    layout: LayoutOrAuto = "auto",
    label_nc: int = 35,
    use_instance_map: bool = True,
    size_multiple: PositiveInt = 16,
    splits: tuple[str, ...] = ("train", "val"),
    suite: Path | None = None,
    reference: Path | None = None,
    drift_ratio: float = 1.5,
    drift_min_delta: float = 0.01,
    drift_z: float = 3.0,
    min_size: int = 0,
    palette: str | None = None,
    write_suite: Path | None = None,
    html: bool = True,
    tracking: bool = True,
    tracking_uri: str | None = None,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Check a dataset with the Great Expectations suite (and drift from a training profile).

    Validate ``data``: a per-sample manifest (sizes, modes, label ids, instance ids, class
    frequencies) checked against the expectation suite. ``suite``: a suite file, else the
    one generated from the arguments; ``write_suite``: save that suite there first.

    Args:
        data: the dataset root.
        out: the report directory (``summary.json``, ``metrics.json``, ``manifest.json``,
            the result JSON, the Data Docs site; on failure ``report.txt`` instead of
            ``summary.json`` and ``metrics.json``).
        layout: the dataset layout (``auto``: detected).
        label_nc: label ids allowed (0: RGB labels).
        use_instance_map: instance maps are required.
        size_multiple: image sides must be multiples of this (the model's).
        splits: the splits to check.
        suite: a suite file (default: generated from these arguments).
        reference: a training profile (a summary.json) to compare with (drift).
        drift_ratio, drift_min_delta, drift_z: the drift thresholds.
        min_size: the smallest image side allowed (crop training).
        palette: colour label maps: the palette file.
        write_suite: write the generated suite here first.
        html: build the Data Docs site.
        tracking: log an MLflow run (nested in the pipeline execution's run).
        tracking_uri: MLflow URI (default: MLflow's own default).
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.
    """
    prepare_out_dir(out)  # writable, before any work
    timings: dict[str, float] = {}
    pal = load_palette(palette) if palette else None
    if suite is not None:  # a bad suite file fails before the files are read
        spec, source = contract.load_suite(suite), str(suite)
    t0 = time.perf_counter()
    rows, lay = build_manifest(data, layout, label_nc, use_instance_map, tuple(splits), pal)
    timings["read_files"] = time.perf_counter() - t0
    needs = use_instance_map and lay != "rgb"
    if suite is None:
        spec = contract.default_suite(
            label_nc, needs, size_multiple, splits, min_size, pal is not None
        )
        source = "default suite"
    if write_suite is not None:
        contract.write_suite(spec, write_suite)
    ref = None
    if reference is not None:
        try:
            ref = json.loads(Path(reference).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"--reference {reference}: cannot read ({exc})") from None
        spec = {
            **spec,
            "expectations": spec["expectations"]
            + contract.drift_expectations(
                ref, label_nc, drift_ratio, drift_min_delta, drift_z, len(rows)
            ),
        }
    columns = {e["kwargs"].get("column", "") for e in spec["expectations"]}
    df = _frame(rows, label_nc, columns)
    t1 = time.perf_counter()
    with _quiet_gx():
        import great_expectations  # noqa: F401  (timed apart: a fixed cost per process)
    timings["gx_import"] = time.perf_counter() - t1
    run_name = "-".join(splits) + ("-drift" if reference is not None else "")
    with StagedFiles(out) as staged:
        docs = staged.dir / DOCS_DIR if html else None
        t2, c2 = time.perf_counter(), time.process_time()
        _, result_json = run_suite(df, spec, source, docs, run_name)
        timings["gx_checkpoint"] = time.perf_counter() - t2
        timings["gx_checkpoint_cpu"] = time.process_time() - c2
        ok = bool(result_json.get("success"))
        lines = [] if ok else contract.failures(result_json, rows, str(data), spec)
        summary = _summary(rows, data, source, spec, reference, ref) if ok else None
        _write_set(staged, result_json, docs, rows, summary, lines)
    timings = {k: round(v, 3) for k, v in timings.items()}
    if summary is None:  # the first problems first: the CLI prints one capped line
        shown = "\n  ".join(lines[:20])
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        report = f"\n(report: {out / 'report.txt'})"
        if contract.is_drift(result_json):
            raise DriftDetected(
                f"{data}: drift from the training profile {reference}:\n  {shown}{more}{report}"
            )
        raise ValidationFailed(
            f"{data}: {len(lines)} problem(s) in {len(rows)} samples:\n  {shown}{more}{report}"
        )
    log.info(
        "validated %d samples against %d expectations: ok (hash %s); read %.2f s, "
        "Great Expectations import %.2f s, Checkpoint (validation, Data Docs) %.2f s",
        len(rows),
        len(spec["expectations"]),
        summary["dataset_hash"][:12],
        timings["read_files"],
        timings["gx_import"],
        timings["gx_checkpoint"],
    )
    return {**summary, "timings_s": timings}
