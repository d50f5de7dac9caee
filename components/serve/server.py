"""`pix2pixhd serve`: resolve the model, start uvicorn with a graceful life cycle (SIGTERM:
readiness fails, requests in flight finish, the summary is printed, exit 0), optionally
follow a registry alias."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.serve.app import ModelHolder, ServeConfig, create_app
from components.serve.engine import Engine, Threads
from components.serve.front import RequestIdFilter
from components.serve.maps import Limits
from components.serve.source import registered, registered_onnx, registered_version, resolve
from components.signature import PositiveInt
from model.errors import InputError

log = logging.getLogger(__name__)


class AliasFollower:
    """Polls ``models:/<name>@<alias>``; when the alias points at another version, loads
    it and swaps it in (requests in flight finish on the engine they started with). A
    failed reload keeps the current model and is retried at the next poll."""

    def __init__(
        self,
        holder: ModelHolder,
        name: str,
        alias: str,
        tracking_uri: str | None,
        threads: Threads,
        on_reload: Any = None,
    ) -> None:
        self.holder, self.name, self.alias = holder, name, alias
        self.tracking_uri, self.threads, self.on_reload = tracking_uri, threads, on_reload
        self._stop = threading.Event()

    def check(self) -> bool:
        """One poll; True when a new version was loaded."""
        mv = registered_version(self.name, self.alias, None, self.tracking_uri)
        if str(mv.version) == self.holder.engine.version:
            return False
        resolved = registered_onnx(self.name, self.alias, tracking_uri=self.tracking_uri)
        engine = Engine(
            resolved.onnx,
            self.threads,
            source=f"models:/{self.name}@{self.alias}",
            version=resolved.version,
        )
        old = self.holder.engine.version
        self.holder.swap(engine)
        log.info(
            "models:/%s@%s moved: version %s -> %s", self.name, self.alias, old, engine.version
        )
        if self.on_reload is not None:
            self.on_reload()
        return True

    def loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.check()
            except Exception as exc:  # keep serving the current model
                log.warning("alias check of models:/%s@%s failed: %s", self.name, self.alias, exc)

    def start(self, every_s: float) -> threading.Thread:
        thread = threading.Thread(target=self.loop, args=(every_s,), daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def load(
    model: str, threads: Threads | None = None, tracking_uri: str | None = None
) -> ModelHolder:
    resolved = resolve(model, tracking_uri)
    engine = Engine(resolved.onnx, threads or Threads(), source=model, version=resolved.version)
    return ModelHolder(engine)


def read_token(path: Path) -> str:
    """The bearer token: the file's content without surrounding white space (a mounted
    Secret's key, or a file only the server's user reads)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--token-file {path}: cannot read it ({type(exc).__name__})") from None
    if not token or any(c.isspace() for c in token):
        raise InputError(
            f"--token-file {path}: expected one token (no white space inside), found "
            f"{'nothing' if not token else 'white space'}"
        )
    return token


