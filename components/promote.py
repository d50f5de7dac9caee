"""Step `promote`: gate a registered generator version and move the `champion` alias
(the gate itself is ``components.registry.promote``). Its MLflow run records the
decision: the version gated as the run's model input, the scores compared as metrics,
the verdict as tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components import registry
from components.signature import PositiveInt
from components.tracking import Orchestrator, Tracker, tracked_step
from model.config import check_number
from model.errors import InputError
from model.fileio import prepare_out_file, write_json, write_metrics


def _track(tracker: Tracker, args: Any, result: dict[str, Any] | None) -> None:
    """MLflow: the version gated (tags, and its logged model as the run's input)."""
    if result is None:
        return
    name, version = result["name"], str(result["version"])
    tracker.set_tags(
        {
            "registered_version": f"{name}/{version}",
            "promoted": str(bool(result["promoted"])).lower(),
            "reason": str(result["reason"])[:5000],
            "champion": f"{name}/{result['champion']}" if result.get("champion") else "",
        }
    )
    model_id = registry.version_model_id(name, version, args.get("tracking_uri"))
    if model_id:
        tracker.log_model_input(model_id)


@tracked_step("promote", after=_track)
def run(
    name: str,
    version: str | None = None,
    registration: Path | None = None,
    metric: str = "mean_iou",
    min_delta: float = 0.0,
    confidence: float = 0.95,
    bootstrap: PositiveInt = 1000,
    seed_margin: float = 0.0,
    out: Path | None = None,
    tracking_uri: str | None = None,
    tracking: bool = True,
    orchestrator: Orchestrator | None = None,
    experiment: str = "pix2pixhd",
) -> dict[str, Any]:
    """Move the 'champion' alias to a version if it beats the champion beyond the gate.

    The gate: the candidate and the champion are compared on the same val images (each
    version's per-image scores, logged by its evaluate run): the alias moves only when
    the paired bootstrap interval of the difference lies above ``min_delta`` plus the
    measured spread between training seeds (``seed_margin``): the interval covers the
    images' sampling, the margin the training noise, so a model retrained with another
    seed does not win by luck. Versions scored on other images
    must have intervals that do not overlap; the first model is promoted; a non-finite
    score never is. The decision states the difference, its interval and why.

    Args:
        name: the registered model (overridden by ``registration``).
        version: the version to gate; None: the newest (overridden by ``registration``).
        registration: export's registration.json, naming the model and version.
        metric: the version tag compared (written by export from evaluate's scores).
        min_delta: how much the candidate must beat the champion by.
        confidence: the two-sided level of the paired interval.
        bootstrap: resamples of the paired bootstrap.
        seed_margin: the mean IoU spread between training seeds (bench/band.py): the
            candidate must clear min_delta + seed_margin.
        out: where to write the decision as JSON (optional); its numbers (the scores
            compared, ``min_delta``) also go to ``<out stem>_metrics.json`` beside it.
        tracking_uri: MLflow tracking/registry URI (default: MLflow's own default).
        tracking: log the decision as an MLflow run (nested in the pipeline execution's
            run); the registry is needed either way.
        orchestrator: the run's orchestrator tag (cli, dvc, kfp).
        experiment: the MLflow experiment.

    Returns:
        The decision (``promoted``, the reason, the versions compared).
    """
    check_number("--min-delta", min_delta, 0)  # before any work
    if out is not None:
        prepare_out_file(out)
    if registration is not None:
        if not Path(registration).is_file():
            raise InputError(
                f"{registration}: no registration (export registers a version only with "
                "--evaluation and tracking on)"
            )
        name, version = registry.read_registration(registration)
    result = registry.promote(
        name,
        version,
        metric,
        min_delta,
        tracking_uri,
        confidence=confidence,
        resamples=bootstrap,
        margin=seed_margin,
    )
    if out is not None:  # the decision; its numbers also in <out>_metrics.json
        write_json(out, result)
        write_metrics(out.with_name(out.stem + "_metrics.json"), result)
    return result
