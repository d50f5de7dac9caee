"""The pipeline's parameters: frozen dataclasses are the schema, params.yaml holds the
values, ``--set section.key=value`` overrides them. Unknown keys are errors naming the key.

Dataclass defaults are the paper's two-stage Cityscapes recipe; params.yaml holds the
small CPU demo configuration.

A leaf: this module imports only ``model.config``, ``model.errors`` and yaml (no torch,
no step module), so validating params and compiling the pipeline stay fast. Every
section's dataclass lives here or in ``model.config``; the steps import them from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.config import (
    DiscriminatorConfig,
    EncoderConfig,
    FeatureConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    check_number,
    from_dict,
)
from model.errors import ConfigError
from model.fileio import read_text


@dataclass(frozen=True)
class DataParams:
    num_train: int = 200
    num_val: int = 40
    width: int = 2048  # final (local stage) training size; the global stage uses half
    height: int = 1024
    seed: int = 0
    layout: str = "cityscapes"
    label_nc: int = 35
    use_instance_map: bool = True
    # training preprocessing, the reference's resize_or_crop: resize | resize_and_crop |
    # scale_width | scale_width_and_crop | crop | none (model.datasets.preprocess_size)
    preprocess: str = "resize"
    crop_size: int = 512  # square training crop of the *_crop modes (reference: fineSize)
    palette: str = ""  # "cityscapes" or a JSON file: colour label maps decoded to ids


@dataclass(frozen=True)
class ValidateParams:
    """Drift of a dataset from a training profile (``validate --reference``): a class's
    mean pixel frequency drifted when it is outside [f / ratio, f * ratio] of the training
    frequency f, more than min_delta away from it, and more than drift_z standard errors
    (the training per-sample sd / sqrt(new samples)) away from it."""

    drift_ratio: float = 1.5
    drift_min_delta: float = 0.01
    drift_z: float = 3.0


@dataclass(frozen=True)
class ModelParams:
    """The final generator (paper: local, ngf 32, whose global part has ngf 64) and the
    final discriminator (paper 1024p: 3 scales). The global stage uses the global part
    and num_D - n_local_enhancers scales."""

    use_instance_features: bool = False
    generator: GeneratorConfig = field(
        default_factory=lambda: GeneratorConfig(ngf=32, n_local_enhancers=1)
    )
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(num_D=3))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class SegmenterParams:
    backbone: str = "resnet50"  # resnet50 | resnet101 (published) | light (CPU)
    weights: str = ""  # a published semseg checkpoint; empty: train one here
    epochs: int = 50
    batch_size: int = 8
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    train_crop: int = 0  # square random training crops (author: 713); 0 = whole image
    crop: int = 0  # evaluation sliding window (author: 713); 0 = whole image
    flip: bool = False  # evaluation flip averaging

    def __post_init__(self) -> None:
        check_number("lr", self.lr, 0, low_open=True)
        check_number("batch_size", self.batch_size, 1)
        for name in ("epochs", "momentum", "weight_decay", "train_crop", "crop"):
            check_number(name, getattr(self, name), 0)


@dataclass(frozen=True)
class EvaluateParams:
    model_name: str = "pix2pixhd-generator"  # registered model in the MLflow registry
    batch_size: int = 4
    seed: int = 0  # cluster-centre draws for models with instance features
    samples: int = 4  # rows of the sample grid

    def __post_init__(self) -> None:
        check_number("batch_size", self.batch_size, 1)
        check_number("samples", self.samples, 1)


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "pix2pixhd"
    vgg_weights: str = ""  # torchvision vgg19-dcbb9e9d.pth (needed when loss.use_vgg_loss)
    # false: evaluate fails when the model cannot be registered; true: it records why
    # in registration.json (which promote refuses) and finishes
    optional: bool = False


@dataclass(frozen=True)
class PromoteParams:
    metric: str = "mean_iou"  # version tag compared (written by evaluate)
    min_delta: float = 0.0  # the candidate must beat the champion by at least this

    def __post_init__(self) -> None:
        check_number("min_delta", self.min_delta, 0)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    model: ModelParams = field(default_factory=ModelParams)
    train_global: TrainConfig = field(default_factory=TrainConfig)
    train_local: TrainConfig = field(
        default_factory=lambda: TrainConfig(niter=50, niter_decay=50, niter_fix_global=10)
    )
    features: FeatureConfig = field(default_factory=FeatureConfig)
    segmenter: SegmenterParams = field(default_factory=SegmenterParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    promote: PromoteParams = field(default_factory=PromoteParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)


def _set(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is not a section")
    node[parts[-1]] = value


def load_params(path: Path | None = None, overrides: Sequence[str] = ()) -> Params:
    """Params from a YAML file (only the sections it names) plus overrides."""
    if path is None:
        return params_from_text("", overrides)
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such params file")
    return params_from_text(read_text(path, "params file"), overrides, str(path))


def params_from_text(text: str, overrides: Sequence[str] = (), source: str = "params") -> Params:
    """Params from YAML text (how the Kubeflow steps receive params.yaml) + overrides."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections")
    for assignment in overrides:
        _set(tree, assignment)
    return from_dict(Params, tree)


def stage_model_config(params: Params, stage: str) -> ModelConfig:
    """The model of a training stage, channel counts derived from the data section."""
    m, d = params.model, params.data
    g, disc = m.generator, m.discriminator
    if stage == "global" and g.n_local_enhancers > 0:
        g = dataclasses.replace(g, ngf=g.ngf * 2**g.n_local_enhancers, n_local_enhancers=0)
        n_local = m.generator.n_local_enhancers
        disc = dataclasses.replace(disc, num_D=max(1, disc.num_D - n_local))
    return ModelConfig(
        label_nc=d.label_nc,
        use_instance_map=d.use_instance_map,
        use_instance_features=m.use_instance_features,
        generator=g,
        discriminator=disc,
        encoder=m.encoder,
        loss=m.loss,
    )


def stage_size(params: Params, stage: str) -> tuple[int, int]:
    """(width, height) of a stage: the global stage trains at 1 / 2**n_local_enhancers."""
    scale = 2**params.model.generator.n_local_enhancers if stage == "global" else 1
    w, h = params.data.width // scale, params.data.height // scale
    return w, h


def stage_crop(params: Params, stage: str) -> tuple[int, int] | None:
    """(h, w) of a stage's training crop, scaled like its size; None without cropping."""
    if "crop" not in params.data.preprocess:
        return None
    scale = 2**params.model.generator.n_local_enhancers if stage == "global" else 1
    side = params.data.crop_size // scale
    return side, side


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclass/dict -> {"a.b.c": value} (for MLflow params)."""
    tree = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
