"""Flow-matching math (diffusers Wan convention), as pure functions.

    x_s = (1 - s) * x0 + s * noise          s = sigma in [0, 1], t = 1000 * s
    v   = noise - x0                         the velocity the DiT predicts
    shift(s) = k * s / (1 + (k - 1) * s)     k = 5 for SVI at 480p (training and inference)

diffusers' `FlowMatchEulerDiscreteScheduler.step` is stateful and scalar-only, so training-time
one-step jumps, error measurement and per-frame updates use these functions instead. With
`shift=5` and `sigmas=linspace(1, 0, N+1)[:-1]` the scheduler reproduces `inference_sigmas` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """Time shift that spends more steps at high noise: s' = k s / (1 + (k-1) s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_sigmas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = 5.0) -> Tensor:
    """The 1000-step shifted training grid, descending from 1.

    `linspace(1, 0, n+1)[:-1]` (the last point, sigma 0, is dropped as in the official
    `extra_one_step` schedule) then shifted: sigma in [0.005, 1] for n=1000, k=5.
    """
    return shift_sigmas(torch.linspace(1.0, 0.0, num_timesteps + 1, dtype=torch.float64)[:-1], shift).float()


def inference_sigmas(num_steps: int = 50, shift: float = 5.0) -> Tensor:
    """Euler sampling sigmas (N,): shift(linspace(1, 0, N+1)[:-1]); the solver ends at sigma 0."""
    return shift_sigmas(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1], shift).float()


def to_timesteps(sigmas: Tensor) -> Tensor:
    """t = 1000 * sigma, the value the DiT's timestep embedding takes."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def expand_like(v: Tensor, x: Tensor) -> Tensor:
    """Broadcast a per-sample (B,) or per-frame (B, T) value over a video tensor (B, C, T, H, W)."""
    if v.ndim == 1:
        return v.view(-1, 1, 1, 1, 1).to(x.dtype)
    if v.ndim == 2:  # per latent frame
        return v.view(v.shape[0], 1, v.shape[1], 1, 1).to(x.dtype)
    raise ValueError(f"expected a (B,) or (B, T) tensor of sigmas, got shape {tuple(v.shape)}")


def add_noise(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x_s = (1 - s) x0 + s noise; sigma (B,) or (B, T)."""
    s = expand_like(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching target v = noise - x0 (points from data to noise)."""
    return noise - x0


def euler_step(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """x_{s'} = x_s + (s' - s) v, per sample (B,) or per latent frame (B, T)."""
    return x + (expand_like(sigma_next, x) - expand_like(sigma, x)) * v


def predict_x0(x: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """One step to the clean end: x_0 = x_s - s v."""
    return x - expand_like(sigma, x) * v


def predict_noise(x: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """One step to the noise end: x_1 = x_s + (1 - s) v."""
    return x + (1 - expand_like(sigma, x)) * v


def nearest_grid_index(timesteps: Tensor, grid_timesteps: Tensor) -> Tensor:
    """Index of the nearest grid timestep for each t: (B,) -> (B,) long.

    ERFT buckets errors by the nearest of the N_test = 50 inference timesteps, so an error
    measured at training time t is replayed where the sampler would meet it.
    """
    return (timesteps.view(-1, 1).float() - grid_timesteps.view(1, -1).float()).abs().argmin(dim=1)


def loss_weights(kind: str, sigmas: Tensor) -> Tensor:
    """Per-timestep loss weight over the training grid, mean 1.

    `svi_bell`: w(t) = exp(-2 ((t - 500) / 1000)^2) shifted to min 0 and normalised to mean 1 over
    the training timesteps (official SVI). `none`: all ones.
    """
    if kind == "none":
        return torch.ones_like(sigmas)
    if kind == "svi_bell":
        t = to_timesteps(sigmas.double())
        w = torch.exp(-2 * ((t - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
        w = w - w.min()
        return (w * (len(w) / w.sum())).float()
    raise ValueError(f"unknown loss weighting {kind!r}; choose 'svi_bell' or 'none'")


def frame_to_token_timesteps(t_frame: Tensor, latent_height: int, latent_width: int, patch: int = 2) -> Tensor:
    """Per-latent-frame timesteps (B, T) -> per-token (B, T*h'*w') for Wan (tokens ordered f, h, w)."""
    tokens_per_frame = math.ceil(latent_height / patch) * math.ceil(latent_width / patch)
    return t_frame.repeat_interleave(tokens_per_frame, dim=-1)


@dataclass
class FlowConfig:
    """Schedule knobs shared by training and sampling (paper values)."""

    shift: float = 5.0  # k in shift(s); 5 at 480p for training and inference
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS  # size of the uniform training grid
    loss_weight: str = "svi_bell"  # w(t): svi_bell | none
    num_inference_steps: int = 50  # N Euler steps at generation

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"flow.shift must be > 0, got {self.shift}")
        loss_weights(self.loss_weight, torch.ones(2))  # validates the name
