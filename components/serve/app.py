"""The HTTP API (FastAPI, OpenAPI docs at /docs) and the static web editor at /.

Model work (decoding, editing, generating, encoding) runs on a bounded thread pool;
requests past ``workers + queue`` are answered 503 with Retry-After, never queued without
bound. Bodies above ``max_bytes`` and maps above ``max_pixels`` are answered 413. Every
error is JSON ``{"part": ..., "error": ...}`` (``ErrorBody``, documented with each
route's statuses in the OpenAPI document) naming the request part and what was
expected; request validation errors included, and an unexpected exception is a 500 of
the same shape. The engine is swapped atomically on reload: a request keeps the engine
it started with, so a reload drops nothing in flight. What every request passes
(request id, token, shutdown, body limit, metrics, access log) is ``front.Front``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.serve.engine import Engine
from components.serve.front import PROTECTED, Front, Lifecycle, error_response
from components.serve.maps import (
    ApiError,
    Limits,
    check_instances,
    list_samples,
    png_bytes,
    read_instance_png,
    read_label_png,
    read_mask_png,
)
from model.editing import apply_edits
from model.errors import InputError
from model.labels import LABELS
from model.model_contract import class_of, unique_inverse

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ROUTES = (  # the metrics' endpoint label: a route, or the prefix of a group of routes
    "/v1/generate",
    "/v1/edit",
    "/v1/classes",
    "/v1/limits",
    "/v1/styles",
    "/v1/samples",
    "/healthz",
    "/livez",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/metrics",
)


def endpoint_of(path: str) -> str:
    return next((r for r in ROUTES if path == r or path.startswith(r + "/")), "other")


@dataclass(frozen=True)
class ServeConfig:
    workers: int = 2  # model calls at once
    queue: int = 8  # requests waiting for a worker; more are answered 503
    retry_after_s: int = 1
    limits: Limits = field(default_factory=Limits)
    data: Path | None = None  # dataset whose samples the editor lists
    token: str | None = field(default=None, repr=False)  # bearer token for /v1/*


class ModelHolder:
    """The current engine; ``swap`` replaces it for new requests only."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.loaded_at = time.time()

    @property
    def engine(self) -> Engine:
        return self._engine

    def swap(self, engine: Engine) -> None:
        with self._lock:
            self._engine, self.loaded_at = engine, time.time()


WATCH_S = 0.25  # how often a waiting request looks whether its client is still there


class Abandoned(Exception):
    """The request's client left, or its deadline passed: the worker stops here."""


class Pool:
    """A fixed number of worker threads behind a bounded admission count."""

    def __init__(self, workers: int, queue: int, retry_after_s: int) -> None:
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="pix2pixhd-serve")
        self.capacity, self.retry_after_s = workers + queue, retry_after_s
        self.admitted = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        if self.admitted >= self.capacity:  # the event loop is one thread: no race here
            raise ApiError(
                503,
                "server",
                f"busy: {self.admitted} requests in progress or queued (limit "
                f"{self.capacity}); retry after {self.retry_after_s} s",
            )
        self.admitted += 1
        context = contextvars.copy_context()  # the request id, for the worker's log lines
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, context.run, fn, *args
            )
        finally:
            self.admitted -= 1


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pix2pixhd_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "pix2pixhd_errors",
            "HTTP responses with status >= 400",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pix2pixhd_request_seconds",
            "request latency",
            ["endpoint"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        model_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.queue_wait = Histogram(
            "pix2pixhd_queue_wait_seconds",
            "time an admitted request waited for a worker",
            ["model_version"],
            buckets=model_buckets,
            registry=r,
        )
        self.model_time = Histogram(
            "pix2pixhd_model_seconds",
            "time a worker spent on a request (decode, edit, generate, encode)",
            ["model_version"],
            buckets=model_buckets,
            registry=r,
        )
        self.in_progress = Gauge(
            "pix2pixhd_requests_admitted", "model requests running or queued", registry=r
        )
        self.reloads = Counter("pix2pixhd_model_reloads", "model reloads", registry=r)


class ErrorBody(BaseModel):
    """Every error the service answers (4xx and 5xx)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"part": "label", "error": "label: not a PNG file (expected PNG bytes)"}]
        },
    )
    part: str = Field(
        description="the request part concerned: a form field or file part, `body`, `path`, "
        "`authorization` or `server`"
    )
    error: str = Field(description="what was wrong, and what was expected")


_WHY = {
    400: "bad input: the part named and what was expected",
    401: "the bearer token is missing or wrong (when the server runs with --token-file)",
    404: "no such sample or file",
    413: "above a limit of /v1/limits: the body, a map's pixels, the distinct instance ids, "
    "the edits or the samples of one request",
    504: "the request's deadline (queue included) passed: see /v1/limits",
    422: "a form field or path parameter is missing or of the wrong type",
    500: "an unexpected error, logged with the request id",
    503: "busy (the queue is full) or shutting down: retry after Retry-After seconds",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: the error body for each status."""
    return {s: {"model": ErrorBody, "description": _WHY[s]} for s in statuses}


class EditResponse(BaseModel):
    before: str  # base64 PNG, the maps as sent
    after: str  # base64 PNG, the edited maps
    label: str  # base64 PNG, edited label ids (8-bit)
    instance: str  # base64 PNG, edited instance ids (16-bit)
    samples: list[str]  # base64 PNGs, other style draws of the edited maps
    log: list[str]
    model_version: str


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array)).decode("ascii")


