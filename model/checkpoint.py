"""The project's checkpoint format, and import of the reference's checkpoints.

One file holds everything needed to generate or resume: the config (as a plain dict),
G / D / E weights and, for training, optimiser/scheduler/scaler/RNG states, epoch and
iteration, and cluster centres. Written atomically (temp file + rename); read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model.config import (
    DiscriminatorConfig,
    EncoderConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
    from_dict,
    to_dict,
)
from model.errors import CheckpointError, ConfigError
from model.networks import build_discriminator, build_encoder, build_generator
from model.pix2pixhd import Pix2PixHD

log = logging.getLogger(__name__)

FORMAT = "pix2pixhd-pipeline/checkpoint"
FORMAT_VERSION = 1
_LEGACY_NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

StateDict = dict[str, torch.Tensor]


# ---------------------------------------------------------------- file I/O


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus format tags) atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _torch_load(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with foreign objects, not torch at all
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or wrong file?): {reason}"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint of this project's format (no arbitrary unpickling)."""
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a pix2pixhd-pipeline checkpoint; official pix2pixHD files "
            "(latest_net_G.pth ...) must first be converted with `pix2pixhd import-checkpoint`"
        )
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {data['format_version']} is newer than this "
            f"code supports ({FORMAT_VERSION}); upgrade pix2pixhd-pipeline"
        )
    return data


def config_of(checkpoint: Mapping[str, Any]) -> ModelConfig:
    try:
        return from_dict(ModelConfig, checkpoint["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint config is unusable: {exc}") from None


def _load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    # Old checkpoints carry InstanceNorm running statistics that current torch does not use.
    state = {k: v for k, v in state.items() if k in own or not k.endswith(_LEGACY_NORM_SUFFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what}: keys do not match the architecture: {', '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(value.shape)}, "
                f"the architecture expects {tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


def build_model(
    checkpoint: Mapping[str, Any],
    with_discriminator: bool = False,
    vgg_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Pix2PixHD:
    """Rebuild the model from a checkpoint's own config and load its weights."""
    cfg = config_of(checkpoint)
    model = Pix2PixHD(cfg, with_discriminator=with_discriminator, vgg_state_dict=vgg_state_dict)
    _load_strict(model.netG, checkpoint["G"], "generator")
    if model.netE is not None:
        if checkpoint.get("E") is None:
            raise CheckpointError("config uses instance features but the checkpoint has no E")
        _load_strict(model.netE, checkpoint["E"], "encoder")
    if model.netD is not None and checkpoint.get("D") is not None:
        _load_strict(model.netD, checkpoint["D"], "discriminator")
    return model


def model_payload(model: Pix2PixHD) -> dict[str, Any]:
    """Config and weights of a model, ready for ``save_checkpoint``."""
    return {
        "config": to_dict(model.cfg),
        "G": model.netG.state_dict(),
        "D": model.netD.state_dict() if model.netD is not None else None,
        "E": model.netE.state_dict() if model.netE is not None else None,
    }


def load_vgg19_state_dict(path: str | Path) -> StateDict:
    """torchvision's VGG19 ImageNet weights (vgg19-dcbb9e9d.pth) from a local path."""
    data = _torch_load(path)
    if not isinstance(data, dict) or not any(str(k).startswith("features.") for k in data):
        raise CheckpointError(
            f"{path}: not a torchvision VGG19 state_dict (expected keys 'features.N.weight')"
        )
    return data


# ---------------------------------------------------------------- official checkpoints


def _plain_state_dict(path: str | Path, what: str) -> StateDict:
    data = _torch_load(path)
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, torch.Tensor) for v in data.values())
    ):
        raise CheckpointError(f"{path}: expected a {what} state_dict (a mapping of tensors)")
    data = {k.removeprefix("module."): v for k, v in data.items()}
    return {k: v for k, v in data.items() if not k.endswith(_LEGACY_NORM_SUFFIXES)}


def _indices(state: StateDict, prefix: str) -> list[int]:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pat.match(k))})


