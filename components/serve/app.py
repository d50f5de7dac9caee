"""The HTTP API (FastAPI, OpenAPI docs at /docs) and the static web editor at /.

Model work (decoding, editing, generating, encoding) runs on a bounded thread pool;
requests past ``workers + queue`` are answered 503 with Retry-After, never queued without
bound. Bodies above ``max_bytes`` and maps above ``max_pixels`` are answered 413. Client
errors are JSON ``{"part": ..., "error": ...}`` naming the request part and what was
expected. The engine is swapped atomically on reload: a request keeps the engine it
started with, so a reload drops nothing in flight.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
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
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.serve.engine import Engine
from components.serve.maps import (
    ApiError,
    Limits,
    list_samples,
    png_bytes,
    read_instance_png,
    read_label_png,
    read_mask_png,
)
from model.editing import apply_edits
from model.errors import InputError
from model.labels import LABELS
from model.model_contract import class_of

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ROUTES = (
    "/v1/generate",
    "/v1/edit",
    "/v1/classes",
    "/v1/styles",
    "/v1/samples",
    "/healthz",
    "/metrics",
)


@dataclass(frozen=True)
class ServeConfig:
    workers: int = 2  # model calls at once
    queue: int = 8  # requests waiting for a worker; more are answered 503
    retry_after_s: int = 1
    limits: Limits = field(default_factory=Limits)
    data: Path | None = None  # dataset whose samples the editor lists


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
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
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
        self.in_progress = Gauge(
            "pix2pixhd_requests_admitted", "model requests running or queued", registry=r
        )
        self.reloads = Counter("pix2pixhd_model_reloads", "model reloads", registry=r)


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
    present = set() if instance is None else set(np.unique(instance).tolist())
    for inst, k in styles.items():
        cls = class_of(inst)
        n = len(engine.info.centres.get(cls, ()))
        if inst not in present:
            raise ApiError(400, "styles", f"styles: instance {inst} is not in the instance map")
        if not 0 <= k < n:
            raise ApiError(
                400, "styles", f"styles: cluster {k} of instance {inst}: class {cls} has {n}"
            )


def create_app(holder: ModelHolder, config: ServeConfig = ServeConfig()) -> FastAPI:
    app = FastAPI(
        title="pix2pixHD",
        version="1",
        description="Label maps to photos (pix2pixHD, Wang et al. 2018) on ONNX Runtime; "
        "semantic editing as in `pix2pixhd edit`. The web editor is at `/`.",
    )
    pool = Pool(config.workers, config.queue, config.retry_after_s)
    metrics = Metrics()
    limits = config.limits
    samples = list_samples(config.data) if config.data is not None else {}
    app.state.holder, app.state.pool, app.state.metrics = holder, pool, metrics

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(config.retry_after_s)} if exc.status == 503 else None
        return JSONResponse({"part": exc.part, "error": exc.message}, exc.status, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        part = str(first["loc"][-1]) if first.get("loc") else "request"
        return JSONResponse({"part": part, "error": f"{part}: {first['msg']}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"part": "path", "error": f"{request.url.path}: {exc.detail}"},
            exc.status_code,
            getattr(exc, "headers", None),
        )

    @app.middleware("http")
    async def _limit_and_measure(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        path = request.url.path
        endpoint = next((r for r in ROUTES if path == r or path.startswith(r + "/")), "other")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_bytes:
            response: Response = JSONResponse(
                {
                    "part": "body",
                    "error": f"body: {size} bytes, above the limit of {limits.max_bytes}",
                },
                413,
            )
        elif size is None and request.method == "POST":
            body = b""
            async for chunk in request.stream():  # chunked: count while reading
                body += chunk
                if len(body) > limits.max_bytes:
                    break
            if len(body) > limits.max_bytes:
                response = JSONResponse(
                    {"part": "body", "error": f"body: above the limit of {limits.max_bytes} bytes"},
                    413,
                )
            else:
                request._body = body  # replayed to the form parser
                response = await call_next(request)
        else:
            response = await call_next(request)
        status = str(response.status_code)
        metrics.requests.labels(endpoint, status).inc()
        if response.status_code >= 400:
            metrics.errors.labels(endpoint, status).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    async def admitted(fn: Any, *args: Any) -> Any:
        metrics.in_progress.inc()
        try:
            return await pool.run(fn, *args)
        finally:
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
        responses={200: {"content": {"image/png": {}}, "description": "the generated photo"}},
        summary="Label map (+ instance map) -> photo (PNG, the label map's size)",
    )
    async def generate(
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

        def work() -> bytes:
            lab, inst = maps(engine, label_b, inst_b)
            _check_styles(engine, inst, choice)
            return png_bytes(engine.generate(lab, inst, seed, choice))

        png = await admitted(work)
        return Response(png, media_type="image/png", headers={"X-Model-Version": engine.version})

    @app.post(
        "/v1/edit",
        response_model=EditResponse,
        summary="Maps + an edit list (as `pix2pixhd edit`) -> before/after photos, edited maps",
        description='`edits` is the JSON of `pix2pixhd edit` ({"edits": [...]}); each '
        "`add` edit's mask is sent as a file part named by its `mask` value. Styles from "
        "reference photos need the feature encoder, which the ONNX model does not carry.",
    )
    async def edit(
        request: Request,
        label: Annotated[UploadFile, File(description="8-bit PNG of label ids")],
        instance: Annotated[UploadFile, File(description="PNG of instance ids")],
        edits: Annotated[str, Form(description='JSON {"edits": [...]}')] = '{"edits": []}',
        seed: Annotated[int, Form(ge=0)] = 0,
        samples: Annotated[int, Form(ge=0, description="extra style draws")] = 0,
    ) -> EditResponse:
        engine = holder.engine
        if samples > limits.max_samples:
            raise ApiError(413, "samples", f"samples: {samples}, above {limits.max_samples}")
        if samples and not engine.info.use_instance_features:
            raise ApiError(400, "samples", "samples: this model has no instance features")
        doc = _json_field(edits, "edits", None)
        form = await request.form()
        uploads = {
            k: await v.read()
            for k, v in form.multi_items()
            if k not in ("label", "instance") and hasattr(v, "read")
        }
        label_b, inst_b = await label.read(), await instance.read()

        def work() -> EditResponse:
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
                    lab, inst, doc, engine.info.label_nc, load_mask, engine.info.centres, no_encoder
                )
            except InputError as exc:
                raise ApiError(400, "edits", str(exc)) from None
            if res.instance.max(initial=0) > 65535:
                raise ApiError(400, "instance", "instance: ids above 65535 do not fit a PNG")
            before = engine.generate(lab, inst, seed)
            choice, override = res.cluster_choice, res.feature_override
            after = engine.generate(res.label, res.instance, seed, choice, override)
            extra = [
                _b64(engine.generate(res.label, res.instance, seed + 1 + k, choice, override))
                for k in range(samples)
            ]
            return EditResponse(
                before=_b64(before),
                after=_b64(after),
                label=_b64(res.label.astype(np.uint8)),
                instance=_b64(res.instance.astype(np.uint16)),
                samples=extra,
                log=res.log,
                model_version=engine.version,
            )

        return await admitted(work)

    @app.get("/v1/classes", summary="Label ids the model takes: names, colours, instances")
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

    @app.get("/v1/styles", summary="Cluster centres of instance features per class id")
    def styles() -> dict[str, Any]:
        info = holder.engine.info
        return {
            "use_instance_features": info.use_instance_features,
            "feat_num": info.feat_num,
            "centres": info.styles(),
        }

    @app.get("/v1/samples", summary="Samples of the --data dataset the editor can open")
    def sample_list() -> list[str]:
        return list(samples)

    @app.get(
        "/v1/samples/{split}/{stem}/{role}",
        response_class=FileResponse,
        summary="One file of a sample: role label, instance or image",
    )
    def sample_file(split: str, stem: str, role: str) -> FileResponse:
        files = samples.get(f"{split}/{stem}")
        if files is None or role not in files:
            raise ApiError(404, "path", f"no sample {split}/{stem} with a {role} file")
        return FileResponse(files[role], media_type="image/png")

    @app.get("/healthz", summary="Ready: a model is loaded")
    def healthz() -> dict[str, Any]:
        engine = holder.engine
        return {
            "status": "ok",
            "model": engine.source,
            "version": engine.version,
            "label_nc": engine.info.label_nc,
            "admitted": pool.admitted,
            "capacity": pool.capacity,
        }

    @app.get("/metrics", response_class=Response, summary="Prometheus text")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
