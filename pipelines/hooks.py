"""What Kubeflow needs beyond a step's own outputs, per step: extra outputs (Metrics,
ClassificationMetrics, HTML), extra pipeline inputs, artifact metadata, and the two
steps whose work differs in a cluster (a dataset fetched instead of rendered; training
launched over GPUs or nodes). Everything else is the generic executor's."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Hook:
    """``outputs``/``inputs``: extra kfp outputs (name -> kfp type) and extra pipeline
    inputs (name -> Python type, with their description); ``run(values, call)``
    replaces the call of the step (``call()`` runs it as usual); ``after(values,
    result, out)`` adds metadata and fills the extra outputs."""

    outputs: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    run: Callable[[dict[str, Any], Callable[[], dict[str, Any]], Any], dict[str, Any]] | None = None
    after: Callable[[dict[str, Any], dict[str, Any], Path], None] | None = None


def _log_numbers(metrics: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    for k, v in values.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            metrics.log_metric(f"{prefix}{k}", float(v))


def _synth_run(
    values: dict[str, Any], call: Callable[[], dict[str, Any]], given: Any
) -> dict[str, Any]:
    import shutil

    from components import storage

    uri, out = values["dataset_uri"], Path(values["out"].path)
    values["out"].metadata["source"] = uri or "bundled synthetic street scenes"
    if uri.startswith("s3://"):
        storage.download(uri, out)
        return {"source": uri}
    if uri:
        shutil.copytree(uri, out)
        return {"source": uri}
    return call()


def _samples(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    values["out"].metadata["samples"] = int(result.get("samples", 0))


def _validate_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    """The sample count, and the Data Docs page of the validation result as the HTML
    artifact (one self-contained page: its styles are inline, it loads nothing)."""
    from components.validate import DOCS_DIR, validation_page

    _samples(values, result, out)
    page = validation_page(out / DOCS_DIR)
    html = page.read_text(encoding="utf-8") if page else "<html><body>no Data Docs</body></html>"
    Path(values["docs"].path).write_text(html, encoding="utf-8")


def _train_run(
    values: dict[str, Any], call: Callable[[], dict[str, Any]], given: Any
) -> dict[str, Any]:
    from pipelines.launcher import train_task

    return train_task(values, call, given)


def _train_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    path = out / "metrics.json"
    numbers = json.loads(path.read_text()) if path.is_file() else result
    _log_numbers(values["metrics"], numbers)
    losses = {
        k: v for k, v in (numbers.get("final_losses") or {}).items() if k not in ("step", "epoch")
    }
    _log_numbers(values["metrics"], losses, "final_")


def _segmenter_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    keys = ("val_real_pixel_accuracy", "val_real_mean_iou")
    _log_numbers(values["metrics"], {k: result[k] for k in keys if result.get(k) is not None})


def _evaluate_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    _log_numbers(values["metrics"], result["scores"])
    values["metrics"].log_metric("images", float(result["images"]))
    cm = json.loads((out / "confusion_matrix.json").read_text())
    values["confusion"].log_confusion_matrix(cm["categories"], cm["matrix"])
    png = base64.b64encode((out / "samples.png").read_bytes()).decode()
    Path(values["samples"].path).write_text(
        "<html><body><h3>label | generated | real | segmentation of generated</h3>"
        f'<img src="data:image/png;base64,{png}" style="max-width:100%"/></body></html>\n'
    )


def _export_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    meta = values["out"].metadata
    meta["max_abs_diff_vs_torch"] = float(result["max_abs_diff_vs_torch"])
    if "registered" in result:
        meta["registered_version"] = str(result["registered"]["version"])


def _promote_after(values: dict[str, Any], result: dict[str, Any], out: Path) -> None:
    values["out"].metadata["promoted"] = bool(result.get("promoted"))


HOOKS: dict[str, Hook] = {
    "data synth": Hook(
        inputs={
            "dataset_uri": (
                "str",
                "the dataset to use: an s3:// prefix or a path visible to the pods; empty: "
                "render the bundled synthetic street scenes",
            )
        },
        run=_synth_run,
    ),
    "validate": Hook(outputs={"docs": "HTML"}, after=_validate_after),
    "train": Hook(outputs={"metrics": "Metrics"}, run=_train_run, after=_train_after),
    "segmenter train": Hook(outputs={"metrics": "Metrics"}, after=_segmenter_after),
    "evaluate": Hook(
        outputs={"metrics": "Metrics", "confusion": "ClassificationMetrics", "samples": "HTML"},
        after=_evaluate_after,
    ),
    "export": Hook(after=_export_after),
    "promote": Hook(after=_promote_after),
}