def _json_field(text: str | None, part: str, default: Any) -> Any:
    if text is None or text == "":
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, part, f"{part}: not valid JSON: {exc}") from None


def _styles(value: Any) -> dict[int, int]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value.values()
    ):
        raise ApiError(
            400, "styles", 'styles: expected a JSON object {"<instance id>": <cluster>, ...}'
        )
    try:
        return {int(k): v for k, v in value.items()}
    except ValueError:
        raise ApiError(400, "styles", "styles: keys must be instance ids") from None


def _check_styles(engine: Engine, instance: np.ndarray | None, styles: dict[int, int]) -> None:
    if not styles:
        return
    present = set() if instance is None else set(unique_inverse(instance)[0].tolist())
    for inst, k in styles.items():
        cls = class_of(inst)
        n = len(engine.info.centres.get(cls, ()))
        if inst not in present:
            raise ApiError(400, "styles", f"styles: instance {inst} is not in the instance map")
        if not 0 <= k < n:
            raise ApiError(
                400, "styles", f"styles: cluster {k} of instance {inst}: class {cls} has {n}"
            )


def _document(schema: dict[str, Any], token: bool) -> dict[str, Any]:
    """What FastAPI's generated document lacks: the headers of every response, and the
    bearer scheme of /v1/* when the server has a token."""
    ids = {
        "X-Request-ID": {
            "description": "the request's X-Request-ID when it sent one (letters, digits, "
            "`._:-`, up to 128), else a generated one; in every log line of the request",
            "schema": {"type": "string"},
        },
        "X-Model-Version": {
            "description": "the model that answered: its registry version, else "
            "`sha256:` and the start of its content hash",
            "schema": {"type": "string"},
        },
    }
    extra = {
        "401": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "503": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
    }
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                response["headers"] = {**ids, **extra.get(status, {})}
            if token and path.startswith(PROTECTED):
                operation["security"] = [{"bearer": []}]
    if token:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer"}
    return schema


