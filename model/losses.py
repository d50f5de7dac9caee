"""pix2pixHD losses: GAN (ls / vanilla / hinge), feature matching, VGG19 perceptual."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GanMode
from model.errors import CheckpointError, ConfigError

Outputs = list[list[torch.Tensor]]  # per scale, per layer; last entry of each = final map


class GANLoss(nn.Module):
    """Adversarial loss summed over the discriminator scales' final maps.

    - ``ls`` (paper default): MSE to 1 (real) / 0 (fake).
    - ``vanilla``: binary cross-entropy with logits (D has no sigmoid).
    - ``hinge``: D: relu(1 - real) + relu(1 + fake); G: -mean(fake).
    """

    def __init__(self, mode: GanMode = "ls") -> None:
        super().__init__()
        if mode not in ("ls", "vanilla", "hinge"):
            raise ConfigError(f"loss.gan_mode: {mode!r} is not one of ls, vanilla, hinge")
        self.mode = mode

    def _single(self, pred: torch.Tensor, target_is_real: bool, for_discriminator: bool):
        if self.mode == "ls":
            target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
            return F.mse_loss(pred, target)
        if self.mode == "vanilla":
            target = torch.full_like(pred, 1.0 if target_is_real else 0.0)
            return F.binary_cross_entropy_with_logits(pred, target)
        if not for_discriminator:
            return -pred.mean()
        if target_is_real:
            return F.relu(1.0 - pred).mean()
        return F.relu(1.0 + pred).mean()

    def forward(
        self, outputs: Outputs, target_is_real: bool, for_discriminator: bool = True
    ) -> torch.Tensor:
        losses = [self._single(scale[-1], target_is_real, for_discriminator) for scale in outputs]
        return torch.stack(losses).sum()


def feature_matching_loss(
    fake: Outputs, real: Outputs, n_layers_D: int, num_D: int, lambda_feat: float
) -> torch.Tensor:
    """Sum over scales and intermediate layers (not the final map) of
    L1(fake, real.detach()) * 4 / (n_layers_D + 1) / num_D * lambda_feat."""
    weight = 4.0 / (n_layers_D + 1) / num_D * lambda_feat
    total = fake[0][0].new_zeros(())
    for fake_scale, real_scale in zip(fake, real, strict=True):
        for f, r in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + F.l1_loss(f, r.detach()) * weight
    return total


VGG_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))  # relu1_1 .. relu5_1
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)


class VGG19Features(nn.Module):
    """torchvision VGG19 ``features[0:30]`` split at relu1_1 .. relu5_1, frozen."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        from torchvision.models import vgg

        # torchvision's own builder for vgg19's `features` (config "E", no batch norm),
        # without allocating the 120M-parameter classifier we never use.
        features = vgg.make_layers(vgg.cfgs["E"], batch_norm=False)
        wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        own = {f"features.{k}": v for k, v in features.state_dict().items()}
        missing = sorted(set(own) - set(wanted))
        if missing:
            raise CheckpointError(
                f"VGG19 weights lack {len(missing)} torchvision keys (e.g. {missing[0]}): "
                "expected torchvision's vgg19 ImageNet state_dict (vgg19-dcbb9e9d.pth)"
            )
        for key, value in own.items():
            if tuple(wanted[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"VGG19 weights: {key} has shape {tuple(wanted[key].shape)}, "
                    f"expected {tuple(value.shape)}"
                )
        features.load_state_dict({k[len("features.") :]: v for k, v in wanted.items()})
        self.slices = nn.ModuleList(
            nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in VGG_SLICES
        )
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGG19Features:  # always frozen, always eval
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for s in self.slices:
            x = s(x)
            outs.append(x)
        return outs


class VGGLoss(nn.Module):
    """Perceptual loss: sum_i w_i * L1(vgg_i(fake), vgg_i(real).detach()).

    Like the reference, the [-1, 1] images go in without ImageNet normalisation.
    The caller multiplies by lambda_feat.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.vgg = VGG19Features(state_dict)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_feats = self.vgg(fake)
        with torch.no_grad():
            real_feats = self.vgg(real)
        total = fake.new_zeros(())
        for w, f, r in zip(VGG_WEIGHTS, fake_feats, real_feats, strict=True):
            total = total + w * F.l1_loss(f, r.detach())
        return total
