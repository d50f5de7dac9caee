"""The project's checkpoint format, and import of the reference's checkpoints.

One file holds everything needed to generate or resume: the config (as a plain dict),
G / D / E weights and, for training, optimiser/scheduler/scaler/RNG states, epoch and
iteration, and cluster centres. Written atomically (temp file + rename); read with
``torch.load(weights_only=True)``. Every file carries a SHA-256 of its content
(``content_sha256``: tensors' bytes, dtypes, shapes and every other value), verified
on load: flipped bytes are an error naming the file, never wrong images. Weights that
are not finite are refused on save and on load.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
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
from model.errors import CheckpointError, ConfigError, Pix2PixHDError
from model.fileio import atomic_open
from model.networks import build_discriminator, build_encoder, build_generator
from model.pix2pixhd import Pix2PixHD

log = logging.getLogger(__name__)

FORMAT = "pix2pixhd-pipeline/checkpoint"
FORMAT_VERSION = 1
_LEGACY_NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

HASH_KEY = "content_sha256"
WEIGHT_KEYS = ("G", "D", "E", "cluster_centers", "state_dict")

StateDict = dict[str, torch.Tensor]


class NonFiniteWeights(Pix2PixHDError):
    """A network's weights contain NaN or Inf."""


# ---------------------------------------------------------------- integrity


