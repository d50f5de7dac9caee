"""Input encoding: one-hot labels, instance boundary maps, input checks.

Channel order of the reference: one-hot label (label_nc), then the boundary map (1),
then instance features (feat_num).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.errors import InputError


def one_hot(label: torch.Tensor, label_nc: int) -> torch.Tensor:
    """(N, 1, H, W) integer label ids -> (N, label_nc, H, W) float one-hot.

    Written as a comparison with arange so it exports to ONNX unchanged.
    """
    classes = torch.arange(label_nc, device=label.device).view(1, label_nc, 1, 1)
    return (label.to(torch.int64) == classes).to(torch.float32)


def boundary_map(instance: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) instance ids -> (N, 1, H, W) float map: 1 where a pixel's id differs
    from its left, right, upper or lower neighbour (both sides of a boundary)."""
    inst = instance.to(torch.int64)
    dx = (inst[..., :, 1:] != inst[..., :, :-1]).to(torch.float32)
    dy = (inst[..., 1:, :] != inst[..., :-1, :]).to(torch.float32)
    edge = F.pad(dx, (0, 1)) + F.pad(dx, (1, 0)) + F.pad(dy, (0, 0, 0, 1)) + F.pad(dy, (0, 0, 1, 0))
    return (edge > 0).to(torch.float32)


def check_label_range(label: torch.Tensor, label_nc: int) -> None:
    """Raise InputError naming the first offending value if a label id is outside
    [0, label_nc). One host synchronisation (min/max)."""
    lo, hi = torch.aminmax(label)
    lo_i, hi_i = int(lo), int(hi)
    if lo_i < 0 or hi_i >= label_nc:
        bad = lo_i if lo_i < 0 else hi_i
        raise InputError(
            f"label id {bad} is outside [0, {label_nc - 1}] for label_nc={label_nc}; "
            f"relabel the data or raise data.label_nc"
        )


def nearest_valid_size(size: int, multiple: int) -> int:
    return max(2 * multiple, int(round(size / multiple)) * multiple)


def check_size(height: int, width: int, multiple: int) -> None:
    """The generator needs H and W divisible by 2**(n_downsample_global + n_local_enhancers)
    and at least twice that: the residual blocks' reflection padding needs a bottleneck of
    2 x 2 pixels or more (the reference fails there with a padding error)."""
    small = height < 2 * multiple or width < 2 * multiple
    if height % multiple or width % multiple or small:
        raise InputError(
            f"image size {width}x{height} (WxH) does not fit the generator: width and height "
            f"must be multiples of {multiple}, at least {2 * multiple}; nearest valid size is "
            f"{nearest_valid_size(width, multiple)}x{nearest_valid_size(height, multiple)}"
        )


def encode_label(
    label: torch.Tensor,
    instance: torch.Tensor | None,
    label_nc: int,
    use_instance_map: bool,
    boundary: torch.Tensor | None = None,
) -> torch.Tensor:
    """Label (ids, or an RGB image in [-1, 1] when label_nc == 0) + boundary map.

    ``boundary``: a precomputed (N, 1, H, W) boundary map, used instead of computing it.
    """
    if label_nc > 0:
        encoded = one_hot(label, label_nc)
    else:
        encoded = label.to(torch.float32)
    if use_instance_map:
        if boundary is None:
            if instance is None:
                raise InputError("this model uses instance maps but no instance map was given")
            boundary = boundary_map(instance)
        encoded = torch.cat([encoded, boundary.to(encoded.device, torch.float32)], dim=1)
    return encoded