class GracefulServer:
    """uvicorn's server, with this life cycle on SIGTERM or SIGINT: readiness fails and
    new API requests are refused at once (``Lifecycle.stop_admitting``), the listener
    closes, requests in flight get ``grace_s`` seconds to finish, then ``serve`` returns
    (no re-raised signal: the command prints its summary and exits 0). A second SIGINT
    stops at once."""

    def __init__(self, app: Any, host: str, port: int, grace_s: float) -> None:
        import uvicorn

        lifecycle = app.state.lifecycle

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # uvicorn's would re-raise the signal afterwards
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {s: signal.signal(s, self.handle_exit) for s in STOP_SIGNALS}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig: int, frame: Any) -> None:
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                lifecycle.stop_admitting(signal.Signals(sig).name)
                self.should_exit = True

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            access_log=False,  # components.serve.access writes one JSON line per request
            timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]
        )
        self.server = Server(config)

    def serve(self) -> None:
        self.server.run()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _request_logging() -> Iterator[None]:
    """Access lines as bare JSON on stderr; the request id on the request's other lines."""
    access = logging.getLogger("components.serve.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    tagged = list(logging.getLogger().handlers)
    ids = RequestIdFilter()
    saved = access.propagate, access.level
    access.addHandler(handler)
    access.propagate = False
    access.setLevel(logging.INFO)
    for h in tagged:
        h.addFilter(ids)
    try:
        yield
    finally:
        for h in tagged:
            h.removeFilter(ids)
        access.removeHandler(handler)
        access.propagate, access.level = saved


def run(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: PositiveInt = 2,
    queue: int = 8,
    threads: int = 0,
    one_session: bool = False,
    data: Path | None = None,
    follow_alias: bool = False,
    poll_s: float = 30.0,
    tracking_uri: str | None = None,
    max_bytes: PositiveInt = Limits.max_bytes,
    max_pixels: PositiveInt = Limits.max_pixels,
    max_instances: PositiveInt = Limits.max_instances,
    max_edits: PositiveInt = Limits.max_edits,
    deadline_s: float = Limits.deadline_s,
    grace_s: float = 30.0,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """Serve the HTTP API (ONNX Runtime) and the web editor for a model.

    Serve until SIGTERM or SIGINT: readiness (/readyz) fails and new API requests are
    refused at once, requests in flight get ``grace_s`` seconds to finish, then the
    summary is printed and the command exits 0.

    Args:
        model: a checkpoint, an ONNX file or an MLflow model URI (``models:/NAME@alias``).
        host, port: where to listen (default loopback).
        workers: generation workers; queue: requests waiting beyond them (then 503).
        threads: ONNX Runtime intra-op threads per worker (0: the cores split between
            the workers); a request alone gets the threads of all the workers, from a
            second session on the same graph (``Threads.split``).
        one_session: no second session: a request alone runs on its worker's threads
            too; saves a copy of the weights (760 MB for the paper's generator).
        data: a dataset whose label maps the editor offers (optional).
        follow_alias: reload when the registry alias of ``model`` moves, polling every
            ``poll_s`` seconds against ``tracking_uri``.
        poll_s: seconds between two polls of the alias (with --follow-alias).
        tracking_uri: the MLflow tracking server that resolves models:/ URIs.
        max_bytes, max_pixels: request body and image size limits.
        max_instances: distinct instance ids one map may hold (the work grows with them).
        max_edits: edits one edit request may hold.
        deadline_s: seconds a request may take, queue included (then 504); a request
            whose client leaves stops at its next step.
        grace_s: seconds requests in flight get to finish after SIGTERM/SIGINT.
        token_file: a file holding a bearer token (e.g. a mounted Secret); with it,
            /v1/* need the header ``Authorization: Bearer <token>`` (health, metrics and
            the editor's page stay open; the editor asks for the token).
    """
    reg = registered(model)
    if follow_alias and (reg is None or reg[1] is None):
        raise InputError("--follow-alias needs --model models:/<name>@<alias>")
    if grace_s < 0:
        raise InputError(f"--grace-s {grace_s}: expected seconds >= 0")
    token = read_token(token_file) if token_file is not None else None
    plan = Threads.split(workers, threads, alone=not one_session)
    holder = load(model, plan, tracking_uri)
    config = ServeConfig(
        workers=workers,
        queue=queue,
        limits=Limits(
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            max_instances=max_instances,
            max_edits=max_edits,
            deadline_s=deadline_s,
        ),
        data=data,
        token=token,
    )
    app = create_app(holder, config)
    server = GracefulServer(app, host, port, grace_s)
    follower = None
    if follow_alias:
        follower = AliasFollower(
            holder, reg[0], reg[1], tracking_uri, plan, app.state.metrics.reloads.inc
        )
        follower.start(poll_s)
    log.info(
        "serving %s (version %s) on http://%s:%d%s; %d worker(s) x %d thread(s)%s",
        model,
        holder.engine.version,
        host,
        port,
        " (bearer token required on /v1/*)" if token is not None else "",
        workers,
        plan.shared,
        f", {plan.alone} for a request alone" if plan.alone else "",
    )
    lifecycle = app.state.lifecycle
    try:
        with _request_logging():
            server.serve()
    finally:
        if follower is not None:
            follower.stop()
        app.state.pool.executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped (%s)", lifecycle.stopping_reason or "server exit")
    return {
        "served": model,
        "host": host,
        "port": port,
        "model_version": holder.engine.version,
        "auth": "bearer token" if token is not None else "none",
        "requests": lifecycle.requests,
        "unfinished": lifecycle.cut + lifecycle.in_flight,  # cut when the grace ran out
        "stopped_by": lifecycle.stopping_reason or "server exit",
        "uptime_s": round(time.time() - lifecycle.started, 1),
    }
