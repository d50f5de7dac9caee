"""`pix2pixhd serve`: resolve the model, start uvicorn, optionally follow a registry alias."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from components.serve.app import ModelHolder, ServeConfig, create_app
from components.serve.engine import Engine
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
        threads: int,
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


def load(model: str, threads: int = 0, tracking_uri: str | None = None) -> ModelHolder:
    resolved = resolve(model, tracking_uri)
    return ModelHolder(Engine(resolved.onnx, threads, source=model, version=resolved.version))


def run(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: PositiveInt = 2,
    queue: int = 8,
    threads: int = 0,
    data: Path | None = None,
    follow_alias: bool = False,
    poll_s: float = 30.0,
    tracking_uri: str | None = None,
    max_bytes: PositiveInt = Limits.max_bytes,
    max_pixels: PositiveInt = Limits.max_pixels,
) -> dict[str, Any]:
    """Serve the HTTP API (ONNX Runtime) and the web editor for a model.

    Serve until interrupted (SIGINT/SIGTERM: requests in flight are finished).

    Args:
        model: a checkpoint, an ONNX file or an MLflow model URI (``models:/NAME@alias``).
        host, port: where to listen (default loopback).
        workers: generation workers; queue: requests waiting beyond them (then 503).
        threads: ONNX Runtime intra-op threads per worker (0: its default).
        data: a dataset whose label maps the editor offers (optional).
        follow_alias: reload when the registry alias of ``model`` moves, polling every
            ``poll_s`` seconds against ``tracking_uri``.
        tracking_uri: the MLflow tracking server that resolves models:/ URIs.
        max_bytes, max_pixels: request body and image size limits.
    """
    import uvicorn

    reg = registered(model)
    if follow_alias and (reg is None or reg[1] is None):
        raise InputError("--follow-alias needs --model models:/<name>@<alias>")
    if threads == 0:  # split the cores between the workers rather than oversubscribe
        threads = max(1, (os.cpu_count() or 1) // workers)
    holder = load(model, threads, tracking_uri)
    config = ServeConfig(
        workers=workers,
        queue=queue,
        limits=Limits(max_bytes=max_bytes, max_pixels=max_pixels),
        data=data,
    )
    app = create_app(holder, config)
    follower = None
    if follow_alias:
        follower = AliasFollower(
            holder, reg[0], reg[1], tracking_uri, threads, app.state.metrics.reloads.inc
        )
        follower.start(poll_s)
    log.info("serving %s (version %s) on http://%s:%d", model, holder.engine.version, host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)
    finally:
        if follower is not None:
            follower.stop()
    return {"served": model, "host": host, "port": port}
