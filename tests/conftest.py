from __future__ import annotations

import pytest
import torch

from model.config import (
    DiscriminatorConfig,
    EncoderConfig,
    GeneratorConfig,
    LossConfig,
    ModelConfig,
)


def tiny_config(**overrides) -> ModelConfig:
    """A tiny model: ngf 4-8, for 32x64 images."""
    base = dict(
        label_nc=6,
        use_instance_map=True,
        use_instance_features=False,
        generator=GeneratorConfig(ngf=8, n_downsample_global=2, n_blocks_global=1),
        discriminator=DiscriminatorConfig(num_D=2, n_layers_D=2, ndf=8),
        encoder=EncoderConfig(nef=4, n_downsample_E=2),
        loss=LossConfig(use_vgg_loss=False),
    )
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
