"""One ERFT training step in pure torch: inject, predict, regress onto v_rcy, measure the new errors.

Given the injected inputs, the DiT predicts v̂ from x_s = (1 - s) X~_vid + s X~_noi. The target is the
error-recycling velocity v_rcy = X~_noi - X_vid: it points back to the CLEAN latent, so the model
learns to undo the injected error instead of reproducing it. The errors the model makes now are then
measured by integrating one step to each end of the trajectory:

    clean end:  X^_vid = x_s - s v̂        vs  x_s - s v_rcy         E_vid = -s (v̂ - v_rcy)
    noise end:  X^_noi = x_s + (1-s) v̂    vs  x_s + (1-s) v_rcy     E_noi = (1-s) (v̂ - v_rcy)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from svi.flow import add_noise, expand_like
from svi.erft.injection import inject


def recycle_target(noise_tilde: Tensor, x0: Tensor) -> Tensor:
    """v_rcy = X~_noi - X_vid (the clean latent, not the injected one)."""
    return noise_tilde - x0


def bidirectional_errors(v_hat: Tensor, v_target: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """One-step errors at the clean end (E_vid) and at the noise end (E_noi)."""
    d = v_hat - v_target
    s = expand_like(sigma, d)
    return -s * d, (1 - s) * d


@dataclass
class StepResult:
    loss: Tensor  # (B,) per-sample MSE, unweighted, with grad
    e_vid: Tensor  # (B, C, T, h, w) detached, float32
    e_noi: Tensor  # (B, C, T, h, w) detached, float32


def erft_step(
    denoise: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    noise: Tensor,
    y: Tensor,
    sigma: Tensor,
    e_vid: Tensor,
    e_noi: Tensor,
    e_img: Tensor,
    loss_mask: Tensor | None = None,
) -> StepResult:
    """Inject, forward, regress onto v_rcy, and measure the new errors.

    denoise(x_s, y) -> v̂ wraps the DiT (timestep, text and image embeddings bound by the caller).
    Shapes: x0, noise, e_vid, e_noi (B, C, T, h, w); y (B, 4 + C, T, h, w); sigma (B,).
    With all errors zero this is plain flow-matching fine-tuning (target noise - x0).
    `loss_mask` (B, 1, T, 1, 1), 1 = a frame the model predicts, leaves the other latent frames out of the loss
    (the mean runs over the kept ones) and zeroes their errors: a backbone that takes leading latent frames as
    given (Wan 2.2 TI2V) is not asked to predict them.
    """
    x0_t, noise_t, y_t = inject(x0, noise, y, e_vid, e_noi, e_img)
    x_s = add_noise(x0_t, noise_t, sigma)
    v_hat = denoise(x_s, y_t).float()
    target = recycle_target(noise_t, x0).float()
    if loss_mask is None:
        loss = (v_hat - target).pow(2).flatten(1).mean(dim=1)
    else:
        keep = loss_mask.to(v_hat).expand_as(v_hat)
        loss = ((v_hat - target).pow(2) * keep).flatten(1).sum(dim=1) / keep.flatten(1).sum(dim=1).clamp_min(1)
    with torch.no_grad():
        err_vid, err_noi = bidirectional_errors(v_hat.detach(), target, sigma.float())
        if loss_mask is not None:
            err_vid, err_noi = err_vid * keep, err_noi * keep
    return StepResult(loss=loss, e_vid=err_vid, e_noi=err_noi)
