"""Typed, frozen configuration of the model.

The dataclass defaults are the paper's defaults (Wang et al., CVPR 2018) and, where the
paper is silent, those of the authors' code (NVIDIA/pix2pixHD, options/*.py). Channel
counts are derived here, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from model.errors import ConfigError, quote

GanMode = Literal["ls", "vanilla", "hinge"]
NormType = Literal["instance", "batch"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
#: dataset directory layouts a step takes: one of model.datasets.Layout, or auto (detected)
LayoutOrAuto = Literal["auto", "cityscapes", "folder", "rgb"]
#: training preprocessing, the reference's resize_or_crop (model.datasets.preprocess_size)
Preprocess = Literal[
    "resize", "resize_and_crop", "scale_width", "scale_width_and_crop", "crop", "none"
]


def check_number(
    name: str,
    value: Any,
    low: float,
    *,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = True,
) -> None:
    """A ConfigError unless ``value`` is a finite number in the range (for the
    ``__post_init__`` checks: every driver gets them before any work)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"{name} must be a finite number {lo}{hi}, got {quote(value)}")


@dataclass(frozen=True)
class GeneratorConfig:
    """Coarse-to-fine generator. ``n_local_enhancers == 0`` is the global generator.

    ``ngf`` is the width of the outermost network: 64 for the global generator, 32 for
    the paper's local generator (whose global part then has 32 * 2 = 64 filters).
    """

    # filters of the outermost network's first layer; a local generator's global part
    # has ngf * 2^n_local_enhancers
    ngf: int = 64
    # stride-2 downsamplings of the global generator; H and W must be multiples of
    # 2^(n_downsample_global + n_local_enhancers)
    n_downsample_global: int = 4
    n_blocks_global: int = 9  # residual blocks at the global generator's bottleneck
    n_local_enhancers: int = 0  # local enhancers, each doubling the resolution; 0: global only
    n_blocks_local: int = 3  # residual blocks of each local enhancer
    norm: NormType = "instance"  # normalisation layers of G
    output_nc: int = 3  # channels of the generated image

    def __post_init__(self) -> None:
        for name in ("ngf", "n_downsample_global", "n_blocks_global", "output_nc"):
            check_number(f"generator.{name}", getattr(self, name), 1)
        for name in ("n_local_enhancers", "n_blocks_local"):
            check_number(f"generator.{name}", getattr(self, name), 0)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (self.n_downsample_global + self.n_local_enhancers)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale PatchGAN discriminator: num_D discriminators on an image pyramid."""

    num_D: int = 2  # PatchGANs, each on the input downsampled 2x more than the previous
    n_layers_D: int = 3  # stride-2 conv layers of each PatchGAN
    ndf: int = 64  # filters of each PatchGAN's first layer (doubling per layer, at most 512)
    norm: NormType = "instance"  # normalisation layers of D

    def __post_init__(self) -> None:
        for name in ("num_D", "n_layers_D", "ndf"):
            check_number(f"discriminator.{name}", getattr(self, name), 1)


@dataclass(frozen=True)
class EncoderConfig:
    """Instance-level feature encoder (used only with ``use_instance_features``)."""

    feat_num: int = 3  # feature channels per instance, appended to G's input
    nef: int = 16  # filters of E's first layer
    n_downsample_E: int = 4  # stride-2 downsamplings of E
    # not read by any step (the features step clusters with features.n_clusters); kept
    # because checkpoints store it
    n_clusters: int = 10
    norm: NormType = "instance"  # normalisation layers of E

    def __post_init__(self) -> None:
        for name in ("feat_num", "nef", "n_clusters"):
            check_number(f"encoder.{name}", getattr(self, name), 1)
        check_number("encoder.n_downsample_E", self.n_downsample_E, 0)


@dataclass(frozen=True)
class LossConfig:
    """The generator's objective: GAN loss plus feature-matching and VGG losses."""

    gan_mode: GanMode = "ls"  # ls: least squares (paper); vanilla: cross-entropy; hinge
    use_feature_matching: bool = True  # L1 between D's features of real and generated images
    use_vgg_loss: bool = True  # VGG19 perceptual loss; needs tracking.vgg_weights
    lambda_feat: float = 10.0  # weight of the feature-matching and of the VGG loss

    def __post_init__(self) -> None:
        check_number("loss.lambda_feat", self.lambda_feat, 0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build G, D and E. Stored inside every checkpoint."""

    label_nc: int = 35
    use_instance_map: bool = True
    use_instance_features: bool = False
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.label_nc < 0:
            raise ConfigError(f"label_nc must be >= 0 (0 means RGB labels), got {self.label_nc}")
        if self.label_nc == 0 and self.use_instance_map:
            raise ConfigError(
                "label_nc 0 (RGB label images) cannot use instance maps: "
                "set use_instance_map: false"
            )
        g = self.generator
        for name in ("ngf", "n_downsample_global", "n_blocks_global"):
            if getattr(g, name) < 1:
                raise ConfigError(f"generator.{name} must be >= 1, got {getattr(g, name)}")
        if g.n_local_enhancers < 0 or g.n_blocks_local < 0:
            raise ConfigError("generator.n_local_enhancers and n_blocks_local must be >= 0")
        d = self.discriminator
        if d.num_D < 1 or d.n_layers_D < 1 or d.ndf < 1:
            raise ConfigError(f"discriminator values must be >= 1, got {d}")

    @property
    def label_channels(self) -> int:
        """Channels of the encoded label: one-hot (or RGB) plus the boundary map."""
        return (self.label_nc if self.label_nc > 0 else 3) + int(self.use_instance_map)

    @property
    def generator_input_nc(self) -> int:
        feats = self.encoder.feat_num if self.use_instance_features else 0
        return self.label_channels + feats

    @property
    def discriminator_input_nc(self) -> int:
        """D sees the encoded label and an image; never the feature map."""
        return self.label_channels + self.generator.output_nc


@dataclass(frozen=True)
class TrainConfig:
    """One training stage. Defaults: the paper's global stage (200 epochs)."""

    niter: int = 100  # epochs at the initial learning rate
    niter_decay: int = 100  # epochs of linear decay to zero
    niter_fix_global: int = 0  # local stage: epochs that train only the enhancers
    lr: float = 2e-4  # Adam learning rate of G, D and E (the initial one)
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    batch_size: int = 1  # images per iteration (per process under data parallel)
    flip: bool = True  # random horizontal flips of the training pairs
    seed: int = 0  # weight initialisation, shuffling and augmentation draws
    # fp32 | bf16 | fp16 (autocast; fp16 with a grad scaler on CUDA) | auto: bf16 on CPUs
    # with native bf16, fp16 on CUDA, else fp32
    precision: Precision = "fp32"
    channels_last: bool = False  # NHWC memory format for the networks and batches
    compile: bool = False  # torch.compile G, D and E (each network, so G and D steps stay apart)
    compile_backend: str = "inductor"  # torch.compile backend
    num_workers: int = 0  # DataLoader worker processes (0: load in the training process)
    checkpoint_every: int = 1000  # iterations between checkpoints (0: only at epoch ends)
    log_every: int = 100  # iterations between loss logs
    sample_every: int = 1000  # iterations between sample grids (0: never)

    def __post_init__(self) -> None:
        check_number("lr", self.lr, 0, low_open=True)
        check_number("beta1", self.beta1, 0, high=1)
        check_number("beta2", self.beta2, 0, high=1)
        check_number("batch_size", self.batch_size, 1)
        for name in ("niter", "niter_decay", "niter_fix_global", "num_workers"):
            check_number(name, getattr(self, name), 0)
        for name in ("checkpoint_every", "log_every", "sample_every"):
            check_number(name, getattr(self, name), 0)
        if self.niter + self.niter_decay == 0:
            raise ConfigError("niter and niter_decay are both 0: nothing to train")
        if self.precision not in typing.get_args(Precision):
            raise ConfigError(f"precision {self.precision!r}: expected fp32, bf16, fp16 or auto")

    @property
    def epochs(self) -> int:
        return self.niter + self.niter_decay


@dataclass(frozen=True)
class FeatureConfig:
    """Instance-feature clustering (k-means per class) after training."""

    n_clusters: int = 10  # k-means centres per class (fewer when a class has fewer instances)
    min_area: float = 1.0 / 64  # fraction of the image an instance must cover to be clustered
    seed: int = 0  # k-means initialisation

    def __post_init__(self) -> None:
        check_number("n_clusters", self.n_clusters, 1)
        check_number("min_area", self.min_area, 0, high=1)


# ---------------------------------------------------------------------------
# dict <-> dataclass, with errors that name the offending key


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict of primitives (safe for ``torch.load(weights_only=True)``)."""
    return dataclasses.asdict(obj)


def _check_scalar(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"{where}: {quote(value)} is not one of {', '.join(map(str, allowed))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return _check_scalar(value, args[0], where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {quote(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {quote(value)}")
        if value < 0:  # every count, size, width and seed of the schema
            raise ConfigError(f"{where}: expected an integer >= 0, got {value}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {quote(value)}")
        if not math.isfinite(value):  # nan would switch a check off, inf make it vacuous
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {quote(value)}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from a nested dict. Unknown keys are an error naming the key.

    Keys not given keep the value of ``base`` (an instance of ``cls``), else the field's
    default: a nested section given in part keeps its parent's defaults for the rest.
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {quote(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(annotation):
            if base is not None:
                nested_base = getattr(base, name)
            elif fields[name].default_factory is not dataclasses.MISSING:
                nested_base = fields[name].default_factory()
            else:
                nested_base = None
            kwargs[name] = from_dict(annotation, value, key, nested_base)
        else:
            kwargs[name] = _check_scalar(value, annotation, key)
    try:
        if base is not None:
            return dataclasses.replace(base, **kwargs)
        return cls(**kwargs)
    except ConfigError as exc:  # a section's own check: its message names the key already
        msg = str(exc)
        if where and not msg.startswith((f"{where}.", f"{where.rsplit('.', 1)[-1]}.")):
            msg = f"{where}: {msg}"
        raise ConfigError(msg) from None
