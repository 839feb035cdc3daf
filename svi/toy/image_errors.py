"""Image-error sources studied on the toy world (`img_source=toy_*`): research variants, not the paper.

The paper's E_img is a window of a stored video error (`svi.erft.image_error.WindowImageError`). At toy
scale that error comes from another sample, with its sprites in other places; these sources make E_img
look more like what the next clip's condition really carries at inference. All three need an
autoencoder whose decode is linear (the toy `PatchAutoencoder`), because they move an error from the
latent of a whole clip to the latent of the next clip's condition (`last_frames_map`):

* `toy_last_frames`: a stored video error from the bank, mapped (`LastFramesImageError`);
* `toy_self`: this sample's own one-step error, measured with one extra no-grad forward (`SelfImageError`);
* `toy_rollout`: the error of a whole clip the model samples for this sample (`RolloutImageError`).

experiments/toy_image_errors/README.md has what each did at toy scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from svi.erft.image_error import ImageErrorRequest, ImageErrorSource, WindowImageError, allowed_buckets
from svi.flow import add_noise, euler_step, expand_like, inference_sigmas, to_timesteps


def last_frames_map(stack, num_motion_frames: int, source: str) -> Callable[[Tensor], Tensor]:
    """A clip error (C, T, h, w) -> the error of the next clip's condition latent it causes (C, T, h, w).

    At inference the next clip's condition holds the previous clip's last K frames, decoded and
    re-encoded; so the error it carries is the error of those frames, in the condition's own latent
    layout (for Wan's causal latent layout, motion frame 0 alone fills latent 0). The map decodes the
    error to pixel frames with the autoencoder's linear part, puts its last K frames in the K motion
    frames of an otherwise error-free condition video and encodes that. Exact for a linear autoencoder;
    the Wan VAE is not linear, so it is refused.
    """
    vae = stack.require("vae", f"img_source={source}")
    if not (hasattr(vae, "linear_decode") and hasattr(vae, "linear_encode")):
        raise ValueError(f"img_source={source} needs an autoencoder with a linear decode (the toy "
                         f"PatchAutoencoder); {type(vae).__name__} has none. Use img_source=window.")
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(-1, 1, 1, 1)
    K = int(num_motion_frames)

    def to_condition(e: Tensor) -> Tensor:
        pix = vae.linear_decode((e.float().cpu() * std)[None].to(vae.dtype))[0]  # (3, F, H, W)
        if K > pix.shape[1]:
            raise ValueError(f"{K} motion frames exceed the {pix.shape[1]} frames of the clip error")
        cond = torch.zeros_like(pix)
        cond[:, :K] = pix[:, pix.shape[1] - K :]
        return vae.linear_encode(cond[None])[0].float() / std

    return to_condition


def _mapped_rows(request: ImageErrorRequest, err: Tensor | None, img_map: Callable[[Tensor], Tensor],
                 scale: float) -> Tensor:
    """E_img: each selected row's clip error `err` (B, C, T, h, w) through `img_map`, times `scale`."""
    e_img = request.zeros()
    if err is not None:
        for i in request.select.nonzero().flatten().tolist():
            e_img[i] = (img_map(err[i])[:, : request.num_frames] * scale).to(e_img)
    return e_img


class LastFramesImageError(WindowImageError):
    """`toy_last_frames`: a stored video error from any (allowed) bucket, through `last_frames_map`
    instead of a window: the error of that clip's last K frames where the next condition carries them."""

    def __init__(self, max_sigma: float = 1.0, scale: float = 1.0):
        super().__init__(window="random", max_sigma=max_sigma, scale=scale)
        self.img_map: Callable[[Tensor], Tensor] | None = None

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        super().bind(stack, condition, flow, grid_sigmas)
        self.img_map = last_frames_map(stack, condition.num_motion_frames, "toy_last_frames")

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        e_img = request.zeros()
        for i in request.select.nonzero().flatten().tolist():
            e = request.memory.sample_any("vid", request.generator, self.buckets)  # (C, T, h, w)
            e_img[i] = (self.img_map(e)[:, : request.num_frames] * self.scale).to(e_img)
        return e_img


class SelfImageError(ImageErrorSource):
    """`toy_self`: E_img from this sample's own current error (a per-sample bank of one).

    The model runs once more on the batch, without gradients, from x_s at a noise level drawn from the
    allowed buckets (`max_sigma`). Its clean-end error x^_0 - x0 (x^_0 = x_s - s v^) is what E_vid would
    store for this sample; `last_frames_map` turns it into a condition error. So the image error carries
    this sample's background, colours and sprites, moved by a few frames of motion, instead of another
    sample's errors in the wrong place. Needs no bank.
    """

    def __init__(self, max_sigma: float = 1.0, scale: float = 1.0):
        if not 0.0 < max_sigma <= 1.0 or scale < 0.0:
            raise ValueError(f"img_source.max_sigma must be in (0, 1] and img_source.scale >= 0, "
                             f"got {max_sigma}, {scale}")
        self.max_sigma, self.scale = max_sigma, scale
        self.grid_sigmas: Tensor | None = None
        self.buckets: Tensor | None = None

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        self.grid_sigmas = grid_sigmas.detach().cpu().float()
        allowed = allowed_buckets(grid_sigmas, self.max_sigma)
        self.buckets = torch.arange(grid_sigmas.numel()) if allowed is None else allowed
        self.img_map = last_frames_map(stack, condition.num_motion_frames, "toy_self")

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        if not bool(request.select.any()):
            return request.zeros()
        x0, g = request.x0, request.generator
        pick = self.buckets[torch.randint(0, self.buckets.numel(), (x0.shape[0],), generator=g)]
        sigma = self.grid_sigmas[pick].to(x0.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g).to(device=x0.device, dtype=x0.dtype)
        x_s = add_noise(x0, noise, sigma)
        with torch.no_grad():
            v_hat = request.velocity(x_s, request.y, to_timesteps(sigma)).float()
        err = x_s.float() - expand_like(sigma, v_hat) * v_hat - x0.float()  # (B, C, T, h, w)
        return _mapped_rows(request, err, self.img_map, self.scale)


class RolloutImageError(ImageErrorSource):
    """`toy_rollout`: E_img from a whole clip the model samples for this sample.

    At inference the next clip's condition holds the last K frames of a clip the model *sampled*, not of a
    one-step prediction. So the model samples this very clip from fresh noise and its clean condition,
    with the sampler's Euler schedule (`steps`, 0 = `flow.num_inference_steps`), without gradients; the
    generated clip's error x^_0 - x0 goes through `last_frames_map`. That is the hand-off error of one
    clip of rollout with the current weights, at `steps` no-grad forwards per training step. Needs no bank.
    """

    def __init__(self, steps: int = 0, scale: float = 1.0):
        if steps < 0:
            raise ValueError(f"img_source.steps must be >= 0 (0 = flow.num_inference_steps), got {steps}")
        if scale < 0:
            raise ValueError(f"img_source.scale must be >= 0, got {scale}")
        self.steps, self.scale = steps, scale
        self.sigmas: Tensor | None = None

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        sig = inference_sigmas(self.steps or flow.num_inference_steps, flow.shift)
        self.sigmas = torch.cat([sig, sig.new_zeros(1)])  # (N + 1,) descending to 0
        self.img_map = last_frames_map(stack, condition.num_motion_frames, "toy_rollout")

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        if not bool(request.select.any()):
            return request.zeros()
        x0, sig = request.x0, self.sigmas
        B = x0.shape[0]
        x = torch.randn(x0.shape, generator=request.generator).to(device=x0.device, dtype=torch.float32)
        with torch.no_grad():
            for k in range(len(sig) - 1):
                s = torch.full((B,), float(sig[k]), device=x0.device)
                v = request.velocity(x.to(x0.dtype), request.y, to_timesteps(s)).float()
                x = euler_step(x, v, s, torch.full_like(s, float(sig[k + 1])))
        return _mapped_rows(request, x - x0.float(), self.img_map, self.scale)
