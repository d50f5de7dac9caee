"""pix2pixHD networks with the reference's exact module layout (state_dict keys).

GlobalGenerator, LocalEnhancer, Encoder (with instance-wise average pooling),
NLayerDiscriminator and MultiscaleDiscriminator. Layer indices inside the
``nn.Sequential`` containers are part of the checkpoint format: do not reorder.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig, NormType


def norm_layer(kind: NormType, channels: int) -> nn.Module:
    if kind == "instance":
        # The reference's InstanceNorm2d(affine=False): no parameters, no buffers.
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.BatchNorm2d(channels, affine=True)


def init_weights(module: nn.Module) -> None:
    """The paper's init: conv / transposed-conv weights N(0, 0.02), BatchNorm N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _pyramid_pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, relu, pad, conv3, norm](x); no activation after the sum."""

    def __init__(self, dim: int, norm: NormType) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            norm_layer(norm, dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3),
            norm_layer(norm, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def _global_layers(
    input_nc: int, output_nc: int, ngf: int, n_down: int, n_blocks: int, norm: NormType
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(input_nc, ngf, kernel_size=7),
        norm_layer(norm, ngf),
        nn.ReLU(True),
    ]
    for i in range(n_down):
        c = ngf * 2**i
        layers += [
            nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
            norm_layer(norm, 2 * c),
            nn.ReLU(True),
        ]
    width = ngf * 2**n_down
    layers += [ResnetBlock(width, norm) for _ in range(n_blocks)]
    for i in range(n_down):
        c = ngf * 2 ** (n_down - i)
        layers += [
            nn.ConvTranspose2d(c, c // 2, kernel_size=3, stride=2, padding=1, output_padding=1),
            norm_layer(norm, c // 2),
            nn.ReLU(True),
        ]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
    return layers


class GlobalGenerator(nn.Module):
    def __init__(
        self,
        input_nc: int,
        output_nc: int = 3,
        ngf: int = 64,
        n_downsample: int = 4,
        n_blocks: int = 9,
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *_global_layers(input_nc, output_nc, ngf, n_downsample, n_blocks, norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LocalEnhancer(nn.Module):
    """Global generator (ngf * 2**n_local_enhancers, minus its output layers) plus enhancers.

    ``model`` is the global part; enhancer n (1 = coarsest) is ``model{n}_1`` (front) and
    ``model{n}_2`` (back). The back's input is the SUM of the front's output and the
    coarser network's output features.
    """

    def __init__(
        self,
        input_nc: int,
        output_nc: int = 3,
        ngf: int = 32,
        n_downsample_global: int = 4,
        n_blocks_global: int = 9,
        n_local_enhancers: int = 1,
        n_blocks_local: int = 3,
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError("LocalEnhancer needs n_local_enhancers >= 1")
        self.n_local_enhancers = n_local_enhancers
        ngf_global = ngf * 2**n_local_enhancers
        layers = _global_layers(
            input_nc, output_nc, ngf_global, n_downsample_global, n_blocks_global, norm
        )
        self.model = nn.Sequential(*layers[:-3])
        for n in range(1, n_local_enhancers + 1):
            c = ngf * 2 ** (n_local_enhancers - n)
            front = [
                nn.ReflectionPad2d(3),
                nn.Conv2d(input_nc, c, kernel_size=7),
                norm_layer(norm, c),
                nn.ReLU(True),
                nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
                norm_layer(norm, 2 * c),
                nn.ReLU(True),
            ]
            back: list[nn.Module] = [ResnetBlock(2 * c, norm) for _ in range(n_blocks_local)]
            back += [
                nn.ConvTranspose2d(2 * c, c, kernel_size=3, stride=2, padding=1, output_padding=1),
                norm_layer(norm, c),
                nn.ReLU(True),
            ]
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))
        self.downsample = _pyramid_pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(self.downsample(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


def instance_average(features: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """Replace every pixel's feature by the mean feature of its (image, instance id).

    Tensor ops of fixed size only (sort, cumsum, scatter-add, gather): no Python loop
    over instances and no data-dependent shapes, so no host round trip on GPU, and it
    traces into an ONNX graph.

    features: (N, C, H, W) float; instance: (N, 1, H, W) integer ids.
    """
    n, c, h, w = features.shape
    ids = instance.to(torch.int64).reshape(n, h * w)
    # Make ids distinct across the images of the batch: key = id * N + image index.
    batch = torch.arange(n, device=ids.device).unsqueeze(1)
    keys = (ids * n + batch).reshape(-1)
    sorted_keys, order = torch.sort(keys)
    starts = torch.ones_like(sorted_keys, dtype=torch.int64)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).to(torch.int64)
    segment_sorted = torch.cumsum(starts, 0) - 1
    segment = torch.empty_like(segment_sorted).scatter(0, order, segment_sorted)
    flat = features.permute(0, 2, 3, 1).reshape(-1, c)
    # At most one segment per pixel: size the buffers by the pixel count.
    sums = torch.zeros_like(flat).index_add(0, segment, flat)
    ones = torch.ones_like(flat[:, :1])
    counts = torch.zeros_like(ones).index_add(0, segment, ones)
    means = sums / counts.clamp_min(1.0)
    out = means.index_select(0, segment)
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


class Encoder(nn.Module):
    """Instance feature encoder: encoder-decoder, then instance-wise average pooling."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 16,
        n_downsample: int = 4,
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        # The reference's encoder is the global generator's layout without residual blocks.
        layers = _global_layers(input_nc, output_nc, ngf, n_downsample, 0, norm)
        self.model = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        return instance_average(self.model(image), instance)


def _d_layers(input_nc: int, ndf: int, n_layers: int, norm: NormType) -> list[list[nn.Module]]:
    """Groups of layers; one group per intermediate feature of the discriminator."""
    groups: list[list[nn.Module]] = [
        [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=2), nn.LeakyReLU(0.2, True)]
    ]
    nf = ndf
    for _ in range(1, n_layers):
        prev, nf = nf, min(nf * 2, 512)
        groups.append(
            [
                nn.Conv2d(prev, nf, kernel_size=4, stride=2, padding=2),
                norm_layer(norm, nf),
                nn.LeakyReLU(0.2, True),
            ]
        )
    prev, nf = nf, min(nf * 2, 512)
    groups.append(
        [
            nn.Conv2d(prev, nf, kernel_size=4, stride=1, padding=2),
            norm_layer(norm, nf),
            nn.LeakyReLU(0.2, True),
        ]
    )
    groups.append([nn.Conv2d(nf, 1, kernel_size=4, stride=1, padding=2)])
    return groups


class NLayerDiscriminator(nn.Module):
    """PatchGAN. With ``intermediate_features`` each group is ``model{j}`` and forward
    returns every group's output (for feature matching); else one ``model`` and only the
    final map is returned (as a one-element list)."""

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        norm: NormType = "instance",
        intermediate_features: bool = True,
    ) -> None:
        super().__init__()
        groups = _d_layers(input_nc, ndf, n_layers, norm)
        self.intermediate_features = intermediate_features
        self.n_groups = len(groups)
        if intermediate_features:
            for j, group in enumerate(groups):
                setattr(self, f"model{j}", nn.Sequential(*group))
        else:
            self.model = nn.Sequential(*[m for g in groups for m in g])

    def stages(self) -> list[nn.Module]:
        if self.intermediate_features:
            return [getattr(self, f"model{j}") for j in range(self.n_groups)]
        return [self.model]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages():
            x = stage(x)
            outs.append(x)
        return outs


class MultiscaleDiscriminator(nn.Module):
    """``num_D`` independent PatchGANs on an image pyramid.

    Key layout of the reference: the discriminator that sees FULL resolution is scale
    ``num_D - 1``; scale 0 is the coarsest. With intermediate features the layers are
    attributes ``scale{i}_layer{j}``; without, one ``layer{i}`` per scale.
    forward() returns one list of outputs per scale, finest first.
    """

    def __init__(
        self,
        input_nc: int,
        ndf: int = 64,
        n_layers: int = 3,
        num_D: int = 2,
        norm: NormType = "instance",
        intermediate_features: bool = True,
    ) -> None:
        super().__init__()
        self.num_D = num_D
        self.n_layers = n_layers
        self.intermediate_features = intermediate_features
        for i in range(num_D):
            d = NLayerDiscriminator(input_nc, ndf, n_layers, norm, intermediate_features)
            if intermediate_features:
                for j, stage in enumerate(d.stages()):
                    setattr(self, f"scale{i}_layer{j}", stage)
            else:
                setattr(self, f"layer{i}", d.model)
        self.downsample = _pyramid_pool()

    def _stages(self, scale: int) -> list[nn.Module]:
        if self.intermediate_features:
            return [getattr(self, f"scale{scale}_layer{j}") for j in range(self.n_layers + 2)]
        return [getattr(self, f"layer{scale}")]

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for i in range(self.num_D):
            outs = []
            h = x
            for stage in self._stages(self.num_D - 1 - i):
                h = stage(h)
                outs.append(h)
            results.append(outs)
            if i != self.num_D - 1:
                x = self.downsample(x)
        return results


# ---------------------------------------------------------------------------
# factories from the typed config


def build_generator(cfg: ModelConfig) -> nn.Module:
    g = cfg.generator
    if g.n_local_enhancers == 0:
        net: nn.Module = GlobalGenerator(
            cfg.generator_input_nc,
            g.output_nc,
            g.ngf,
            g.n_downsample_global,
            g.n_blocks_global,
            g.norm,
        )
    else:
        net = LocalEnhancer(
            cfg.generator_input_nc,
            g.output_nc,
            g.ngf,
            g.n_downsample_global,
            g.n_blocks_global,
            g.n_local_enhancers,
            g.n_blocks_local,
            g.norm,
        )
    init_weights(net)
    return net


def build_discriminator(cfg: ModelConfig) -> MultiscaleDiscriminator:
    d = cfg.discriminator
    net = MultiscaleDiscriminator(
        cfg.discriminator_input_nc,
        d.ndf,
        d.n_layers_D,
        d.num_D,
        d.norm,
        intermediate_features=cfg.loss.use_feature_matching,
    )
    init_weights(net)
    return net


def build_encoder(cfg: ModelConfig) -> Encoder:
    e = cfg.encoder
    net = Encoder(cfg.generator.output_nc, e.feat_num, e.nef, e.n_downsample_E, e.norm)
    init_weights(net)
    return net