def _sequential_convs(state: StateDict, prefix: str) -> list[tuple[int, torch.Size, bool]]:
    """(index, weight shape, is_resblock) for every top-level layer with weights."""
    out = []
    for i in _indices(state, prefix):
        if f"{prefix}{i}.conv_block.1.weight" in state:
            out.append((i, state[f"{prefix}{i}.conv_block.1.weight"].shape, True))
        elif f"{prefix}{i}.weight" in state:
            out.append((i, state[f"{prefix}{i}.weight"].shape, False))
    return out


def infer_generator(state: StateDict, path: str | Path) -> tuple[GeneratorConfig, int]:
    """GeneratorConfig and input channels from the tensor shapes of a reference G."""
    if "model.1.weight" not in state:
        raise CheckpointError(f"{path}: not a pix2pixHD generator (no 'model.1.weight')")
    n_local = len(_numbers(state, r"model(\d+)_1\."))
    layers = _sequential_convs(state, "model.")
    first_block = next((p for p, (_, _, rb) in enumerate(layers) if rb), None)
    if first_block is None:
        raise CheckpointError(f"{path}: generator has no residual blocks")
    n_down = first_block - 1
    n_blocks = sum(1 for _, _, rb in layers if rb)
    input_nc = int(state["model.1.weight"].shape[1])
    ngf_global = int(state["model.1.weight"].shape[0])
    if n_local == 0:
        output_nc = int(state[f"model.{layers[-1][0]}.weight"].shape[0])
        cfg = GeneratorConfig(
            ngf=ngf_global,
            n_downsample_global=n_down,
            n_blocks_global=n_blocks,
            n_local_enhancers=0,
            output_nc=output_nc,
        )
        return cfg, input_nc
    outer = _sequential_convs(state, f"model{n_local}_2.")
    n_blocks_local = sum(1 for _, _, rb in outer if rb)
    output_nc = int(state[f"model{n_local}_2.{outer[-1][0]}.weight"].shape[0])
    ngf = int(state[f"model{n_local}_1.1.weight"].shape[0])
    if ngf * 2**n_local != ngf_global:
        raise CheckpointError(
            f"{path}: inconsistent local generator widths ({ngf} x 2^{n_local} != {ngf_global})"
        )
    cfg = GeneratorConfig(
        ngf=ngf,
        n_downsample_global=n_down,
        n_blocks_global=n_blocks,
        n_local_enhancers=n_local,
        n_blocks_local=n_blocks_local,
        output_nc=output_nc,
    )
    return cfg, input_nc


def _numbers(state: StateDict, pattern: str) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(pattern, k))}


def infer_discriminator(
    state: StateDict, path: str | Path
) -> tuple[DiscriminatorConfig, int, bool]:
    """DiscriminatorConfig, input channels, and whether it has intermediate features."""
    scales = _numbers(state, r"scale(\d+)_layer\d+\.")
    if scales:
        n_groups = len(_numbers(state, r"scale0_layer(\d+)\."))
        first = state["scale0_layer0.0.weight"]
        cfg = DiscriminatorConfig(
            num_D=len(scales), n_layers_D=n_groups - 2, ndf=int(first.shape[0])
        )
        return cfg, int(first.shape[1]), True
    flat = _numbers(state, r"layer(\d+)\.\d+\.")
    if not flat or "layer0.0.weight" not in state:
        raise CheckpointError(f"{path}: not a pix2pixHD multiscale discriminator")
    n_convs = sum(
        1
        for k, v in state.items()
        if k.startswith("layer0.") and k.endswith(".weight") and v.dim() == 4
    )
    first = state["layer0.0.weight"]
    return (
        DiscriminatorConfig(num_D=len(flat), n_layers_D=n_convs - 2, ndf=int(first.shape[0])),
        int(first.shape[1]),
        False,
    )


def infer_encoder(state: StateDict, path: str | Path) -> EncoderConfig:
    convs = [i for i, _, _ in _sequential_convs(state, "model.")]
    if "model.1.weight" not in state or len(convs) < 2:
        raise CheckpointError(f"{path}: not a pix2pixHD instance feature encoder")
    return EncoderConfig(
        feat_num=int(state[f"model.{convs[-1]}.weight"].shape[0]),
        nef=int(state["model.1.weight"].shape[0]),
        n_downsample_E=(len(convs) - 2) // 2,
    )