def _hash_value(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        h.update(f"M{len(value)}:".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{key!r}:".encode())
            _hash_value(h, value[key])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}:".encode())
        for item in value:
            _hash_value(h, item)
    else:
        h.update(f"V{value!r};".encode())


def content_hash(data: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (everything but the hash itself)."""
    h = hashlib.sha256()
    _hash_value(h, {k: v for k, v in data.items() if k != HASH_KEY})
    return h.hexdigest()


def non_finite(payload: Mapping[str, Any]) -> str | None:
    """The first weight tensor (G / D / E / cluster centres) with NaN or Inf, or None."""
    for net in WEIGHT_KEYS:
        state = payload.get(net)
        if not isinstance(state, Mapping):
            continue
        for name, value in state.items():
            t = torch.as_tensor(value) if not isinstance(value, torch.Tensor) else value
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return f"{net}.{name}"
    return None


# ---------------------------------------------------------------- file I/O


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus format tags and its content hash) atomically: a reader
    never sees half a file. Weights with NaN or Inf are refused (``NonFiniteWeights``)
    and the previous file stays as it was."""
    path = Path(path)
    bad = non_finite(payload)
    if bad is not None:
        raise NonFiniteWeights(f"{path}: not written: weight {bad} is NaN or Inf")
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    data[HASH_KEY] = content_hash(data)
    with atomic_open(path, "wb") as f:
        torch.save(data, f)
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
    verify_content(path, data)
    return data


def verify_content(path: str | Path, data: Mapping[str, Any]) -> None:
    """Check the content hash (files written before hashes existed are accepted with a
    warning) and that the weights are finite."""
    stored = data.get(HASH_KEY)
    if stored is None:
        log.warning("%s: no content hash (written by an older version): not verified", path)
    elif content_hash(data) != stored:
        raise CheckpointError(
            f"{path}: content hash mismatch: the file is corrupted (bytes changed after it "
            "was written); restore it from a copy or retrain"
        )
    bad = non_finite(data)
    if bad is not None:
        raise CheckpointError(f"{path}: weight {bad} is NaN or Inf: not a usable checkpoint")


def checkpoint_hash(path: str | Path) -> str | None:
    """The content hash recorded in a checkpoint (verified), for lineage tags."""
    return load_checkpoint(path).get(HASH_KEY)


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
    load_weights(model, checkpoint)
    return model


def load_weights(
    model: Pix2PixHD, checkpoint: Mapping[str, Any], require_discriminator: bool = False
) -> None:
    """Load G (and E, and D when the model has one) from a checkpoint, strictly: every
    key and shape must match the model's architecture."""
    _load_strict(model.netG, checkpoint["G"], "generator")
    if model.netE is not None:
        if checkpoint.get("E") is None:
            raise CheckpointError("config uses instance features but the checkpoint has no E")
        _load_strict(model.netE, checkpoint["E"], "encoder")
    if model.netD is not None:
        if checkpoint.get("D") is not None:
            _load_strict(model.netD, checkpoint["D"], "discriminator")
        elif require_discriminator:
            raise CheckpointError("the checkpoint has no discriminator D")


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


def _mismatch(what: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
    return f"{what}: {'; '.join(parts)}"


def _exact_copy(
    net: torch.nn.Module,
    source: Mapping[str, torch.Tensor],
    what: str,
    may_skip_source: Callable[[str], bool] = lambda name: False,
    may_stay_fresh: Callable[[str], bool] = lambda name: False,
) -> int:
    """Load ``source`` into ``net``: every tensor of ``net`` must come from ``source``
    with its shape, except those ``may_stay_fresh`` allows (new parts); every source
    tensor must be used, except those ``may_skip_source`` allows (dropped parts)."""
    own = net.state_dict()
    source = {k.removeprefix("module."): v for k, v in source.items()}
    source = {k: v for k, v in source.items() if k in own or not k.endswith(_LEGACY_NORM_SUFFIXES)}
    missing = sorted(k for k in own if k not in source and not may_stay_fresh(k))
    unexpected = sorted(k for k in source if k not in own and not may_skip_source(k))
    shapes = sorted(
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in source.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        raise CheckpointError(_mismatch(what, missing, unexpected, shapes))
    shared = {k: v for k, v in source.items() if k in own}
    net.load_state_dict(shared, strict=False)
    return len(shared)


def init_local_from_global(
    model: Pix2PixHD, global_ckpt: Mapping[str, Any], path: str | Path = "--init"
) -> dict[str, int]:
    """Initialise a local-stage model from a global-stage checkpoint, exactly.

    G: the local generator's global part (``model.*``) takes every tensor of the global
    generator but its output convolution, and nothing else may differ; E: all of it;
    D: the global stage's scales keep their absolute resolutions (scale i of the global
    D is scale i of the local D), only the new finer scales start fresh. Anything that
    does not match is a CheckpointError naming it. Returns tensors copied per network.
    """
    copied = {"G": 0, "D": 0, "E": 0}
    src_g = global_ckpt.get("G")
    if not isinstance(src_g, Mapping):
        raise CheckpointError(f"{path}: no generator weights")
    n_global_layers = len(model.netG.model) + 3  # the local model drops pad, conv, tanh
    out_conv = f"model.{n_global_layers - 2}."
    copied["G"] = _exact_copy(
        model.netG,
        src_g,
        f"{path}: generator does not fit the local generator's global part",
        may_skip_source=lambda k: k.startswith(out_conv),
        may_stay_fresh=lambda k: not k.startswith("model."),
    )
    src_e = global_ckpt.get("E")
    if model.netE is not None:
        if not isinstance(src_e, Mapping):
            raise CheckpointError(f"{path}: the model uses instance features but has no E")
        copied["E"] = _exact_copy(model.netE, src_e, f"{path}: encoder does not fit")
    src_d = global_ckpt.get("D")
    if model.netD is not None and isinstance(src_d, Mapping):
        scale = re.compile(r"^(?:scale|layer)(\d+)")
        n_src = len({m.group(1) for k in src_d if (m := scale.match(k))})

        def fresh(k: str) -> bool:
            m = scale.match(k)
            return m is not None and int(m.group(1)) >= n_src

        copied["D"] = _exact_copy(
            model.netD, src_d, f"{path}: discriminator does not fit", may_stay_fresh=fresh
        )
    return copied


def init_from_checkpoint(
    model: Pix2PixHD, ckpt: Mapping[str, Any], path: str | Path = "--init"
) -> dict[str, int]:
    """Fine-tuning: every network of ``model`` loads the checkpoint's tensors exactly
    (a discriminator absent from the checkpoint, as in imported generators, starts
    fresh). Anything that does not match is a CheckpointError naming it."""
    copied = {"G": 0, "D": 0, "E": 0}
    for key, net in (("G", model.netG), ("E", model.netE), ("D", model.netD)):
        source = ckpt.get(key)
        if net is None:
            continue
        if not isinstance(source, Mapping):
            if key == "D":
                log.info("%s has no discriminator: it starts fresh", path)
                continue
            raise CheckpointError(f"{path}: no {key} weights, the model needs them")
        names = {"G": "generator", "E": "encoder", "D": "discriminator"}
        copied[key] = _exact_copy(net, source, f"{path}: {names[key]} does not fit")
    return copied
