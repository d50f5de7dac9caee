"""MLflow tracking that never takes training down with it.

The store is probed once with a short timeout; an unreachable server or an unwritable
SQLite file, or any failed call later (a server that dies mid-run), turns tracking off
for the rest of the run with one warning, and the work goes on at full speed. With no
URI given, MLflow's own default applies (``MLFLOW_TRACKING_URI``, else a local SQLite
file ``mlflow.db``): no server needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.fileio import read_json

log = logging.getLogger(__name__)

#: who ran a step, recorded as its MLflow runs' orchestrator tag
Orchestrator = Literal["cli", "dvc", "kfp"]

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


# MLflow's HTTP client retries with exponential backoff for minutes by default (and
# waits 120 s per request): an unreachable server would stall every call. A run uses
# short timeouts and no retries, unless the user set these variables.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
PROBE_TIMEOUT_ENV = "PIX2PIXHD_TRACKING_PROBE_TIMEOUT"  # seconds, default 3


def configure_client() -> None:
    """Short MLflow client timeouts, no retries (values the user set are kept)."""
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


def probe_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get(PROBE_TIMEOUT_ENV, "3")))
    except ValueError:
        return 3.0


def resolve_uri(tracking_uri: str | None) -> str:
    """The store a run would use: the argument, else $MLFLOW_TRACKING_URI, else MLflow's
    default (resolved by MLflow itself)."""
    if tracking_uri:
        return tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    import mlflow

    return mlflow.get_tracking_uri()


def _probe_sqlite(uri: str, timeout: float) -> str | None:
    path = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    if path is None or str(path) in ("", ":memory:"):
        return None
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        return f"{directory}: no such directory for the SQLite store"
    if not path.exists() and not os.access(directory, os.W_OK):
        return f"{directory}: cannot create the SQLite store here (not writable)"
    try:
        conn = sqlite3.connect(str(path), timeout=timeout)
        try:
            # a real write (rolled back): fails on a read-only file, directory or mount
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute(f"PRAGMA user_version = {int(version)}")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"{path}: SQLite store not writable ({exc})"
    return None


def probe(uri: str, timeout: float | None = None) -> str | None:
    """Why the tracking store at ``uri`` cannot be used now, or None if it can.
    One short check: HTTP(S) servers answer /health, database servers accept a TCP
    connection, SQLite files take a (rolled back) write."""
    timeout = probe_timeout() if timeout is None else timeout
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.split("+")[0].lower()
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code  # an answer: the server is up (/health may need auth)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"{uri}: tracking server unreachable ({reason})"
        if status >= 500:
            return f"{uri}: tracking server answers HTTP {status}"
        return None
    if scheme == "sqlite":
        return _probe_sqlite(uri, timeout)
    if scheme in ("postgresql", "postgres", "mysql", "mssql") and parsed.hostname:
        default_port = {"mysql": 3306, "mssql": 1433}.get(scheme, 5432)
        try:
            port = parsed.port or default_port
            with socket.create_connection((parsed.hostname, port), timeout=timeout):
                pass
        except (OSError, ValueError) as exc:
            return f"{parsed.scheme}://{parsed.hostname}: database unreachable ({exc})"
        return None
    if scheme in ("", "file"):
        directory = Path(parsed.path if scheme == "file" else uri)
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        if not os.access(directory, os.W_OK):
            return f"{directory}: tracking directory not writable"
    return None


class Tracker:
    """Thin, failure-tolerant wrapper over the MLflow fluent API (one active run).

    The store is probed once, with a short timeout, before the first call; if it cannot
    be used, or any later call fails (a server that dies mid-run), tracking is off for
    the rest of the run after one warning, and the work goes on at full speed.
    ``failure`` says why (None while tracking works)."""

    def __init__(self, enabled: bool = True, tracking_uri: str | None = None) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.run_id: str | None = None
        self.failure: str | None = None
        self._mlflow: Any = None
        self._probed = False

    @property
    def active(self) -> bool:
        return self.enabled and self.failure is None

    def _degrade(self, reason: str) -> None:
        self.failure = reason
        log.warning(
            "MLflow tracking is off for the rest of this run: %s; the work goes on and "
            "its outputs are written as usual",
            reason,
        )
        if self._mlflow is not None and self.run_id is not None:
            with contextlib.suppress(Exception):  # one short call (no retries)
                self._mlflow.end_run(status="FAILED")

    def connect(self) -> bool:
        """Probe the store once (later calls return the first answer); False: tracking
        is off, ``failure`` says why."""
        if self._probed:
            return self.failure is None
        self._probed = True
        configure_client()
        try:
            uri = resolve_uri(self.tracking_uri)
        except Exception as exc:  # MLflow not importable or a broken configuration
            self._degrade(f"cannot resolve the tracking URI ({type(exc).__name__}: {exc})")
            return False
        reason = probe(uri)
        if reason is not None:
            self._degrade(reason)
            return False
        import mlflow

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        self._mlflow = mlflow
        return True

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        if not self.enabled or self.failure is not None or not self.connect():
            return None
        try:
            return fn(self._mlflow)
        except Exception as exc:  # tracking must never stop the work
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._degrade(f"MLflow {what} failed ({type(exc).__name__}: {first})")
            return None

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

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda m: m.set_tags(tags))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._call("end_run", lambda m: m.end_run(status=status))


def orchestrator_tag(explicit: str | None) -> str:
    return explicit or os.environ.get("PIX2PIXHD_ORCHESTRATOR", "cli")


def run_tags(stage: str, orchestrator: str | None = None, **extra: str) -> dict[str, str]:
    """The tags of a step's MLflow run: ``stage``, ``git_sha``, ``orchestrator`` (the
    explicit one, else ``$PIX2PIXHD_ORCHESTRATOR``, else ``cli``), then ``extra``."""
    tags = {"stage": stage, "git_sha": git_sha(), "orchestrator": orchestrator_tag(orchestrator)}
    return {**tags, **extra}


def dataset_hash(data_summary: Path | None, default: str = "") -> str:
    """The dataset hash validate wrote into ``data_summary`` (its summary.json);
    ``default`` when none is given or the file does not exist. A summary without a
    string ``dataset_hash`` is one line naming the file."""
    if data_summary is None or not Path(data_summary).is_file():
        return default
    return str(read_json(data_summary, "data summary", {"dataset_hash": str})["dataset_hash"])