def import_official(
    generator: str | Path,
    label_nc: int,
    use_instance_map: bool = True,
    encoder: str | Path | None = None,
    discriminator: str | Path | None = None,
) -> dict[str, Any]:
    """Read reference checkpoints, infer the architecture from their shapes, load them
    strictly, and return a payload for ``save_checkpoint``."""
    g_state = _plain_state_dict(generator, "generator")
    g_cfg, g_in = infer_generator(g_state, generator)
    e_state = _plain_state_dict(encoder, "encoder") if encoder else None
    e_cfg = infer_encoder(e_state, encoder) if e_state is not None else EncoderConfig()
    use_features = e_state is not None
    base = label_nc if label_nc > 0 else 3
    expected = base + int(use_instance_map) + (e_cfg.feat_num if use_features else 0)
    if g_in != expected:
        hint = ""
        if not use_features and g_in - base - int(use_instance_map) > 0:
            hint = "; if the model uses instance features, also pass --encoder latest_net_E.pth"
        elif g_in == expected - 1 and use_instance_map:
            hint = "; if it was trained without instance maps, pass --no-instance-map"
        raise CheckpointError(
            f"{generator}: generator takes {g_in} input channels, but label_nc={label_nc}"
            f"{' + 1 boundary map' if use_instance_map else ''}"
            f"{f' + {e_cfg.feat_num} features' if use_features else ''} = {expected}{hint}"
        )
    d_cfg, use_fm = DiscriminatorConfig(), True
    d_state = None
    if discriminator:
        d_state = _plain_state_dict(discriminator, "discriminator")
        d_cfg, d_in, use_fm = infer_discriminator(d_state, discriminator)
        if d_in != base + int(use_instance_map) + g_cfg.output_nc:
            raise CheckpointError(
                f"{discriminator}: discriminator takes {d_in} input channels, expected "
                f"{base + int(use_instance_map) + g_cfg.output_nc} for this generator"
            )
    cfg = ModelConfig(
        label_nc=label_nc,
        use_instance_map=use_instance_map,
        use_instance_features=use_features,
        generator=g_cfg,
        discriminator=d_cfg,
        encoder=e_cfg,
        loss=LossConfig(use_feature_matching=use_fm),
    )
    payload: dict[str, Any] = {"config": to_dict(cfg), "G": None, "D": None, "E": None}
    parts = [
        ("G", build_generator, g_state, generator),
        ("E", build_encoder, e_state, encoder),
        ("D", build_discriminator, d_state, discriminator),
    ]
    for key, build, state, path in parts:
        if state is not None:
            with torch.device("meta"):  # shapes only; weights come from the file
                net = build(cfg)
            net = net.to_empty(device="cpu")
            _load_strict(net, state, str(path))
            payload[key] = net.state_dict()
    log.info("imported %s: %s", generator, cfg)
    payload["source"] = {
        "generator": str(generator),
        "encoder": str(encoder) if encoder else None,
        "discriminator": str(discriminator) if discriminator else None,
    }
    return payload


def init_local_from_global(model: Pix2PixHD, global_ckpt: Mapping[str, Any]) -> dict[str, int]:
    """Initialise a local-stage model from a global-stage checkpoint.

    G: every shared ``model.*`` tensor (the global generator minus its output layers);
    E: all of it; D: the global stage's scales keep their absolute resolutions (scale i of
    the global D is scale i of the local D), the new finer scales start fresh.
    Returns how many tensors were copied per network.
    """
    copied = {"G": 0, "D": 0, "E": 0}
    nets = (("G", model.netG), ("D", model.netD), ("E", model.netE))
    for key, net in nets:
        source = global_ckpt.get(key)
        if net is None or source is None:
            continue
        own = net.state_dict()
        shared = {}
        for name, tensor in source.items():
            if name in own:
                if tuple(own[name].shape) != tuple(tensor.shape):
                    raise CheckpointError(
                        f"global checkpoint {key}.{name} has shape {tuple(tensor.shape)}, the "
                        f"local model expects {tuple(own[name].shape)}: were both stages "
                        "configured from the same params?"
                    )
                shared[name] = tensor
        if key == "G" and not any(n.startswith("model.") for n in shared):
            raise CheckpointError("global checkpoint shares no weights with the local generator")
        net.load_state_dict(shared, strict=False)
        copied[key] = len(shared)
    return copied
