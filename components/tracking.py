"""MLflow tracking that never takes training down with it.

The store is probed once with a short timeout; an unreachable server or an unwritable
SQLite file, or any failed call later (a server that dies mid-run), turns tracking off
for the rest of the run with one warning, and the work goes on at full speed. With no
URI given, MLflow's own default applies (``MLFLOW_TRACKING_URI``, else a local SQLite
file ``mlflow.db``): no server needed.

Lineage: one pipeline execution is one parent run, every step a nested run under it.
The steps run in separate processes (DVC stages, Kubeflow pods) that share only the
execution id ``$PIX2PIXHD_PIPELINE_RUN``; each step finds the parent by that id (tags
``pipeline_run`` and ``pipeline_role=parent`` in the step's experiment) or creates it
(:func:`pipeline_parent`). Race rule: create, then search again, and take the oldest
parent (start time, then run id) as the canonical one; any other parent found is
merged into it (its children re-pointed, itself deleted), and a step re-checks the
canonical parent when it ends. MLflow has no "create if absent", so two steps starting
at once may both create a parent: the rule makes every reader converge on the same one,
without a lock or a file shared by the pods. A step run without the variable gets a
standalone run.

Steps declare their run with :func:`tracked_step` (the run opens before the work, its
arguments become params, its numbers metrics, its status the step's outcome), and log
inside it through :func:`current`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import hashlib
import importlib.util
import inspect
import logging
import os
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.fileio import read_json

log = logging.getLogger(__name__)

#: who ran a step, recorded as its MLflow runs' orchestrator tag
Orchestrator = Literal["cli", "dvc", "kfp"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PIPELINE_RUN_ENV = "PIX2PIXHD_PIPELINE_RUN"  # set by the DAG drivers (dvc: make demo, kfp)
DEFAULT_EXPERIMENT = "pix2pixhd"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nesting: the UI draws runs under their parent
ROLE_TAG = "pipeline_role"  # "parent" on the run of a whole pipeline execution


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
    """Short MLflow client timeouts, no retries (values the user set are kept). The CLI
    and the Kubeflow executor call it first, so registry look-ups (``serve`` and
    ``generate`` resolving ``models:/``) are bounded too: a refused port fails in
    seconds, not after minutes of retries."""
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
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        #: a resumed run's last logged step: metrics and images up to it are not logged
        #: again (the interrupted attempt logged them; an exact resume repeats them)
        self.logged_through = -1

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

    def start(
        self,
        experiment: str,
        run_name: str,
        tags: dict[str, str],
        system_metrics: bool = False,
        resume_run_id: str | None = None,
    ) -> None:
        """Open the run: nested under the pipeline execution's parent run when
        ``$PIX2PIXHD_PIPELINE_RUN`` is set (:func:`pipeline_parent`), else standalone.
        ``system_metrics``: MLflow samples CPU, memory, disk, network (and GPU with
        ``nvidia-ml-py``) during the run; needs ``psutil``, skipped without it.
        ``resume_run_id``: the run an interrupted attempt opened (from its checkpoint):
        reopened when it is in this store, so that one run holds the whole training."""
        execution = os.environ.get(PIPELINE_RUN_ENV, "")
        if execution:  # one tag shared by a pipeline's runs
            tags = {**tags, "pipeline_run": execution}

        def go(mlflow: Any) -> str:
            exp = mlflow.set_experiment(experiment)
            run_tags = dict(tags)
            if execution:
                self.parent_id = self._parent(mlflow, exp.experiment_id, execution, tags)
                if self.parent_id:
                    run_tags[PARENT_TAG] = self.parent_id
            sample = system_metrics and importlib.util.find_spec("psutil") is not None
            if system_metrics and not sample:
                log.warning("system metrics not logged: psutil is not installed")
            system = True if sample else None
            self.experiment_id = exp.experiment_id
            previous = _resumable(mlflow, resume_run_id, exp.experiment_id)
            if previous is not None:
                run = mlflow.start_run(run_id=previous, log_system_metrics=system)
                mlflow.set_tags(run_tags)
                self.logged_through = _last_step(mlflow.MlflowClient(), previous)
                log.info(
                    "MLflow run %s resumed (metrics logged through step %d)",
                    previous,
                    self.logged_through,
                )
                return run.info.run_id
            run = mlflow.start_run(run_name=run_name, tags=run_tags, log_system_metrics=system)
            return run.info.run_id

        self.run_id = self._call("start_run", go)

    def _parent(self, mlflow: Any, experiment_id: str, execution: str, tags: dict) -> str | None:
        """The execution's parent run (found or created); None, with a warning, when it
        cannot be had: the step's run is then standalone (still tagged pipeline_run)."""
        try:
            client = mlflow.MlflowClient()
            parent = pipeline_parent(client, experiment_id, execution, tags)
            mark_running(client, parent)
            return parent
        except Exception as exc:  # the step's own run matters more than its nesting
            log.warning(
                "pipeline parent run of %s not found or created (%s): the run is standalone",
                execution,
                exc,
            )
            return None

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: ("" if v is None else v) for k, v in params.items()}
        self._call("log_params", lambda m: m.log_params(clean))

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int,
        dataset: Any = None,
        model_id: str | None = None,
    ) -> None:
        """Metrics at ``step``; ``dataset`` (from :meth:`dataset`) ties them to the data
        they were measured on, ``model_id`` to a logged model (MLflow 3)."""
        if 0 < step <= self.logged_through:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        extra = {k: v for k, v in (("dataset", dataset), ("model_id", model_id)) if v is not None}
        self._call("log_metrics", lambda m: m.log_metrics(clean, step=step, **extra))

    def log_image(self, image: np.ndarray, key: str, step: int = 0) -> None:
        """An image in the run's image history (the UI's slider over ``step``)."""
        if 0 < step <= self.logged_through:
            return
        self._call("log_image", lambda m: m.log_image(image, key=key, step=int(step)))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda m: m.log_artifact(str(path), artifact_path))

    def dataset(self, source: str, name: str, digest: str) -> Any:
        """An MLflow dataset entity for the data at ``source`` (a path or URI), ``digest``
        validate's dataset hash (MLflow keeps 36 characters; the whole hash is the input's
        ``dataset_hash`` tag). Without a hash MLflow derives a digest from the source."""
        if not self.active:
            return None
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        try:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways"
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(source)
            return MetaDataset(src, name=name, digest=digest[:36] if digest else None)
        except Exception as exc:  # an odd path: the run goes on without the entity
            log.warning("dataset %s (%s) not logged: %s", name, source, exc)
            return None

    def log_input_dataset(
        self, source: str, name: str, digest: str, context: str, dataset: Any = None
    ) -> Any:
        """The data a run reads, as an MLflow dataset input (digest: validate's hash);
        returns the dataset entity (for :meth:`log_metrics`), None when not logged."""
        dataset = dataset if dataset is not None else self.dataset(source, name, digest)
        if dataset is None:
            return None
        tags = {"dataset_hash": digest}  # "" when unknown (no validate summary)
        self._call("log_input", lambda m: m.log_input(dataset, context=context, tags=tags))
        return dataset if self.active else None

    def log_model_input(self, model_id: str) -> None:
        """A logged model this run reads (MLflow 3 run inputs: the UI links the two)."""

        def go(mlflow: Any) -> None:
            from mlflow.entities import LoggedModelInput

            mlflow.log_input(model=LoggedModelInput(model_id))

        self._call("log_input", go)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda m: m.set_tags(tags))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        self._call("end_run", lambda m: m.end_run(status=status))
        if self.parent_id is not None and self.active:
            try:  # the nesting is kept right; a failure here never fails the step
                client = self._mlflow.MlflowClient()
                execution = os.environ.get(PIPELINE_RUN_ENV, "")
                parent = pipeline_parent(client, str(self.experiment_id), execution, {})
                if parent != self.parent_id:  # another step's parent won the race
                    client.set_tag(self.run_id, PARENT_TAG, parent)
                    self.parent_id = parent
                settle_parent(client, parent)
            except Exception as exc:
                log.warning("pipeline parent run not updated: %s", exc)


