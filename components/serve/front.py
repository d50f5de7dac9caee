"""What every HTTP request passes on its way in and out: one ASGI middleware.

In order: a request id (``X-Request-ID`` from the request when it is a plain token, else
generated) set for the request's log lines; refusal while shutting down (503, readiness
already fails); the bearer token on ``/v1/*`` when the server has one (401); the body
limit (413, counted while reading when there is no Content-Length). On the way out:
``X-Request-ID`` and ``X-Model-Version`` headers on every response, any unexpected
exception turned into a JSON 500 (logged with its traceback and the request id), the
Prometheus counters, and one JSON access log line per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)
access_log = logging.getLogger("components.serve.access")

#: the id of the request being served, for log lines (worker threads get a copy)
REQUEST_ID: ContextVar[str] = ContextVar("pix2pixhd_request_id", default="")
_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # nothing that could forge a log line

PROTECTED = "/v1/"  # the API; health, metrics, docs and the editor's files stay open


def error_response(status: int, part: str, message: str, headers: dict | None = None):
    """The service's error body, ``{"part": ..., "error": ...}``."""
    return JSONResponse({"part": part, "error": message}, status, headers)


class Lifecycle:
    """Serving or shutting down, and the requests in progress."""

    def __init__(self) -> None:
        self.started = time.time()
        self.stopping_reason: str | None = None
        self.in_flight = 0
        self.requests = 0
        self.cut = 0  # requests cancelled when the grace period ran out

    @property
    def draining(self) -> bool:
        return self.stopping_reason is not None

    def stop_admitting(self, reason: str) -> None:
        """Readiness fails and new API requests are refused; those in flight go on."""
        if self.stopping_reason is None:
            self.stopping_reason = reason
            log.info("%s: not admitting new requests, %d in flight", reason, self.in_flight)


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison (of digests, so that not even the length leaks)."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(token.encode()).digest())


class RequestIdFilter(logging.Filter):
    """Adds ``[request_id=...]`` to log records made while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if rid and not hasattr(record, "request_id"):
            record.request_id = rid
            record.msg, record.args = f"{record.getMessage()} [request_id={rid}]", None
        return True


class Front:
    """The ASGI middleware (see the module doc). ``endpoint`` maps a path to the metrics
    label; ``version`` gives the current model version."""

    def __init__(
        self,
        app: Any,
        *,
        metrics: Any,
        lifecycle: Lifecycle,
        max_bytes: int,
        max_uploads: int,
        token: str | None,
        retry_after_s: int,
        version: Callable[[], str],
        endpoint: Callable[[str], str],
    ) -> None:
        self.app, self.metrics, self.lifecycle = app, metrics, lifecycle
        self.max_bytes, self.token, self.retry_after_s = max_bytes, token, retry_after_s
        # bodies being received or held for the model at once: admission comes before
        # any body is read, so memory stays within max_uploads x max_bytes
        self.max_uploads, self.uploads = max_uploads, 0
        self.version, self.endpoint = version, endpoint

    def refusal(self, path: str, headers: Headers) -> Any:
        if not path.startswith(PROTECTED):
            return None
        if self.lifecycle.draining:
            return error_response(
                503,
                "server",
                "server: shutting down; retry (another replica will answer)",
                {"Retry-After": str(self.retry_after_s), "Connection": "close"},
            )
        if self.token is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token_matches(given.strip(), self.token):
                return error_response(
                    401,
                    "authorization",
                    "authorization: missing or wrong bearer token "
                    "(send the header Authorization: Bearer <token>)",
                    {"WWW-Authenticate": "Bearer"},
                )
        return None

    async def body(self, method: str, headers: Headers, receive: Any) -> tuple[Any, Any]:
        """(receive for the app, a 413 or 503 response or None)."""
        if method != "POST":
            return receive, None
        if self.uploads >= self.max_uploads:  # before a byte of the body is read
            return receive, error_response(
                503,
                "server",
                f"busy: {self.uploads} requests with bodies in progress (limit "
                f"{self.max_uploads}); retry after {self.retry_after_s} s",
                {"Retry-After": str(self.retry_after_s)},
            )
        size = headers.get("content-length")
        if size is not None:
            if size.isdigit() and int(size) > self.max_bytes:
                message = f"body: {size} bytes, above the limit of {self.max_bytes}"
                return receive, error_response(413, "body", message)
            return receive, None
        chunks, total, more = [], 0, True  # chunked: count while reading, then replay
        while more:
            event = await receive()
            if event["type"] != "http.request":  # the client went away
                return receive, None
            chunks.append(event.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                message = f"body: above the limit of {self.max_bytes} bytes"
                return receive, error_response(413, "body", message)
            more = event.get("more_body", False)
        whole, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": whole, "more_body": False}

        return replay, None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)
        given = headers.get("x-request-id", "")
        rid = given if _PLAIN_ID.match(given) else uuid.uuid4().hex
        context = REQUEST_ID.set(rid)
        out = {"status": 500, "version": self.version(), "started": False}

        async def send_out(message: dict) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = rid
                if "x-model-version" in response_headers:  # the engine the request used
                    out["version"] = response_headers["x-model-version"]
                else:
                    response_headers["X-Model-Version"] = out["version"]
                out.update(status=message["status"], started=True)
            await send(message)

        self.lifecycle.in_flight += 1
        uploading = False
        try:
            refused = self.refusal(path, headers)
            app_receive = receive
            if refused is None:
                app_receive, refused = await self.body(method, headers, receive)
                uploading = refused is None and method == "POST"
                self.uploads += uploading
            if refused is not None:
                await refused(scope, receive, send_out)
            else:
                await self.app(scope, app_receive, send_out)
        except asyncio.CancelledError:  # cut: the grace period after SIGTERM ran out
            self.lifecycle.cut += 1
            raise
        except Exception:
            log.exception("%s %s: unexpected error", method, path)
            if not out["started"]:
                message = f"server: internal error (request id {rid}; the server log has it)"
                await error_response(500, "server", message)(scope, receive, send_out)
            else:  # the response had begun: the client sees it cut short
                out["status"] = 500
        finally:
            self.uploads -= uploading
            self.lifecycle.in_flight -= 1
            self.lifecycle.requests += 1
            seconds = time.perf_counter() - start
            endpoint, status = self.endpoint(path), str(out["status"])
            self.metrics.requests.labels(endpoint, status).inc()
            if out["status"] >= 400:
                self.metrics.errors.labels(endpoint, status).inc()
            self.metrics.latency.labels(endpoint).observe(seconds)
            access_log.info(
                json.dumps(
                    {
                        "ts": round(time.time(), 3),
                        "method": method,
                        "path": path,
                        "status": out["status"],
                        "duration_s": round(seconds, 6),
                        "request_id": rid,
                        "model_version": out["version"],
                    }
                ),
                extra={"request_id": rid},
            )
            REQUEST_ID.reset(context)
