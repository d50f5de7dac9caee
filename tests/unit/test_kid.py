"""KID / FID against naive reference implementations and known properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.errors import InputError
from model.kid import SegmenterFeatures, fid, inception_weights_path, kid, kid_from_features
from model.pspnet import PSPNet, PSPNetConfig


def _k(a: np.ndarray, b: np.ndarray) -> float:
    return (float(a @ b) / len(a) + 1) ** 3


def _naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2, the textbook double loops over distinct pairs."""
    n, m = len(x), len(y)
    sxx = sum(_k(x[i], x[j]) for i, j in itertools.permutations(range(n), 2))
    syy = sum(_k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    sxy = sum(_k(x[i], y[j]) for i in range(n) for j in range(m))
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def _naive_jackknife(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sample jackknife: recompute with each real, then each generated row left out."""
    n, m = len(x), len(y)
    lx = np.array([_naive_mmd2(np.delete(x, i, 0), y) for i in range(n)])
    ly = np.array([_naive_mmd2(x, np.delete(y, j, 0)) for j in range(m)])
    var = (n - 1) / n * ((lx - lx.mean()) ** 2).sum() + (m - 1) / m * ((ly - ly.mean()) ** 2).sum()
    return float(np.sqrt(var))


def test_kid_matches_naive_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), torch.randn(6, 5, generator=g) + 0.3
    got = kid(x, y, "t")
    xn, yn = x.double().numpy(), y.double().numpy()
    assert got.value == pytest.approx(_naive_mmd2(xn, yn), rel=1e-9, abs=1e-12)
    assert got.std_error == pytest.approx(_naive_jackknife(xn, yn), rel=1e-9)
    assert (got.n_real, got.n_fake, got.space) == (7, 6, "t")


def test_kid_near_zero_for_one_distribution_positive_for_a_shift() -> None:
    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 16, generator=g)
    same = kid(real, torch.randn(200, 16, generator=g))
    shifted = kid(real, torch.randn(200, 16, generator=g) + 0.5)
    assert abs(same.value) < 3 * same.std_error  # unbiased: centred on 0
    assert shifted.value > 5 * shifted.std_error
    assert shifted.value > 10 * abs(same.value)


def test_kid_standard_error_matches_the_spread_of_repeated_estimates() -> None:
    """The jackknife standard error of one estimate predicts the spread of KID over
    independent draws of the same two distributions (within Monte-Carlo noise)."""
    g = torch.Generator().manual_seed(2)
    values, errors = [], []
    for _ in range(60):
        k = kid(torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g) + 0.4)
        values.append(k.value)
        errors.append(k.std_error)
    spread, predicted = float(np.std(values, ddof=1)), float(np.mean(errors))
    assert 0.7 < predicted / spread < 1.4, (predicted, spread)


def test_fid_of_gaussians_and_its_sample_count_rule() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 2, generator=g)
    y = torch.randn(4000, 2, generator=g) * 2 + torch.tensor([1.0, 0.0])
    # closed form for N(0, I) vs N(mu, 4I): |mu|^2 + tr(I + 4I - 2*2I) = 1 + 2
    assert fid(x, y) == pytest.approx(3.0, abs=0.15)
    assert fid(torch.randn(10, 16), torch.randn(10, 16)) is None  # fewer samples than dims
    flat = kid_from_features(x[:50], y[:50], "toy")
    assert set(flat) == {
        "kid_toy",
        "kid_toy_std_error",
        "fid_toy",
        "kid_images_real",
        "kid_images_generated",
    }
    assert flat["fid_toy"] is not None and flat["kid_images_real"] == 50


def test_kid_rejects_mismatched_or_tiny_feature_sets() -> None:
    with pytest.raises(InputError, match="same D"):
        kid(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(InputError, match="at least 3"):
        kid(torch.randn(2, 3), torch.randn(5, 3))


def test_segmenter_features_are_the_pooled_cls_hidden_layer() -> None:
    torch.manual_seed(0)
    seg = PSPNet(PSPNetConfig(backbone="light", num_classes=19)).eval()
    captured = []
    seg.cls[2].register_forward_hook(lambda _m, _i, out: captured.append(out.mean(dim=(2, 3))))
    images = torch.rand(2, 3, 32, 64) * 2 - 1
    feats = SegmenterFeatures(seg)(images)
    from model.pspnet import segment

    segment(seg, torch.round((images + 1) * 127.5))  # the same network's own forward
    assert feats.shape == (2, seg.cls[0].out_channels)
    torch.testing.assert_close(feats, captured[-1])


def test_shipped_inception_gives_2048_features_and_separates_noise_from_flat() -> None:
    from model.kid import InceptionFeatures

    assert inception_weights_path() is not None  # `make setup` installs it
    net = InceptionFeatures()
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 32, 64, generator=g) * 2 - 1
    flat = torch.zeros(2, 3, 32, 64) + torch.linspace(-0.5, 0.5, 2).view(2, 1, 1, 1)
    f_noise, f_flat = net(noise), net(flat)
    assert f_noise.shape == (2, 2048) and bool((f_noise >= 0).all())  # pooled ReLU features
    within = (f_noise[0] - f_noise[1]).norm()
    across = (f_noise[0] - f_flat[0]).norm()
    assert across > 2 * within


def test_inception_file_other_than_the_pinned_one_is_refused(tmp_path) -> None:
    from model.kid import InceptionFeatures

    shipped = inception_weights_path()
    assert shipped is not None
    swapped = tmp_path / "default_1.pt"
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    swapped.write_bytes(bytes(data))
    with pytest.raises(InputError, match="not the FID Inception file"):
        InceptionFeatures(swapped)
