"""MLflow tracking that never takes training down with it.

Every call is guarded: a failure logs one warning (and one more when tracking works
again) and training goes on. With no URI given, MLflow's own default applies
(``MLFLOW_TRACKING_URI``, else a local SQLite file ``mlflow.db``): no server needed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_RUN_ENV = "PIX2PIXHD_PIPELINE_RUN"  # set by the DAG drivers (dvc: make demo, kfp)


def git_sha(root: Path = PROJECT_ROOT) -> str:
    """The commit of the code: git's HEAD, or in an image (no .git) the commit it was
    built from (``PIX2PIXHD_GIT_SHA``, set by infra/docker/Dockerfile.*)."""
    if os.environ.get("PIX2PIXHD_GIT_SHA"):
        return os.environ["PIX2PIXHD_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Tracker:
    """Thin, failure-tolerant wrapper over the MLflow fluent API (one active run)."""

    def __init__(self, enabled: bool = True, tracking_uri: str | None = None) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self._failing = False
        self._mlflow: Any = None

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            if self._mlflow is None:
                import mlflow

                if self.tracking_uri:
                    mlflow.set_tracking_uri(self.tracking_uri)
                self._mlflow = mlflow
            result = fn(self._mlflow)
        except Exception as exc:  # tracking must never stop training
            if not self._failing:
                log.warning(
                    "MLflow %s failed (%s: %s); training continues, checkpoints are "
                    "kept; later tracking calls are retried",
                    what,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
            self._failing = True
            return None
        if self._failing:
            log.warning("MLflow tracking works again (%s)", what)
            self._failing = False
        return result

    def start(self, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        if os.environ.get(PIPELINE_RUN_ENV):  # one tag shared by a pipeline's runs
            tags = {**tags, "pipeline_run": os.environ[PIPELINE_RUN_ENV]}

        def go(mlflow: Any) -> str:
            mlflow.set_experiment(experiment)
            run = mlflow.start_run(run_name=run_name, tags=tags)
            return run.info.run_id

        self.run_id = self._call("start_run", go)

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else v) for k, v in params.items()}
        self._call("log_params", lambda m: m.log_params(clean))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._call("log_metrics", lambda m: m.log_metrics(metrics, step=step))

    def log_image(self, image: np.ndarray, artifact_file: str) -> None:
        self._call("log_image", lambda m: m.log_image(image, artifact_file=artifact_file))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda m: m.log_artifact(str(path), artifact_path))

    def log_input_dataset(self, source: str, name: str, digest: str, context: str) -> None:
        """The data a run used, as an MLflow dataset input (digest: validate's hash)."""

        def go(mlflow: Any) -> None:
            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset

            with warnings.catch_warnings():  # "can be interpreted in multiple ways"
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(source)
            dataset = MetaDataset(src, name=name, digest=digest[:36])  # MLflow's limit: 36
            mlflow.log_input(dataset, context=context, tags={"dataset_hash": digest})

        self._call("log_input", go)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._call("end_run", lambda m: m.end_run(status=status))


def orchestrator_tag(explicit: str | None) -> str:
    return explicit or os.environ.get("PIX2PIXHD_ORCHESTRATOR", "cli")
