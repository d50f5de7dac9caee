"""What `serve --model` names, as a local ONNX file: an ONNX file as is, a checkpoint
exported once (``components.engine.cached_onnx``: cached by content hash), or a registered
version ``models:/<name>@<alias>`` (or ``models:/<name>/<version>``), downloaded once."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.engine import cached_onnx  # torch is imported only when it exports
from model.errors import InputError

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/([^/@]+)(?:@([\w-]+)|/(\d+))$")


@dataclass(frozen=True)
class Resolved:
    onnx: Path
    version: str  # registry version, else "" (a file)


#: where the registered pyfunc model keeps its graph (components.export logs it there)
PYFUNC_ONNX = "artifacts/model.onnx"


def cache_root() -> Path:
    root = os.environ.get("PIX2PIXHD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "pix2pixhd") / "serve"


def registered(text: str) -> tuple[str, str | None, str | None] | None:
    """``models:/name@alias`` -> (name, alias, None); ``models:/name/3`` -> (name, None, "3")."""
    match = _MODEL_URI.match(text)
    if text.startswith("models:/") and match is None:
        raise InputError(f"--model {text}: expected models:/<name>@<alias> or models:/<name>/<n>")
    return match.groups() if match else None  # type: ignore[return-value]


def _onnx_in(directory: Path) -> Path | None:
    """The fp32 ONNX graph under a downloaded model directory (the fp16 copy is for GPUs)."""
    found = sorted(
        (p for p in Path(directory).rglob("*.onnx") if not p.stem.endswith("_fp16")),
        key=lambda p: (len(p.parts), str(p)),
    )
    return found[0] if found else None


def registered_version(name: str, alias: str | None, version: str | None, tracking_uri: str | None):
    """The registry's model version behind an alias (or a version number)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        what = f"@{alias}" if alias is not None else f"/{version}"
        raise InputError(f"models:/{name}{what}: {exc.message}") from None


def registered_onnx(
    name: str,
    alias: str | None,
    version: str | None = None,
    tracking_uri: str | None = None,
    cache: Path | None = None,
) -> Resolved:
    """A registered version's ONNX graph as a local file. A version is either an MLflow
    model whose artifacts hold the ONNX graph (pyfunc or onnx flavour), or a directory
    holding the checkpoint whose ONNX model the version tag ``onnx_model`` names (the
    `export` step's link); failing both, its checkpoint is exported here."""
    import mlflow

    mv = registered_version(name, alias, version, tracking_uri)
    root = cache or cache_root()
    # keyed by the store and the version's run too: version 1 of another tracking server
    # (or of a re-created model) is another model
    from components.tracking import resolve_uri

    store = hashlib.sha256(f"{resolve_uri(tracking_uri)} {mv.run_id}".encode()).hexdigest()[:16]
    dest = root / "registry" / store / re.sub(r"\W", "_", name) / str(mv.version)
    if not dest.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:

            def fetch(uri: str, sub: str) -> Path:
                return Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=uri,
                        dst_path=str(tmp / sub),
                        tracking_uri=tracking_uri,
                        registry_uri=tracking_uri,
                    )
                )

            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            source = client.get_model_version_download_uri(name, mv.version)
            try:  # the pyfunc model's graph alone: serving downloads only what it serves
                fetch(f"{source}/{PYFUNC_ONNX}", "version")
            except Exception:  # another layout (an onnx flavour, a checkpoint): all of it
                fetch(source, "version")
            if _onnx_in(tmp / "version") is None and mv.tags.get("onnx_model"):
                fetch(mv.tags["onnx_model"], "onnx")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    found = _onnx_in(dest)
    if found is None:
        checkpoints = sorted(dest.rglob("*.pth"))
        if not checkpoints:
            raise InputError(
                f"models:/{name} version {mv.version}: neither an ONNX graph nor a checkpoint "
                "among its artifacts"
            )
        found = cached_onnx(checkpoints[0])
    log.info("models:/%s version %s -> %s", name, mv.version, found)
    return Resolved(found, str(mv.version))


def resolve(model: str, tracking_uri: str | None = None, cache: Path | None = None) -> Resolved:
    """``--model``: a checkpoint, an ONNX file or a registered model URI -> ONNX file."""
    reg = registered(model)
    if reg is not None:
        return registered_onnx(*reg, tracking_uri=tracking_uri, cache=cache)
    path = Path(model)
    if not path.is_file():
        raise InputError(
            f"--model {model}: no such file (a checkpoint, an .onnx file or models:/...)"
        )
    if path.suffix.lower() == ".onnx":
        return Resolved(path, "")
    return Resolved(cached_onnx(path), "")
