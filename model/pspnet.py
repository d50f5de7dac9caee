"""PSPNet as published by its author (hszhao/semseg): dilated ResNet with the deep stem,
pyramid pooling (bins 1, 2, 3, 6), ``cls`` and ``aux`` heads. State_dict keys equal the
published checkpoints' (minus their ``module.`` prefix), so those load directly.

Also a light configuration (two bottleneck blocks per stage at a quarter of the width,
same stem and heads) for CPU.
Inference protocol (``segment``): ImageNet normalisation scaled by 255, optional
sliding window and horizontal-flip averaging of softmax probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import CheckpointError

Backbone = Literal["resnet50", "resnet101", "light"]
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class PSPNetConfig:
    backbone: Backbone = "resnet50"
    num_classes: int = 19
    bins: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1
    aux_weight: float = 0.4


def _stem(width: int) -> nn.Sequential:
    """Deep stem: three 3x3 convs (3->w/2 s2, w/2->w/2, w/2->w) with BN+ReLU, max pool."""
    half = width // 2
    return nn.Sequential(
        nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, half, 3, padding=1, bias=False),
        nn.BatchNorm2d(half),
        nn.ReLU(inplace=True),
        nn.Conv2d(half, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def _layer(
    block: type, inplanes: int, planes: int, blocks: int, stride: int, dilation: int
) -> tuple[nn.Sequential, int]:
    """ResNet stage of torchvision blocks; dilation on every block (semseg's layout)."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
        )
    layers = [block(inplanes, planes, stride, downsample, dilation=dilation)]
    layers += [block(out, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out


class _PPM(nn.Module):
    def __init__(self, in_dim: int, reduction: int, bins: tuple[int, ...]) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction, 1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for f in self.features:
            outs.append(F.interpolate(f(x), size, mode="bilinear", align_corners=True))
        return torch.cat(outs, 1)


def _head(in_dim: int, mid: int, classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid, classes, 1),
    )


class PSPNet(nn.Module):
    def __init__(self, cfg: PSPNetConfig = PSPNetConfig()) -> None:
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        self.cfg = cfg
        if cfg.backbone == "light":  # 2 bottlenecks per stage, a quarter of the width
            block, depths, widths, stem, cls_mid, aux_mid = (
                Bottleneck,
                (2, 2, 2, 2),
                (16, 32, 64, 128),
                64,
                128,
                64,
            )
        else:
            depth = (3, 4, 6, 3) if cfg.backbone == "resnet50" else (3, 4, 23, 3)
            block, depths, widths, stem, cls_mid, aux_mid = (
                Bottleneck,
                depth,
                (64, 128, 256, 512),
                128,
                512,
                256,
            )
        self.layer0 = _stem(stem)
        self.layer1, c1 = _layer(block, stem, widths[0], depths[0], 1, 1)
        self.layer2, c2 = _layer(block, c1, widths[1], depths[1], 2, 1)
        self.layer3, c3 = _layer(block, c2, widths[2], depths[2], 1, 2)
        self.layer4, c4 = _layer(block, c3, widths[3], depths[3], 1, 4)
        self.ppm = _PPM(c4, c4 // len(cfg.bins), cfg.bins)
        self.cls = _head(c4 * 2, cls_mid, cfg.num_classes, cfg.dropout)
        self.aux = _head(c3, aux_mid, cfg.num_classes, cfg.dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image -> (main logits, aux logits), both at the input size."""
        size = x.shape[-2:]
        x = self.layer2(self.layer1(self.layer0(x)))
        x3 = self.layer3(x)
        main = self.cls(self.ppm(self.layer4(x3)))
        aux = self.aux(x3)
        up = dict(size=size, mode="bilinear", align_corners=True)
        return F.interpolate(main, **up), F.interpolate(aux, **up)


def load_pspnet_state(model: PSPNet, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load semseg's ``{'state_dict': ...}`` (``module.`` prefixed) or a plain state_dict."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: not a PSPNet {model.cfg.backbone} checkpoint: {len(missing)} keys "
            f"missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(v.shape)}, expected "
                f"{tuple(own[k].shape)} (num_classes {model.cfg.num_classes}?)"
            )
    model.load_state_dict(state)


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> ImageNet-normalised."""
    mean = torch.tensor(MEAN, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


def _probs(model: PSPNet, x: torch.Tensor, flip: bool) -> torch.Tensor:
    p = F.softmax(model(x)[0], 1)
    if flip:
        p = p + F.softmax(model(x.flip(-1))[0], 1).flip(-1)
        p = p / 2
    return p


def segment(
    model: PSPNet,
    rgb: torch.Tensor,
    crop: int | None = None,
    stride_rate: float = 2 / 3,
    flip: bool = False,
) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 255] -> (N, classes, H, W) softmax probabilities.

    ``crop``: sliding-window size (the author's protocol: 713, stride 2/3 of it, images
    padded to at least the crop); None runs on the whole image. ``flip``: average with
    the horizontally flipped prediction.
    """
    x = normalise(rgb.float())
    model.eval()
    with torch.inference_mode():
        if crop is None:
            return _probs(model, x, flip)
        n, _, h, w = x.shape
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        if ph or pw:  # pad with the mean (zero after normalisation), as the author does
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        hh, ww = x.shape[-2:]
        stride = max(1, int(crop * stride_rate))
        ys = list(range(0, max(hh - crop, 0) + 1, stride))
        xs = list(range(0, max(ww - crop, 0) + 1, stride))
        if ys[-1] + crop < hh:
            ys.append(hh - crop)
        if xs[-1] + crop < ww:
            xs.append(ww - crop)
        total = torch.zeros(n, model.cfg.num_classes, hh, ww, device=x.device)
        count = torch.zeros(1, 1, hh, ww, device=x.device)
        for y0 in ys:
            for x0 in xs:
                total[..., y0 : y0 + crop, x0 : x0 + crop] += _probs(
                    model, x[..., y0 : y0 + crop, x0 : x0 + crop], flip
                )
                count[..., y0 : y0 + crop, x0 : x0 + crop] += 1
        probs = total / count
        return probs[..., ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
