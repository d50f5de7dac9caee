"""The pix2pixHD model: owns G, D (and E), computes the G and D losses from one
forward pass, and generates images under ``torch.inference_mode()``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from model.config import ModelConfig
from model.encoding import check_label_range, check_size, encode_label
from model.errors import ConfigError, InputError
from model.losses import GANLoss, VGGLoss, feature_matching_loss
from model.networks import build_discriminator, build_encoder, build_generator


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@dataclass
class StepLosses:
    """Named losses of one iteration. ``generator`` holds G_GAN, G_GAN_Feat, G_VGG;
    ``discriminator`` holds D_real, D_fake. Totals follow the paper:
    L_G = G_GAN + G_GAN_Feat + G_VGG, L_D = 0.5 * (D_real + D_fake)."""

    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor]
    fake: torch.Tensor

    @property
    def generator_total(self) -> torch.Tensor:
        return torch.stack(list(self.generator.values())).sum()

    @property
    def discriminator_total(self) -> torch.Tensor:
        return 0.5 * (self.discriminator["D_real"] + self.discriminator["D_fake"])


class Pix2PixHD(nn.Module):
    """G (+ E) always; D and the losses only when ``with_discriminator``.

    ``vgg_state_dict``: torchvision VGG19 ImageNet weights, required when the config
    enables the VGG loss and the model is built for training.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        with_discriminator: bool = True,
        vgg_state_dict: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.netG = build_generator(cfg)
        self.netE = build_encoder(cfg) if cfg.use_instance_features else None
        self.netD = build_discriminator(cfg) if with_discriminator else None
        self.criterion_gan = GANLoss(cfg.loss.gan_mode)
        self.vgg_loss: VGGLoss | None = None
        if with_discriminator and cfg.loss.use_vgg_loss:
            if vgg_state_dict is None:
                raise ConfigError(
                    "the VGG perceptual loss is enabled but no VGG19 weights were given: "
                    "download torchvision's vgg19-dcbb9e9d.pth once and set its path in "
                    "tracking.vgg_weights (params.yaml, or --set tracking.vgg_weights=PATH), "
                    "or set model.loss.use_vgg_loss: false"
                )
            self.vgg_loss = VGGLoss(vgg_state_dict)

    # ------------------------------------------------------------------ inputs

    def check_inputs(self, label: torch.Tensor, instance: torch.Tensor | None) -> None:
        cfg = self.cfg
        if label.dim() != 4:
            raise InputError(f"label must be N x C x H x W, got shape {tuple(label.shape)}")
        check_size(label.shape[-2], label.shape[-1], cfg.generator.size_multiple)
        if cfg.label_nc > 0:
            if label.shape[1] != 1:
                raise InputError(f"label must have 1 channel of ids, got {label.shape[1]}")
            check_label_range(label, cfg.label_nc)
        if cfg.use_instance_map:
            if instance is None:
                raise InputError("this model uses instance maps but none was given")
            if instance.shape[-2:] != label.shape[-2:]:
                raise InputError(
                    f"instance map size {tuple(instance.shape[-2:])} differs from label "
                    f"size {tuple(label.shape[-2:])}"
                )

    def encode_label(
        self,
        label: torch.Tensor,
        instance: torch.Tensor | None,
        boundary: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return encode_label(label, instance, self.cfg.label_nc, self.cfg.use_instance_map, boundary)

    def encode_features(self, image: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        if self.netE is None:
            raise InputError("this model has no instance feature encoder")
        return self.netE(image, instance)

    def _generator_input(
        self,
        encoded_label: torch.Tensor,
        instance: torch.Tensor | None,
        image: torch.Tensor | None,
        features: torch.Tensor | None,
    ) -> torch.Tensor:
        if not self.cfg.use_instance_features:
            return encoded_label
        if features is None:
            if image is None or instance is None:
                raise InputError(
                    "this model uses instance features: give a real image and an instance "
                    "map to encode them, or a feature map"
                )
            features = self.encode_features(image, instance)
        return torch.cat([encoded_label, features], dim=1)

    # ------------------------------------------------------------------ training

    def compute_losses(
        self,
        label: torch.Tensor,
        instance: torch.Tensor | None,
        image: torch.Tensor,
        features: torch.Tensor | None = None,
        boundary: torch.Tensor | None = None,
    ) -> StepLosses:
        """One forward pass of G, then D on (label, fake.detach()), (label, real) for the
        D losses and on (label, fake) for the G losses. ``boundary``: precomputed
        boundary maps (from the `boundaries` step), else computed from ``instance``."""
        if self.netD is None:
            raise ConfigError("model was built without a discriminator (inference only)")
        self.check_inputs(label, instance)
        cfg = self.cfg
        encoded = self.encode_label(label, instance, boundary)
        fake = self.netG(self._generator_input(encoded, instance, image, features))

        pred_fake_detached = self.netD(torch.cat([encoded, fake.detach()], dim=1))
        pred_real = self.netD(torch.cat([encoded, image], dim=1))
        # G's adversarial term needs gradients w.r.t. the fake image only: freezing D's
        # weights for this pass skips their (discarded) weight gradients in G's backward.
        with _frozen(self.netD):
            pred_fake = self.netD(torch.cat([encoded, fake], dim=1))

        d_losses = {
            "D_real": self.criterion_gan(pred_real, True, for_discriminator=True),
            "D_fake": self.criterion_gan(pred_fake_detached, False, for_discriminator=True),
        }
        g_losses = {"G_GAN": self.criterion_gan(pred_fake, True, for_discriminator=False)}
        if cfg.loss.use_feature_matching:
            g_losses["G_GAN_Feat"] = feature_matching_loss(
                pred_fake,
                pred_real,
                cfg.discriminator.n_layers_D,
                cfg.discriminator.num_D,
                cfg.loss.lambda_feat,
            )
        if self.vgg_loss is not None:
            g_losses["G_VGG"] = self.vgg_loss(fake, image) * cfg.loss.lambda_feat
        return StepLosses(generator=g_losses, discriminator=d_losses, fake=fake)

    # ------------------------------------------------------------------ inference

    def generate(
        self,
        label: torch.Tensor,
        instance: torch.Tensor | None = None,
        image: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Label (+ instance, + image or features) -> image in [-1, 1]. No autograd graph."""
        self.check_inputs(label, instance)
        with torch.inference_mode():
            encoded = self.encode_label(label, instance)
            return self.netG(self._generator_input(encoded, instance, image, features))