# ---------------------------------------------------------------------------
# the pipeline execution's parent run


def _resumable(mlflow: Any, run_id: str | None, experiment_id: str) -> str | None:
    """``run_id`` when this store holds it, in ``experiment_id``, else None."""
    if not run_id:
        return None
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # another store (the checkpoint travelled), or deleted
        log.info("MLflow run %s of the checkpoint is not in this store: a new run", run_id)
        return None
    return run_id if run.info.experiment_id == experiment_id else None


def _last_step(client: Any, run_id: str) -> int:
    """The highest step any metric of the run was logged at (-1: none)."""
    last = -1
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("system/"):
            continue
        history = client.get_metric_history(run_id, key)
        last = max([last, *(int(m.step) for m in history)])
    return last


def _quoted(value: str) -> str:
    """``value`` as an MLflow search literal."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r}: quotes and backslashes are not allowed here")
    return f"'{value}'"


def _parents(client: Any, experiment_id: str, execution: str) -> list[Any]:
    from mlflow.entities import ViewType

    found = client.search_runs(
        [experiment_id],
        f"tags.pipeline_run = {_quoted(execution)} and tags.{ROLE_TAG} = 'parent'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=100,
    )
    return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))


def children(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """The runs nested under ``parent_id`` (active ones, oldest first)."""
    from mlflow.entities import ViewType

    found = client.search_runs(
        [experiment_id],
        f"tags.`{PARENT_TAG}` = {_quoted(parent_id)}",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1000,
    )
    return sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))


def pipeline_parent(
    client: Any, experiment_id: str, execution: str, tags: Mapping[str, str]
) -> str:
    """The id of execution ``execution``'s parent run in the experiment, created if
    absent (with the git SHA and orchestrator of ``tags``). Race-safe: after creating,
    search again and keep the oldest parent (start time, then id); every later search
    agrees on it, and the others found are merged into it (:func:`_merge`)."""
    found = _parents(client, experiment_id, execution)
    if not found:
        keep = {k: tags[k] for k in ("git_sha", "orchestrator") if k in tags}
        client.create_run(
            experiment_id,
            run_name=f"pipeline {execution}",
            tags={
                **keep,
                "pipeline_run": execution,
                ROLE_TAG: "parent",
                "mlflow.note.content": (
                    f"One execution of the pix2pixHD pipeline ({PIPELINE_RUN_ENV}="
                    f"{execution}): every step is a nested run (synth, validate, drift, "
                    "boundaries, train global/local, features, segmenter, evaluate, "
                    "export, promote), each with its params, input datasets (validate's "
                    "dataset hash as digest), metrics, images and outputs."
                ),
            },
        )
        found = _parents(client, experiment_id, execution)
    canonical = found[0]
    for other in found[1:]:
        _merge(client, experiment_id, other.info.run_id, canonical.info.run_id)
    return canonical.info.run_id


def _merge(client: Any, experiment_id: str, loser: str, winner: str) -> None:
    """A duplicate parent (lost a creation race): its children go under the winner and
    it is deleted. Idempotent; another step may be doing the same."""
    with contextlib.suppress(Exception):
        for child in children(client, experiment_id, loser):
            client.set_tag(child.info.run_id, PARENT_TAG, winner)
        client.delete_run(loser)


def mark_running(client: Any, parent_id: str) -> None:
    """A step started: the execution is running again (a later stage, a retry)."""
    if client.get_run(parent_id).info.status != "RUNNING":
        client.update_run(parent_id, status="RUNNING")


def settle_parent(client: Any, parent_id: str) -> str:
    """The parent's status from its children, the newest attempt of each step name
    (a retried Kubeflow task counts by its last attempt): RUNNING while one runs, else
    FAILED if one failed, else FINISHED (ended when the last child ended). Written,
    then checked once more: a step that ended meanwhile gets the last word."""
    status = "RUNNING"
    for _ in range(2):
        parent = client.get_run(parent_id)
        latest: dict[str, Any] = {}
        for run in children(client, parent.info.experiment_id, parent_id):
            latest[run.info.run_name] = run  # oldest first: the newest attempt stays
        states = {r.info.status for r in latest.values()}
        if states & {"RUNNING", "SCHEDULED"} or not states:
            status = "RUNNING"
        else:
            status = "FAILED" if states & {"FAILED", "KILLED"} else "FINISHED"
        if status == "RUNNING":
            if parent.info.status != "RUNNING":
                client.update_run(parent_id, status="RUNNING")
        elif parent.info.status != status or parent.info.end_time is None:
            end = max((r.info.end_time or 0) for r in latest.values()) or None
            client.set_terminated(parent_id, status, end_time=end)
        else:
            break
    return status


# ---------------------------------------------------------------------------
# a step's run, declared once


_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar(
    "pix2pixhd_tracker", default=None
)


def current() -> Tracker:
    """The tracker of the step running now (:func:`tracked_step`); a disabled one
    outside a step, so steps log unconditionally."""
    return _CURRENT.get() or Tracker(enabled=False)


@contextlib.contextmanager
def using(tracker: Tracker) -> Iterator[Tracker]:
    """Make ``tracker`` the :func:`current` one inside the block."""
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    finally:
        _CURRENT.reset(token)


#: run() arguments never logged as params (the store's own URI may hold credentials)
_NOT_PARAMS = ("tracking", "tracking_uri", "orchestrator", "experiment")


def step_params(arguments: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A step's run() arguments as MLflow params: dataclasses flattened
    (``params.epochs``), sequences joined, paths as text, None as ""."""
    out: dict[str, Any] = {}
    for name, value in arguments.items():
        if not prefix and name in _NOT_PARAMS:
            continue
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(step_params(dataclasses.asdict(value), key + "."))
        elif isinstance(value, dict):
            out.update(step_params(value, key + "."))
        elif isinstance(value, list | tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = "" if value is None else str(value)
    return {k: v[:6000] for k, v in out.items()}


def step_metrics(result: Any, limit: int = 40) -> dict[str, float]:
    """The numbers of a step's result: top-level ones and those one level down
    (``counts.train``); bigger tables (per-class histograms) are left to artifacts."""
    out: dict[str, float] = {}
    if not isinstance(result, Mapping):
        return out

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)

    for key, value in result.items():
        if number(value):
            out[str(key)] = float(value)
        elif isinstance(value, Mapping) and len(value) <= limit:
            out.update({f"{key}.{k}": float(v) for k, v in value.items() if number(v)})
    return out


