"""Intra-video Fréchet distance: each segment's feature distribution against the first segment's.

    FD_s = ||mu_s - mu_ref||^2 + Tr(S_s + S_ref - 2 (S_s S_ref)^{1/2})

where (mu_s, S_s) are the mean and covariance of segment s's per-frame features and (mu_ref, S_ref)
those of the first segment: 0 while the video keeps its first segment's look, growing as it drifts.

The features are weight-free and fixed: a 3-layer convolutional network with weights drawn from a
seeded CPU generator (the same on every machine), applied to frames resized to `size` x `size`,
global-average-pooled to `dim` numbers. Random convolutional features respond to colour, texture and
blur together, which is what "the video no longer looks like its beginning" needs; they are not a
perceptual embedding, so compare FD values within one study, not with FID/FVD.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class RandomConvFeatures:
    """Frames (n, 3, H, W) in [0, 1] -> (n, dim) features from a fixed-seed random conv net."""

    def __init__(self, dim: int = 64, size: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        widths = [3, dim // 4, dim // 2, dim]
        # Kaiming-normal scale keeps activations O(1) through the ReLUs.
        self.weights = [torch.randn(o, i, 3, 3, generator=g) * math.sqrt(2.0 / (i * 9))
                        for i, o in zip(widths[:-1], widths[1:])]
        self.size, self.dim = size, dim

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), size=(self.size, self.size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = (x - 0.5) / 0.25
        for w in self.weights:
            x = F.relu(F.conv2d(x, w, stride=2, padding=1))
        return x.mean(dim=(-2, -1)).double()


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """(n, d) -> mean (d,), covariance (d, d) (unbiased; zero for a single sample), float64."""
    f = features.double()
    mu = f.mean(dim=0)
    if f.shape[0] < 2:
        return mu, torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrtm_psd(a: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """Fréchet distance between two Gaussians; Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½), exact for PSD S."""
    r1 = _sqrtm_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return float(value.clamp_min(0))
