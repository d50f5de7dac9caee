import itertools

import pytest
import torch

from model.networks import (
    Encoder,
    GlobalGenerator,
    LocalEnhancer,
    MultiscaleDiscriminator,
    build_generator,
    instance_average,
)
from tests.conftest import tiny_config


def naive_instance_average(feat, inst):
    out = feat.clone()
    for b in range(feat.shape[0]):
        for i in torch.unique(inst[b]):
            mask = inst[b, 0] == i
            for c in range(feat.shape[1]):
                out[b, c][mask] = feat[b, c][mask].mean()
    return out


def test_instance_average_equals_naive_loop():
    feat = torch.randn(3, 4, 8, 10)
    inst = torch.randint(0, 4, (3, 1, 8, 10)) * 1000 + torch.randint(0, 3, (3, 1, 8, 10))
    inst[1] = 33001  # a whole image one instance; same ids recur across images
    got = instance_average(feat, inst)
    torch.testing.assert_close(got, naive_instance_average(feat, inst))


def test_instance_average_gradient_flows():
    feat = torch.randn(1, 2, 4, 4, requires_grad=True)
    inst = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    instance_average(feat, inst).sum().backward()
    torch.testing.assert_close(feat.grad, torch.ones_like(feat))


def test_encoder_output_is_constant_per_instance():
    enc = Encoder(3, 3, ngf=4, n_downsample=2)
    inst = torch.zeros(1, 1, 16, 16, dtype=torch.int64)
    inst[..., 4:10, 4:10] = 26001
    out = enc(torch.randn(1, 3, 16, 16), inst)
    for i in (0, 26001):
        vals = out[0, :, inst[0, 0] == i]
        assert torch.allclose(vals, vals[:, :1].expand_as(vals))


@pytest.mark.parametrize("n_local", [1, 2])
def test_local_enhancer_output_shape(n_local):
    g = LocalEnhancer(
        5,
        3,
        ngf=4,
        n_downsample_global=2,
        n_blocks_global=1,
        n_local_enhancers=n_local,
        n_blocks_local=1,
    )
    y = g(torch.randn(2, 5, 32, 64))
    assert y.shape == (2, 3, 32, 64)
    assert y.abs().max() <= 1


def test_local_enhancer_sums_front_and_global_features():
    # With the enhancer's front zeroed, the back sees only the global part's output.
    g = LocalEnhancer(
        2, 3, ngf=4, n_downsample_global=1, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=1
    ).eval()
    x = torch.randn(1, 2, 16, 16)
    for p in g.model1_1.parameters():
        torch.nn.init.zeros_(p)
    coarse = g.model(g.downsample(x))
    torch.testing.assert_close(g(x), g.model1_2(coarse))


def test_global_generator_shape_and_init():
    g = build_generator(tiny_config())
    assert isinstance(g, GlobalGenerator)
    convs = [
        m.weight for m in g.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    w = torch.cat([c.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def test_multiscale_discriminator_scale_order():
    # The full-resolution input goes to scale{num_D-1}; scale0 sees the coarsest.
    d = MultiscaleDiscriminator(4, ndf=4, n_layers=2, num_D=3)
    x = torch.randn(1, 4, 64, 64)
    out = d(x)
    assert len(out) == 3 and all(len(o) == 4 for o in out)
    torch.testing.assert_close(out[0][0], d.scale2_layer0(x))
    x2 = d.downsample(d.downsample(x))
    torch.testing.assert_close(out[2][0], d.scale0_layer0(x2))


def test_flat_discriminator_same_function_as_layered():
    layered = MultiscaleDiscriminator(4, ndf=4, n_layers=2, num_D=2)
    flat = MultiscaleDiscriminator(4, ndf=4, n_layers=2, num_D=2, intermediate_features=False)
    # map scale{i}_layer{j}.{k} -> layer{i}.{flat index}
    mapped = {}
    for i in range(2):
        idx = itertools.count()
        for j in range(4):
            seq = getattr(layered, f"scale{i}_layer{j}")
            for m in seq:
                n = next(idx)
                if isinstance(m, torch.nn.Conv2d):
                    mapped[f"layer{i}.{n}.weight"] = m.weight
                    mapped[f"layer{i}.{n}.bias"] = m.bias
    flat.load_state_dict(mapped)
    x = torch.randn(1, 4, 32, 32)
    a, b = layered(x), flat(x)
    for sa, sb in zip(a, b, strict=True):
        torch.testing.assert_close(sa[-1], sb[-1])