Hook = Callable[[Tracker, Mapping[str, Any], Any], None]


def tracked_step(
    name: str | Callable[[Mapping[str, Any]], str],
    after: Hook | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a step's ``run()`` its MLflow run: opened before the work (nested under the
    pipeline execution's parent, :meth:`Tracker.start`), the arguments as params,
    :func:`current` inside, the result's numbers as metrics, ``after(tracker,
    arguments, result)`` (result None on failure) for what is particular to the step,
    the error as tag ``error`` and status FAILED when it raises. ``run()`` takes
    ``tracking``, ``tracking_uri``, ``orchestrator``, ``experiment`` (any it lacks
    default to on, MLflow's default store, ``cli`` and ``pix2pixhd``)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            stage = name(arguments) if callable(name) else name
            tracker = Tracker(
                enabled=bool(arguments.get("tracking", True)),
                tracking_uri=arguments.get("tracking_uri"),
            )
            with using(tracker):
                if tracker.enabled:
                    tags = run_tags(stage, arguments.get("orchestrator"))
                    tracker.start(arguments.get("experiment") or DEFAULT_EXPERIMENT, stage, tags)
                    tracker.log_params(step_params(arguments))
                result, status = None, "FAILED"
                try:
                    result = fn(*args, **kwargs)
                    tracker.log_metrics(step_metrics(result), step=0)
                    status = "FINISHED"
                    return result
                except BaseException as exc:
                    text = str(exc).strip().splitlines()
                    tracker.set_tags(
                        {"error": f"{type(exc).__name__}: {text[0] if text else ''}"[:5000]}
                    )
                    raise
                finally:
                    if after is not None and tracker.active:
                        try:
                            after(tracker, arguments, result)
                        except Exception as exc:  # never fails the step
                            log.warning("%s: step details not logged to MLflow: %s", stage, exc)
                    tracker.end(status)

        return run

    return wrap


def orchestrator_tag(explicit: str | None) -> str:
    return explicit or os.environ.get("PIX2PIXHD_ORCHESTRATOR", "cli")


def run_tags(stage: str, orchestrator: str | None = None, **extra: str) -> dict[str, str]:
    """The tags of a step's MLflow run: ``stage``, ``git_sha``, ``orchestrator`` (the
    explicit one, else ``$PIX2PIXHD_ORCHESTRATOR``, else ``cli``), then ``extra``."""
    tags = {"stage": stage, "git_sha": git_sha(), "orchestrator": orchestrator_tag(orchestrator)}
    return {**tags, **extra}


def file_sha256(path: Path) -> str:
    """The sha256 of a file (a checkpoint: what export and the registry match on)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_hash(data_summary: Path | None, default: str = "") -> str:
    """The dataset hash validate wrote into ``data_summary`` (its summary.json);
    ``default`` when none is given or the file does not exist. A summary without a
    string ``dataset_hash`` is one line naming the file."""
    if data_summary is None or not Path(data_summary).is_file():
        return default
    return str(read_json(data_summary, "data summary", {"dataset_hash": str})["dataset_hash"])
