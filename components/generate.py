"""Step `generate`: label maps (+ instance maps, + photos for encoded features) -> PNGs.

Output files keep the input stems, at native size: inputs whose size the generator
cannot take are padded (edge replication) to the next valid size and cropped back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.engine import ENGINES, Engine, NotExportable, cached_onnx
from components.signature import PositiveInt
from model.checkpoint import build_model, load_checkpoint
from model.device import resolve_device
from model.errors import ConfigError, InputError
from model.fileio import prepare_out_dir, write_json
from model.image_io import (
    index_by_stem,
    label_to_tensor,
    list_role,
    read_instance,
    read_label,
    read_rgb,
    rgb_to_tensor,
    tensor_to_rgb,
    write_png,
)
from model.model_contract import ModelInfo, draw_batch_features, onnx_feeds, pad_to
from model.pix2pixhd import Pix2PixHD
from model.progress import progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    stem: str
    label: Path
    instance: Path | None
    image: Path | None


def pair_inputs(
    labels: Path, instances: Path | None, images: Path | None, need_instances: bool
) -> list[Sample]:
    """Pair files by stem. Every label needs its instance map (and photo, when given)."""
    label_files = index_by_stem(list_role(labels, "label"), "label")
    if not label_files:
        raise InputError(f"{labels}: no label images found")
    inst_files = index_by_stem(list_role(instances, "instance"), "instance") if instances else {}
    image_files = index_by_stem(list_role(images, "image"), "image") if images else {}
    if need_instances and instances is None:
        raise InputError("this model uses instance maps: pass --instances DIR")
    samples = []
    for stem, label in sorted(label_files.items()):
        inst = inst_files.get(stem) if instances else None
        if instances and inst is None:
            raise InputError(f"{label}: no instance map with stem '{stem}' in {instances}")
        img = image_files.get(stem) if images else None
        if images and img is None:
            raise InputError(f"{label}: no photo with stem '{stem}' in {images}")
        samples.append(Sample(stem, label, inst, img))
    return samples


def _same_size(t: torch.Tensor, path: Path, label: torch.Tensor, label_path: Path) -> torch.Tensor:
    if t.shape[-2:] != label.shape[-2:]:
        raise InputError(
            f"{path}: size {tuple(t.shape[-2:])} differs from its label map "
            f"{label_path} {tuple(label.shape[-2:])}"
        )
    return t


def _load(sample: Sample, label_nc: int) -> dict[str, torch.Tensor]:
    if label_nc > 0:
        label = label_to_tensor(read_label(sample.label))
    else:
        label = rgb_to_tensor(read_rgb(sample.label))
    out = {"label": label}
    if sample.instance is not None:
        out["instance"] = _same_size(
            label_to_tensor(read_instance(sample.instance)), sample.instance, label, sample.label
        )
    if sample.image is not None:
        out["image"] = _same_size(
            rgb_to_tensor(read_rgb(sample.image)), sample.image, label, sample.label
        )
    return out


@dataclass
class Generator:
    """What generation needs from a model: PyTorch (a checkpoint), ONNX Runtime or an
    MLflow pyfunc model. ``info`` is the model's contract (``model.model_contract``)."""

    info: ModelInfo
    fn: Callable[..., torch.Tensor]  # (label, instance, image, features) -> image
    device: torch.device  # where input tensors go
    engine: str = "torch"  # torch | onnx | mlflow-pyfunc
    where: str = "cpu"  # what runs it: a torch device, or onnxruntime's provider

    @property
    def label_nc(self) -> int:
        return self.info.label_nc

    @property
    def use_instance_map(self) -> bool:
        return self.info.use_instance_map

    @property
    def use_instance_features(self) -> bool:
        return self.info.use_instance_features

    @property
    def feat_num(self) -> int:
        return self.info.feat_num

    @property
    def size_multiple(self) -> int:
        return self.info.size_multiple

    @property
    def centres(self) -> Mapping[int, np.ndarray]:
        return self.info.centres

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> Generator:
        ckpt = load_checkpoint(path)
        return cls.from_model(build_model(ckpt), ckpt.get("cluster_centers"), device)

    @classmethod
    def from_model(
        cls, model: Pix2PixHD, cluster_centers: dict | None, device: torch.device
    ) -> Generator:
        model = model.eval().to(device)
        cfg = model.cfg

        def fn(label, inst, image, features):
            autocast = torch.autocast(
                device.type, dtype=torch.float16, enabled=device.type == "cuda"
            )
            with autocast:
                return model.generate(label, inst, image=image, features=features).float()

        info = ModelInfo(
            label_nc=cfg.label_nc,
            use_instance_map=cfg.use_instance_map,
            use_instance_features=cfg.use_instance_features,
            feat_num=cfg.encoder.feat_num,
            size_multiple=cfg.generator.size_multiple,
            centres={
                int(k): torch.as_tensor(v).float().numpy().reshape(len(v), -1)
                for k, v in (cluster_centers or {}).items()
            },
        )
        return cls(info, fn, device, engine="torch", where=str(device))

    @classmethod
    def from_onnx(cls, path: Path, device: str = "cpu", threads: int | None = None) -> Generator:
        from components.onnx_session import make_session

        session = make_session(path, device, threads)
        info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, path)

        def fn(label, inst, image, features):
            if image is not None:
                raise InputError(
                    "ONNX models cannot encode features from photos: drop "
                    "--images (features come from the cluster centres)"
                )
            feeds = onnx_feeds(
                info,
                label.numpy(),
                None if inst is None else inst.numpy(),
                None if features is None else features.numpy(),
            )
            return torch.from_numpy(session.run(None, feeds)[0])

        return cls(info, fn, torch.device("cpu"), engine="onnx", where=session.get_providers()[0])

    @classmethod
    def from_mlflow(cls, uri: str) -> Generator:
        """A registered or logged pyfunc model (``models:/NAME@champion``, ``runs:/...``):
        MLflow loads it and its ONNX graph predicts (components.pyfunc_model)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            loaded = mlflow.pyfunc.load_model(uri)
            wrapper = loaded.unwrap_python_model()
        except (MlflowException, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{uri}: not a loadable MLflow model: {first}") from None
        if not isinstance(getattr(wrapper, "info", None), ModelInfo):
            raise InputError(f"{uri}: not a generator logged by `pix2pixhd export`")

        def fn(label, inst, image, features):
            if image is not None:
                raise InputError(
                    "MLflow models cannot encode features from photos: drop --images "
                    "(features come from the cluster centres)"
                )
            feeds = {"label": label.numpy()}
            if inst is not None:
                feeds["instance"] = inst.numpy()
            if features is not None:
                feeds["features"] = features.numpy().astype(np.float32)
            # the python model itself: explicit features pass (the signature only
            # declares the maps; pyfunc's schema check would drop them)
            return torch.from_numpy(wrapper.predict(None, feeds))

        return cls(
            wrapper.info,
            fn,
            torch.device("cpu"),
            engine="mlflow-pyfunc",
            where=wrapper.session.get_providers()[0],
        )


def generate_batch(
    gen: Generator, batch: list[dict[str, torch.Tensor]], seed: int = 0
) -> list[torch.Tensor]:
    """Generate one batch of same-size samples at their native size (edge-padded to the
    graph's size and cropped back, ``model.model_contract``). A sample's ``features``
    (feat_num x H x W) are used as given; otherwise they are encoded from its ``image``,
    else drawn from the cluster centres by ``seed`` and each instance id."""
    h, w = batch[0]["label"].shape[-2:]
    size = gen.info.graph_size(h, w)

    def stack(key: str) -> np.ndarray | None:
        if key not in batch[0]:
            return None
        return torch.stack([b[key] for b in batch]).cpu().numpy()

    label, inst, image = stack("label"), stack("instance"), stack("image")
    features = stack("features")
    if gen.use_instance_features and image is None and features is None:
        features = draw_batch_features(inst, gen.centres, gen.feat_num, seed)

    def padded(x: np.ndarray | None) -> torch.Tensor | None:
        return None if x is None else torch.from_numpy(pad_to(x, *size)).to(gen.device)

    fake = gen.fn(padded(label), padded(inst), padded(image), padded(features))
    return [f[:, :h, :w].float().cpu() for f in fake]


def run(
    checkpoint: Path | None,
    labels: Path,
    out: Path,
    instances: Path | None = None,
    images: Path | None = None,
    batch_size: PositiveInt = 4,
    device: str = "auto",
    seed: int = 0,
    onnx: Path | None = None,
    engine: Engine = "auto",
    model: str | None = None,
) -> dict[str, Any]:
    """Generate photos from label maps with a checkpoint, an ONNX model or an MLflow model.

    Generate one PNG per label map into ``out`` with a checkpoint or an exported ONNX
    model, in ONNX Runtime (default; a checkpoint's graph is exported once and cached)
    or PyTorch (``engine="torch"``; see ``components.engine``), or with an MLflow model
    URI (``models:/NAME@champion``: the registered pyfunc model); returns and writes a
    summary.

    Args:
        checkpoint: a checkpoint (or None with ``onnx`` or ``model``).
        labels: a directory of label-id PNGs.
        out: the output directory (one PNG per label map, same stem).
        instances: a directory of instance-id PNGs (models with instance maps).
        images: photos to encode instance features from (else cluster centres).
        batch_size: label maps per batch.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: the cluster-centre draws (feature models).
        onnx: an exported model instead of a checkpoint.
        engine: ``auto``, ``onnx`` or ``torch``.
        model: an MLflow model URI instead of a checkpoint.
    """

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: expected an integer >= 1")
    resolve_device(device)  # checks the value before any work
    prepare_out_dir(out)
    if model is not None:
        if checkpoint is not None or onnx is not None:
            raise InputError("give exactly one of --checkpoint, --onnx and --model")
        gen = Generator.from_mlflow(model)
    else:
        gen = load_generator(checkpoint, onnx, engine, device, encode_photos=images is not None)
    if gen.use_instance_features and images is None and not gen.centres:
        raise InputError(
            "this model uses instance features: pass --images DIR with the photos to encode "
            "them from, or run `pix2pixhd features` to add cluster centres to the checkpoint"
        )
    samples = pair_inputs(
        labels,
        instances if gen.use_instance_map else None,
        images if gen.use_instance_features else None,
        need_instances=gen.use_instance_map,
    )
    start = time.perf_counter()
    pending: list[tuple[Sample, dict[str, torch.Tensor]]] = []

    def flush() -> None:
        fakes = generate_batch(gen, [t for _, t in pending], seed)
        for (sample, _), fake in zip(pending, fakes, strict=True):
            write_png(out / f"{sample.stem}.png", tensor_to_rgb(fake))
        pending.clear()

    for sample in progress(samples, desc="generate", unit="img"):
        tensors = _load(sample, gen.label_nc)
        if pending and tensors["label"].shape != pending[0][1]["label"].shape:
            flush()
        pending.append((sample, tensors))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    seconds = time.perf_counter() - start
    summary = {
        "images": len(samples),
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / len(samples), 4),
        "device": gen.where,
        "engine": gen.engine,
        "runtime": "pytorch" if gen.engine == "torch" else "onnxruntime",
    }
    write_json(out / "generate_summary.json", summary)
    log.info(
        "generated %d images into %s (%.2f s/image)",
        len(samples),
        out,
        summary["seconds_per_image"],
    )
    return summary


def choose(engine: str, *, onnx: Path | None, device: str, encode_photos: bool = False) -> str:
    """Resolve ``engine`` (auto | onnx | torch) to ``onnx`` or ``torch`` for this work
    (what the model itself allows is checked when its graph is made)."""
    import onnxruntime as ort

    if engine not in ENGINES:
        raise InputError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if onnx is not None:
        if engine == "torch":
            raise InputError("--engine torch needs --checkpoint (an ONNX file runs in onnxruntime)")
        return "onnx"
    if engine == "torch":
        return "torch"
    why_not = None
    if encode_photos:
        why_not = "features encoded from photos need the encoder, which is not in the graph"
    elif device.startswith("cuda") and "CUDAExecutionProvider" not in ort.get_available_providers():
        why_not = "onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
    if why_not is None:
        return "onnx"
    if engine == "onnx":
        raise InputError(f"--engine onnx: {why_not}; use --engine torch")
    log.info("engine auto: PyTorch (%s)", why_not)
    return "torch"


def load_generator(
    checkpoint: Path | None = None,
    onnx: Path | None = None,
    engine: Engine = "auto",
    device: str = "auto",
    encode_photos: bool = False,
    threads: int | None = None,
) -> Generator:
    """A ready ``components.generate.Generator`` for a checkpoint or an ONNX file.

    ``encode_photos``: the caller will pass photos to encode instance features from
    (needs PyTorch). The engine that runs is ``gen.engine`` (``onnx`` or ``torch``)."""
    if (checkpoint is None) == (onnx is None):
        raise InputError("give exactly one of --checkpoint and --onnx")
    dev = resolve_device(device)
    chosen = choose(engine, onnx=onnx, device=dev.type, encode_photos=encode_photos)
    if chosen == "onnx":
        try:
            path = onnx if onnx is not None else cached_onnx(checkpoint)
        except NotExportable as exc:
            if engine == "onnx":
                raise
            log.info("engine auto: PyTorch (%s)", exc)
        else:
            return Generator.from_onnx(path, device=dev.type, threads=threads)
    return Generator.from_checkpoint(checkpoint, dev)
