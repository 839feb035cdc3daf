"""Weight-free per-frame measurements (definitions and directions: docs/evaluate.md). Frames are float
(n, 3, H, W) in [0, 1].

Every function here is a pure map from frames to one number per frame (or per pair of frames);
aggregation into segments, drift summaries and file output live elsewhere.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV's grey conversion


def to_float(frames: np.ndarray | Tensor) -> Tensor:
    """uint8 (n, H, W, 3) -> float32 (n, 3, H, W) in [0, 1]."""
    x = torch.as_tensor(np.ascontiguousarray(frames))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def luma(x: Tensor) -> Tensor:
    """(n, 3, H, W) -> (n, H, W) grey level in [0, 1]."""
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * w).sum(dim=1)


# -- against ground truth ----------------------------------------------------------------------

def mse(x: Tensor, gt: Tensor) -> Tensor:
    """Per-frame mean squared error (n,) on [0, 1] pixels."""
    return (x - gt).pow(2).flatten(1).mean(dim=1)


def psnr_from_mse(mse_value: Tensor | float, cap_db: float = 60.0) -> Tensor:
    """PSNR = 10 log10(1 / MSE) for [0, 1] pixels, capped (identical frames would give infinity)."""
    m = torch.as_tensor(mse_value, dtype=torch.float64)
    return (10 * torch.log10(1.0 / m.clamp_min(1e-30))).clamp(max=cap_db)


def ssim(x: Tensor, gt: Tensor) -> Tensor:
    """Per-frame SSIM (n,) of Wang et al.: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1.

    torchmetrics' functional SSIM needs no torchvision; frames smaller than the window are an error."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs frames of at least 11x11 pixels, got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(x, gt, gaussian_kernel=True, sigma=1.5, kernel_size=11,
                                               data_range=1.0, k1=0.01, k2=0.03, reduction="none")


# -- colour ------------------------------------------------------------------------------------

def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB (n, 3, H, W) in [0, 1] -> CIELAB (D65) (n, 3, H, W): L in [0, 100]."""
    lin = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).pow(2.4))
    m = x.new_tensor([[0.4124564, 0.3575761, 0.1804375],
                      [0.2126729, 0.7151522, 0.0721750],
                      [0.0193339, 0.1191920, 0.9503041]])
    xyz = torch.einsum("ij,njhw->nihw", m, lin)
    xyz = xyz / x.new_tensor([0.95047, 1.0, 1.08883]).view(1, 3, 1, 1)
    eps = (6 / 29) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps).pow(1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[:, 1] - 16
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], dim=1)


def mean_lab(x: Tensor) -> Tensor:
    """(n, 3, H, W) -> (n, 3): the mean CIELAB colour of each frame."""
    return rgb_to_lab(x).flatten(2).mean(dim=2)


def colour_delta_e(x: Tensor, anchor_lab: Tensor) -> Tensor:
    """ΔE76 between each frame's mean Lab colour and the anchor's (n,): ~2.3 is a just-noticeable change."""
    return (mean_lab(x) - anchor_lab.view(1, 3)).norm(dim=1)


def colour_histogram(x: Tensor, bins: int = 8) -> Tensor:
    """Joint RGB histogram, bins^3 cells, normalised to sum 1 per frame: (n, bins^3)."""
    q = (x * bins).long().clamp_(0, bins - 1)  # (n, 3, H, W)
    cell = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.zeros(x.shape[0], bins ** 3, dtype=torch.float64)
    hist.scatter_add_(1, cell.flatten(1), torch.ones_like(cell.flatten(1), dtype=torch.float64))
    return hist / hist.sum(dim=1, keepdim=True)


def bhattacharyya(h: Tensor, h_ref: Tensor) -> Tensor:
    """Hellinger form of the Bhattacharyya distance sqrt(1 - sum sqrt(h h_ref)), in [0, 1], per row of h."""
    bc = (h * h_ref.view(1, -1)).sqrt().sum(dim=1)
    return (1 - bc).clamp_min(0).sqrt()


# -- sharpness ---------------------------------------------------------------------------------

def laplacian_variance(x: Tensor) -> Tensor:
    """Var(∇² grey) per frame (n,), grey in 0..255 units (as OpenCV's variance-of-Laplacian). Blur lowers
    it; noise raises it too, so read it next to the high-frequency energy and flicker."""
    g = luma(x).unsqueeze(1) * 255.0
    k = g.new_tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(g, k).flatten(1).var(dim=1, unbiased=False)


def high_frequency_energy(x: Tensor, cutoff: float = 0.25) -> Tensor:
    """Fraction of the grey image's spectral energy (DC excluded) at radial frequency >= cutoff cycles/px.

    Scale-free in [0, 1]: blur lowers it, added noise raises it."""
    g = luma(x)
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(g.double()).abs().pow(2)
    fy = torch.fft.fftfreq(g.shape[-2], dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(g.shape[-1], dtype=torch.float64).view(1, -1)
    high = (fx.pow(2) + fy.pow(2)).sqrt() >= cutoff
    total = power.flatten(1).sum(dim=1)
    return torch.where(total > 0, (power * high).flatten(1).sum(dim=1) / total.clamp_min(1e-300),
                       torch.zeros_like(total))


# -- time --------------------------------------------------------------------------------------

def frame_differences(x: Tensor, previous: Tensor | None = None) -> Tensor:
    """mean |F_t - F_{t-1}| on [0, 1] pixels for each frame t of x (n,); the first entry uses `previous`
    (the frame before x, e.g. the last frame of the previous segment) or is NaN without it."""
    first = (x[:1] - previous.view(1, *x.shape[1:])).abs().flatten(1).mean(dim=1) if previous is not None \
        else x.new_full((1,), math.nan)
    rest = (x[1:] - x[:-1]).abs().flatten(1).mean(dim=1)
    return torch.cat([first, rest])


def flicker_from_difference(d: Tensor) -> Tensor:
    """VBench temporal flickering per frame pair: (255 - mean|ΔF|_uint8) / 255 = 1 - mean|ΔF|_[0,1]."""
    return 1.0 - d


def seam_ratio(diffs: np.ndarray, seam_frames: list[int]) -> float:
    """mean |ΔF| over frames that start a clip / mean |ΔF| over all other frames (≈ 1: no visible jump)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    is_seam = np.zeros(len(diffs), dtype=bool)
    is_seam[[t for t in seam_frames if 0 < t < len(diffs)]] = True
    valid = np.isfinite(diffs)
    at, off = diffs[is_seam & valid], diffs[~is_seam & valid]
    if not len(at) or not len(off):
        return math.nan
    base = off.mean()
    return float(at.mean() / base) if base > 0 else (math.inf if at.mean() > 0 else 1.0)


# -- latents (MIGA-style self-similarity) ------------------------------------------------------

def latent_frame_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Channel cosine between latent frames, averaged over positions: a, b (..., C, h, w) -> (...)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-3, eps=1e-8).flatten(-2).mean(dim=-1)
