import math

import pytest
import torch

from model.checkpoint import load_vgg19_state_dict, save_checkpoint
from model.config import LossConfig
from model.errors import CheckpointError, ConfigError
from model.losses import GANLoss, VGGLoss, feature_matching_loss
from model.pix2pixhd import Pix2PixHD
from tests.conftest import tiny_config


def _scales(*values_per_scale):
    return [[torch.full((1, 1, 2, 2), float(v)) for v in scale] for scale in values_per_scale]


def test_feature_matching_hand_computed():
    # 2 scales x (2 intermediate + final). L1 per layer: |1-0|, |3-0|, |2-0|, |0-0|.
    fake = _scales([1, 3, 100], [2, 0, -100])
    real = _scales([0, 0, 0], [0, 0, 0])
    loss = feature_matching_loss(fake, real, n_layers_D=2, num_D=2, lambda_feat=10.0)
    weight = 4.0 / 3 / 2 * 10  # 4/(n_layers_D+1) * 1/num_D * lambda_feat
    assert loss.item() == pytest.approx((1 + 3 + 2 + 0) * weight)


def test_feature_matching_zero_for_identical():
    x = _scales([1.5, -2, 7], [3, 4, 5])
    assert feature_matching_loss(x, x, 2, 2, 10.0).item() == 0.0


def _preds(values):
    # two scales, each with the same final map
    return [[torch.tensor(values).view(1, 1, 1, -1)] for _ in range(2)]


def test_gan_loss_ls_targets():
    loss = GANLoss("ls")
    # mean((0-1)^2, (2-1)^2) = 1 per scale; mean(0^2, 2^2) = 2 per scale
    assert loss(_preds([0.0, 2.0]), True).item() == pytest.approx(2 * 1.0)
    assert loss(_preds([0.0, 2.0]), False).item() == pytest.approx(2 * 2.0)


def test_gan_loss_vanilla_targets():
    loss = GANLoss("vanilla")
    assert loss(_preds([0.0]), True).item() == pytest.approx(2 * math.log(2))
    # BCE(logit=2, target 0) = log(1 + e^2)
    assert loss(_preds([2.0]), False).item() == pytest.approx(2 * math.log1p(math.exp(2)))


def test_gan_loss_hinge_targets():
    loss = GANLoss("hinge")
    assert loss(_preds([0.5, 2.0]), True).item() == pytest.approx(2 * 0.25)
    assert loss(_preds([-2.0, 0.5]), False).item() == pytest.approx(2 * 0.75)
    assert loss(_preds([-2.0, 0.5]), True, for_discriminator=False).item() == pytest.approx(
        2 * 0.75
    )


def test_gan_loss_unknown_mode():
    with pytest.raises(ConfigError, match="gan_mode"):
        GANLoss("wgan")


@pytest.mark.parametrize("mode", ["ls", "vanilla", "hinge"])
def test_every_gan_mode_trains_with_feature_matching(mode):
    cfg = tiny_config(loss=LossConfig(gan_mode=mode, use_feature_matching=True, use_vgg_loss=False))
    model = Pix2PixHD(cfg)
    label = torch.randint(0, 6, (2, 1, 32, 64))
    out = model.compute_losses(label, label.clone(), torch.rand(2, 3, 32, 64) * 2 - 1)
    assert set(out.generator) == {"G_GAN", "G_GAN_Feat"}
    assert set(out.discriminator) == {"D_real", "D_fake"}
    out.generator_total.backward()
    grads = [p.grad for p in model.netG.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _vgg_file(tmp_path):
    from torchvision.models import vgg

    feats = vgg.make_layers(vgg.cfgs["E"])
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(1)  # full torchvision files also hold these
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    return path, feats


def test_vgg_loss_matches_manual_slices(tmp_path):
    path, feats = _vgg_file(tmp_path)
    loss = VGGLoss(load_vgg19_state_dict(path))
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 are layers 1, 6, 11, 20, 29 of features
    expected, hx, hy = 0.0, x, y
    weights = {1: 1 / 32, 6: 1 / 16, 11: 1 / 8, 20: 1 / 4, 29: 1.0}
    for i in range(30):
        hx, hy = feats[i](hx), feats[i](hy)
        if i in weights:
            expected += weights[i] * (hx - hy).abs().mean().item()
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-4)
    assert loss(x, x).item() == 0.0
    assert not any(p.requires_grad for p in loss.parameters())


def test_vgg_loss_without_weights_is_a_clear_error():
    cfg = tiny_config(loss=LossConfig(use_vgg_loss=True))
    with pytest.raises(ConfigError, match="vgg19-dcbb9e9d.pth"):
        Pix2PixHD(cfg)


def test_vgg_weights_of_the_wrong_kind(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"model.1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a torchvision VGG19"):
        load_vgg19_state_dict(path)
    save_checkpoint(tmp_path / "x.pth", {"config": {}})  # our own format is not VGG either
    with pytest.raises(CheckpointError):
        load_vgg19_state_dict(tmp_path / "x.pth")


def test_precomputed_boundary_gives_the_same_losses():
    from model.encoding import boundary_map

    model = Pix2PixHD(tiny_config())
    label = torch.randint(0, 6, (1, 1, 32, 64))
    inst = label * 1000 + torch.randint(0, 2, (1, 1, 32, 64))
    image = torch.rand(1, 3, 32, 64) * 2 - 1
    torch.manual_seed(0)
    a = model.compute_losses(label, inst, image)
    b = model.compute_losses(label, inst, image, boundary=boundary_map(inst))
    for key in a.generator:
        torch.testing.assert_close(a.generator[key], b.generator[key])
    c = model.compute_losses(label, inst, image, boundary=torch.zeros(1, 1, 32, 64))
    assert not torch.equal(a.fake, c.fake)