def create_app(holder: ModelHolder, config: ServeConfig = ServeConfig()) -> FastAPI:
    app = FastAPI(
        title="pix2pixHD",
        version="1",
        description="Label maps to photos (pix2pixHD, Wang et al. 2018) on ONNX Runtime; "
        "semantic editing as in `pix2pixhd edit`. The web editor is at `/`. Every error is "
        'JSON `{"part": ..., "error": ...}`. When the server runs with `--token-file`, '
        "`/v1/*` need `Authorization: Bearer <token>`; health, metrics and the editor's "
        "files do not.",
    )
    pool = Pool(config.workers, config.queue, config.retry_after_s)
    metrics = Metrics()
    lifecycle = Lifecycle()
    limits = config.limits
    samples = list_samples(config.data) if config.data is not None else {}
    app.state.holder, app.state.pool, app.state.metrics = holder, pool, metrics
    app.state.lifecycle = lifecycle
    app.add_middleware(
        Front,
        metrics=metrics,
        lifecycle=lifecycle,
        max_bytes=limits.max_bytes,
        max_uploads=config.workers + config.queue,
        token=config.token,
        retry_after_s=config.retry_after_s,
        version=lambda: holder.engine.version,
        endpoint=endpoint_of,
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = _document(schema, config.token is not None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    api = (401, 500, 503) if config.token is not None else (500, 503)  # every /v1/* route

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(config.retry_after_s)} if exc.status == 503 else None
        return error_response(exc.status, exc.part, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        part = str(first["loc"][-1]) if first.get("loc") else "request"
        return error_response(422, part, f"{part}: {first['msg']}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code,
            "path",
            f"{request.url.path}: {exc.detail}",
            getattr(exc, "headers", None),
        )

    async def admitted(engine: Engine, fn: Any, request: Request) -> Any:
        """``fn(check)`` on a worker, timed (queue wait and model time, by model version),
        within the deadline; ``check()`` raises once the client has gone or the deadline
        has passed, so that a worker stops at its next step instead of finishing work
        nobody will read (a queued request of a departed client does no work at all)."""
        submitted = time.perf_counter()
        stop = threading.Event()

        def check() -> None:
            if stop.is_set():
                raise Abandoned()

        def timed() -> Any:
            began = time.perf_counter()
            metrics.queue_wait.labels(engine.version).observe(began - submitted)
            try:
                check()
                with engine.request():  # this request's whole work, for Engine.run
                    return fn(check)
            finally:
                metrics.model_time.labels(engine.version).observe(time.perf_counter() - began)

        async def watch() -> None:  # the client leaving: no one will read the answer
            while not stop.is_set():
                if await request.is_disconnected():
                    stop.set()
                    return
                await asyncio.sleep(WATCH_S)

        metrics.in_progress.inc()
        work = asyncio.ensure_future(pool.run(timed))
        watcher = asyncio.ensure_future(watch())
        try:
            return await asyncio.wait_for(asyncio.shield(work), limits.deadline_s)
        except TimeoutError:
            stop.set()  # the worker stops at its next step; its slot frees then
            raise ApiError(
                504, "server", f"deadline: not done within {limits.deadline_s:g} s (see /v1/limits)"
            ) from None
        except Abandoned:
            raise ApiError(499, "client", "client: went away before the answer") from None
        finally:
            stop.set()
            watcher.cancel()
            metrics.in_progress.dec()

    def maps(engine: Engine, label: bytes, instance: bytes | None):
        lab = read_label_png(label, "label", limits, engine.info.label_nc)
        if instance is None:
            if engine.info.use_instance_map:
                raise ApiError(400, "instance", "instance: this model uses instance maps: send one")
            return lab, None
        return lab, read_instance_png(instance, "instance", limits, lab.shape)

    @app.post(
        "/v1/generate",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the generated photo"},
            **_errors(400, 413, 422, *api, 504),
        },
        summary="Label map (+ instance map) -> photo (PNG, the label map's size)",
    )
    async def generate(
        request: Request,
        label: Annotated[UploadFile, File(description="8-bit PNG of label ids")],
        instance: Annotated[
            UploadFile | None, File(description="PNG of instance ids (models with instance maps)")
        ] = None,
        seed: Annotated[int, Form(ge=0, description="draws the instances' styles")] = 0,
        styles: Annotated[
            str | None, Form(description='JSON {"<instance id>": <cluster index>}')
        ] = None,
    ) -> Response:
        engine = holder.engine
        label_b = await label.read()
        inst_b = await instance.read() if instance is not None else None
        choice = _styles(_json_field(styles, "styles", {}))

        def work(check: Any) -> bytes:
            lab, inst = maps(engine, label_b, inst_b)
            _check_styles(engine, inst, choice)
            check()
            return png_bytes(engine.generate(lab, inst, seed, choice))

        png = await admitted(engine, work, request)
        return Response(png, media_type="image/png", headers={"X-Model-Version": engine.version})

    @app.post(
        "/v1/edit",
        response_model=EditResponse,
        responses=_errors(400, 413, 422, *api, 504),
        summary="Maps + an edit list (as `pix2pixhd edit`) -> before/after photos, edited maps",
        description='`edits` is the JSON of `pix2pixhd edit` ({"edits": [...]}); each '
        "`add` edit's mask is sent as a file part named by its `mask` value. Styles from "
        "reference photos need the feature encoder, which the ONNX model does not carry.",
    )
    async def edit(
        request: Request,
        response: Response,
        label: Annotated[UploadFile, File(description="8-bit PNG of label ids")],
        instance: Annotated[UploadFile, File(description="PNG of instance ids")],
        edits: Annotated[str, Form(description='JSON {"edits": [...]}')] = '{"edits": []}',
        seed: Annotated[int, Form(ge=0)] = 0,
        samples: Annotated[int, Form(ge=0, description="extra style draws")] = 0,
    ) -> EditResponse:
        engine = holder.engine
        response.headers["X-Model-Version"] = engine.version
        if samples > limits.max_samples:
            raise ApiError(413, "samples", f"samples: {samples}, above {limits.max_samples}")
        if samples and not engine.info.use_instance_features:
            raise ApiError(400, "samples", "samples: this model has no instance features")
        doc = _json_field(edits, "edits", None)
        count = len(doc.get("edits") or []) if isinstance(doc, dict) else 0
        if count > limits.max_edits:
            raise ApiError(413, "edits", f"edits: {count} edits, above {limits.max_edits}")
        form = await request.form()
        uploads = {
            k: await v.read()
            for k, v in form.multi_items()
            if k not in ("label", "instance") and hasattr(v, "read")
        }
        label_b, inst_b = await label.read(), await instance.read()

        def work(check: Any) -> EditResponse:
            lab, inst = maps(engine, label_b, inst_b)

            def load_mask(name: str) -> np.ndarray:
                if name not in uploads:
                    raise ApiError(
                        400, "edits", f"edits: mask {name!r}: send it as a file part named {name!r}"
                    )
                return read_mask_png(uploads[name], name, limits)

            def no_encoder(edit: dict) -> np.ndarray:
                raise InputError(
                    "edits: styles from reference photos need the feature encoder, which the "
                    "ONNX model does not carry: choose a 'cluster'"
                )

            try:
                res = apply_edits(
                    lab,
                    inst,
                    doc,
                    engine.info.label_nc,
                    load_mask,
                    engine.info.centres,
                    no_encoder,
                    check=check,
                )
            except InputError as exc:
                raise ApiError(400, "edits", str(exc)) from None
            check_instances(res.instance, "edits", limits)  # edits add instances too
            check()
            if res.instance.max(initial=0) > 65535:
                raise ApiError(400, "instance", "instance: ids above 65535 do not fit a PNG")
            before = engine.generate(lab, inst, seed)
            check()
            choice, override = res.cluster_choice, res.feature_override
            after = engine.generate(res.label, res.instance, seed, choice, override)
            extra = []
            for k in range(samples):
                check()
                more = engine.generate(res.label, res.instance, seed + 1 + k, choice, override)
                extra.append(_b64(more))
            return EditResponse(
                before=_b64(before),
                after=_b64(after),
                label=_b64(res.label.astype(np.uint8)),
                instance=_b64(res.instance.astype(np.uint16)),
                samples=extra,
                log=res.log,
                model_version=engine.version,
            )

        return await admitted(engine, work, request)

    @app.get(
        "/v1/limits",
        responses=_errors(*api),
        summary="What one request may ask: body bytes, map pixels, instance ids, edits, "
        "samples, the deadline, and how many requests are admitted at once",
    )
    def limits_route() -> dict[str, Any]:
        return {
            "max_bytes": limits.max_bytes,
            "max_pixels": limits.max_pixels,
            "max_instances": limits.max_instances,
            "max_edits": limits.max_edits,
            "max_samples": limits.max_samples,
            "deadline_s": limits.deadline_s,
            "admitted_at_once": config.workers + config.queue,
        }

    @app.get(
        "/v1/classes",
        responses=_errors(*api),
        summary="Label ids the model takes: names, colours, instances",
    )
    def classes() -> list[dict[str, Any]]:
        info = holder.engine.info
        return [
            {
                "id": lab.id,
                "name": lab.name,
                "color": list(lab.color),
                "has_instances": lab.has_instances,
                "clusters": len(info.centres.get(lab.id, ())),
            }
            for lab in LABELS
            if 0 <= lab.id < info.label_nc
        ]

    @app.get(
        "/v1/styles",
        responses=_errors(*api),
        summary="Cluster centres of instance features per class id",
    )
    def styles() -> dict[str, Any]:
        info = holder.engine.info
        return {
            "use_instance_features": info.use_instance_features,
            "feat_num": info.feat_num,
            "centres": info.styles(),
        }

    @app.get(
        "/v1/samples",
        responses=_errors(*api),
        summary="Samples of the --data dataset the editor can open",
    )
    def sample_list() -> list[str]:
        return list(samples)

    @app.get(
        "/v1/samples/{split}/{stem}/{role}",
        response_class=FileResponse,
        responses={
            200: {"content": {"image/png": {}}, "description": "the file"},
            **_errors(404, 422, *api),
        },
        summary="One file of a sample: role label, instance or image",
    )
    def sample_file(
        split: str, stem: str, role: Literal["label", "instance", "image"]
    ) -> FileResponse:
        files = samples.get(f"{split}/{stem}")
        if files is None or role not in files:
            raise ApiError(404, "path", f"no sample {split}/{stem} with a {role} file")
        return FileResponse(files[role], media_type="image/png")

    @app.get(
        "/healthz",
        responses=_errors(500),
        summary="Status: model, registry version, queue occupancy (200 while the process answers)",
        description="A status document for people and dashboards, kept for existing "
        "clients: `status` is `ok`, or `shutting down` once SIGTERM arrived. It answers 200 "
        "in both cases; probes use `/livez` (liveness) and `/readyz` (readiness).",
    )
    def healthz() -> dict[str, Any]:
        engine = holder.engine
        return {
            "status": "shutting down" if lifecycle.draining else "ok",
            "model": engine.source,
            "version": engine.version,
            "label_nc": engine.info.label_nc,
            "admitted": pool.admitted,
            "capacity": pool.capacity,
        }

    async def live() -> dict[str, Any]:
        return {"live": True}

    async def ready() -> Any:
        engine = holder.engine  # loaded before the server listens; swapped, never unset
        if lifecycle.draining:
            return error_response(
                503,
                "server",
                f"server: not ready: shutting down ({lifecycle.stopping_reason})",
                {"Retry-After": str(config.retry_after_s)},  # every 503 has it
            )
        return {"ready": True, "model_version": engine.version}

    live_doc = "Liveness: the process answers (no model work, no dependency)"
    ready_doc = "Readiness: the model is loaded and requests are admitted (503 once shutdown began)"
    app.get("/livez", responses=_errors(500), summary=live_doc)(live)
    app.get("/readyz", responses=_errors(500, 503), summary=ready_doc)(ready)
    for path, fn, doc, errs in (
        ("/v2/health/live", live, live_doc, (500,)),
        ("/v2/health/ready", ready, ready_doc, (500, 503)),
    ):  # the names of KServe's Open Inference Protocol
        app.get(path, responses=_errors(*errs), summary=doc + " (Open Inference Protocol)")(fn)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"},
            **_errors(500),
        },
        summary="Prometheus text",
    )
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
