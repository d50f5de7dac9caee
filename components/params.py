"""The pipeline's parameters: frozen dataclasses are the schema, params.yaml holds the
values, ``--set section.key=value`` overrides them. Unknown keys are errors naming the key.

Dataclass defaults are the paper's two-stage Cityscapes recipe; params.yaml holds the
small CPU demo configuration. A variant (params.quality.yaml, params.cityscapes.yaml)
names its base with a top-level ``extends: params.yaml`` (a path relative to the
variant) and lists only what differs from it: ``load_params`` deep-merges the chain,
base first; ``resolved_yaml`` gives the merged params as one self-contained YAML text
(what the pipeline compiler bakes in, and what a DVC run writes over params.yaml).
Field meanings are the comments beside (or above) each field, rendered to docs/params.md
by ``components.params_doc``.

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
    LayoutOrAuto,
    LossConfig,
    ModelConfig,
    Preprocess,
    TrainConfig,
    check_number,
    from_dict,
)
from model.errors import ConfigError
from model.fileio import load_yaml, read_text

#: the largest image side, and pixels of one image, the pipeline takes (paper: 2048x1024)
MAX_SIDE = 16384
MAX_PIXELS = 2**26


@dataclass(frozen=True)
class DataParams:
    """The dataset: the synthetic one ``data synth`` renders, and how any dataset is read
    and sized for training."""

    num_train: int = 200  # training samples data synth renders
    num_val: int = 40  # validation samples data synth renders
    # image width: data synth renders it, the final (local) stage and the segmenter train
    # at it; the global stage trains at width / 2^n_local_enhancers
    width: int = 2048
    height: int = 1024  # image height (as width)
    seed: int = 0  # the synthetic scenes' random draws
    layout: LayoutOrAuto = "auto"  # dataset directory layout (auto: detected from the folders)
    label_nc: int = 35  # label ids 0 .. label_nc - 1, one-hot encoded; 0: RGB label images
    use_instance_map: bool = True  # instance maps' boundaries as an extra input channel
    # training preprocessing, the reference's resize_or_crop: resize | resize_and_crop |
    # scale_width | scale_width_and_crop | crop | none (model.datasets.preprocess_size)
    preprocess: Preprocess = "resize"
    crop_size: int = 512  # square training crop of the *_crop modes (reference: fineSize)
    palette: str = ""  # "cityscapes" or a JSON file: colour label maps decoded to ids

    def __post_init__(self) -> None:
        for name in ("width", "height"):  # a budget before anything is allocated
            value = getattr(self, name)
            if not 1 <= value <= MAX_SIDE:
                raise ConfigError(
                    f"data.{name} {value}: expected 1 .. {MAX_SIDE} pixels (the largest side "
                    "this pipeline renders or trains at)"
                )
        if self.width * self.height > MAX_PIXELS:
            raise ConfigError(
                f"data.width x data.height = {self.width * self.height} pixels: more than "
                f"{MAX_PIXELS} (the budget of one image)"
            )
        check_number("data.crop_size", self.crop_size, 1)


@dataclass(frozen=True)
class ValidateParams:
    """Drift of a dataset from a training profile (``validate --reference``): a class's
    mean pixel frequency drifted when it is outside [f / ratio, f * ratio] of the training
    frequency f, more than min_delta away from it, and more than drift_z standard errors
    (the training per-sample sd / sqrt(new samples)) away from it."""

    drift_ratio: float = 1.5  # drifted when outside [f / drift_ratio, f * drift_ratio]
    drift_min_delta: float = 0.01  # and more than this (a fraction of the pixels) away from f
    drift_z: float = 3.0  # and more than this many standard errors away from f

    def __post_init__(self) -> None:
        check_number("validate.drift_ratio", self.drift_ratio, 1)
        check_number("validate.drift_min_delta", self.drift_min_delta, 0, high=1, high_open=False)
        check_number("validate.drift_z", self.drift_z, 0)


@dataclass(frozen=True)
class ModelParams:
    """The final generator (paper: local, ngf 32, whose global part has ngf 64) and the
    final discriminator (paper 1024p: 3 scales). The global stage uses the global part
    and num_D - n_local_enhancers scales."""

    # train the instance-feature encoder E, whose per-instance features (clustered by the
    # features step) are extra generator inputs: multi-modal synthesis and editing
    use_instance_features: bool = False
    generator: GeneratorConfig = field(
        default_factory=lambda: GeneratorConfig(ngf=32, n_local_enhancers=1)
    )
    discriminator: DiscriminatorConfig = field(default_factory=lambda: DiscriminatorConfig(num_D=3))
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass(frozen=True)
class SegmenterParams:
    """The frozen PSPNet that scores generated images (the paper's semantic metric):
    published weights, or one trained here on the real photos (SGD, poly lr)."""

    backbone: str = "resnet50"  # resnet50 | resnet101 (published) | light (CPU)
    weights: str = ""  # a published semseg checkpoint; empty: train one here
    epochs: int = 50  # training epochs (only without weights)
    batch_size: int = 8  # training batch size
    lr: float = 0.01  # initial SGD learning rate (poly decay, power 0.9)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay
    seed: int = 0  # initialisation, shuffling, crop and flip draws
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
    """Scoring a generator on the val split: segmentation of generated images (mIoU,
    pixel accuracy), FID/KID, sample grid."""

    model_name: str = "pix2pixhd-generator"  # registered model in the MLflow registry
    batch_size: int = 4  # val images generated and scored per batch
    seed: int = 0  # cluster-centre draws for models with instance features
    samples: int = 4  # rows of the sample grid
    # bootstrap resamples of the val images for the scores' intervals (0: no intervals)
    bootstrap: int = 1000
    confidence: float = 0.95  # level of those intervals (two-sided, percentile bootstrap)

    def __post_init__(self) -> None:
        check_number("batch_size", self.batch_size, 1)
        check_number("samples", self.samples, 1)
        check_number("evaluate.bootstrap", self.bootstrap, 0)
        check_number("evaluate.confidence", self.confidence, 0, low_open=True, high=1)


@dataclass(frozen=True)
class TrackingParams:
    """MLflow tracking, and where the VGG weights come from."""

    experiment: str = "pix2pixhd"  # MLflow experiment of the runs
    # torchvision's vgg19-dcbb9e9d.pth, a path or s3:// URI (needed when
    # model.loss.use_vgg_loss)
    vgg_weights: str = ""
    # false: export fails when the evaluated model cannot be registered in MLflow; true:
    # it records why in registration.json (which promote refuses) and finishes
    optional: bool = False


@dataclass(frozen=True)
class PromoteParams:
    """Promotion of the registered candidate over the champion."""

    metric: str = "mean_iou"  # version tag compared (written by evaluate)
    min_delta: float = 0.0  # the candidate must beat the champion by at least this
    # the gate: the paired bootstrap interval of (candidate - champion) mean IoU on the
    # same val images, at this two-sided level, must lie above min_delta
    confidence: float = 0.95
    bootstrap: int = 1000  # resamples of that interval
    # the spread of mean IoU between training seeds of one configuration (bench/band.py):
    # the paired interval covers the val images' sampling, not training noise, so the
    # candidate must clear min_delta + seed_margin (0: no training noise assumed)
    seed_margin: float = 0.0

    def __post_init__(self) -> None:
        check_number("min_delta", self.min_delta, 0)
        check_number("promote.confidence", self.confidence, 0, low_open=True, high=1)
        check_number("promote.bootstrap", self.bootstrap, 1)
        check_number("promote.seed_margin", self.seed_margin, 0)


@dataclass(frozen=True)
class Params:
    """Every section of a params file."""

    data: DataParams = field(default_factory=DataParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    model: ModelParams = field(default_factory=ModelParams)
    # stage 1: the global generator (model.generator's global part) at half size
    # (1 / 2^n_local_enhancers) with num_D - n_local_enhancers scales; paper 100 + 100 epochs
    train_global: TrainConfig = field(default_factory=TrainConfig)
    # stage 2: the whole generator at full size, initialised from stage 1, the global
    # part frozen for niter_fix_global epochs; paper 50 + 50 epochs
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
        value = load_yaml(text, f"--set {key.strip()[:60]}")
    except ConfigError:
        value = text
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is not a section")
    node[parts[-1]] = value


EXTENDS = "extends"
MAX_EXTENDS_DEPTH = 8


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base`` (new dicts; an empty section keeps the base's)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(out.get(key), dict) and (isinstance(value, dict) or value is None):
            out[key] = _merge(out[key], value or {})
        else:
            out[key] = value
    return out


def _parse(text: str, source: str) -> dict[str, Any]:
    tree = load_yaml(text, source) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections")
    return tree


def _resolve_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML tree of ``path`` merged onto the tree of the file it ``extends``
    (``chain``: the files that extend this one, the loaded one first). A missing or bad
    base names the file that names it; a cycle or a too deep chain, the loaded file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    tree = _parse(read_text(path, "params file"), str(path))
    if EXTENDS not in tree:
        return tree
    base = tree.pop(EXTENDS)
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: extends: expected the path of a params file, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"{path}: extends {base!r}: no such params file ({base_path})")
    chain = (*chain, path)
    if base_path.resolve() in {p.resolve() for p in chain}:
        loop = " -> ".join(p.name for p in (*chain, base_path))
        raise ConfigError(f"{chain[0]}: extends makes a cycle ({loop})")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{chain[0]}: extends chain more than {MAX_EXTENDS_DEPTH} files deep")
    return _merge(_resolve_tree(base_path, chain), tree)


def resolved_tree(path: Path | str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The params tree of a file with its ``extends`` chain merged in (base first, then
    each variant's keys) and ``overrides`` applied; no ``extends`` key is left."""
    tree = _resolve_tree(Path(path))
    for assignment in overrides:
        _set(tree, assignment)
    return tree


def load_params(path: Path | str | None = None, overrides: Sequence[str] = ()) -> Params:
    """Params from a YAML file (only the sections it names, on top of the file it
    ``extends``, if any) plus overrides; keys named nowhere keep the schema default."""
    if path is None:
        return params_from_text("", overrides)
    return from_dict(Params, resolved_tree(path, overrides))


def resolved_yaml(path: Path | str, overrides: Sequence[str] = ()) -> str:
    """The params of ``path`` as one self-contained YAML text: its ``extends`` chain
    merged and ``overrides`` applied, checked against the schema. What the pipeline
    compiler bakes in (``params_from_text`` reads it back to the same Params) and what
    ``pix2pixhd params`` prints or writes over params.yaml for DVC."""
    tree = resolved_tree(path, overrides)
    from_dict(Params, tree)
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, allow_unicode=True)


def params_from_text(text: str, overrides: Sequence[str] = (), source: str = "params") -> Params:
    """Params from YAML text (how the Kubeflow steps receive params.yaml) + overrides.
    The text must be self-contained: a variant's ``extends`` is resolved only from its
    file (``resolved_yaml``)."""
    tree = _parse(text, source)
    if EXTENDS in tree:
        raise ConfigError(
            f"{source}: 'extends: {tree[EXTENDS]}' is resolved only from a file: "
            "pass resolved_yaml(path) (pix2pixhd params PATH), not the file's text"
        )
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
