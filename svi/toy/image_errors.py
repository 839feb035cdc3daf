"""Image-error sources studied on the toy world (`img_source=toy_*`): research variants, not the paper.

The paper's E_img is a window of a stored video error (`svi.erft.image_error.WindowImageError`). At toy
scale that error comes from another sample, with its sprites in other places; these sources make E_img
look more like what the next clip's condition really carries at inference. All three need an
autoencoder whose decode is linear (the toy `PatchAutoencoder`), because they move an error from the
latent of a whole clip to the latent of the next clip's condition (`last_frames_map`):

* `toy_last_frames`: a stored video error from the bank, mapped (`LastFramesImageError`);
* `toy_self`: this sample's own one-step error, measured with one extra no-grad forward (`SelfImageError`);
* `toy_rollout`: the error of a whole clip the model samples for this sample (`RolloutImageError`).

One keeps the paper's error and moves nothing, but leaves part of the condition clean:

* `toy_motion_frames`: the paper's window E_img, kept only on the condition's first pixel frames (the
  motion frames by default), so the reference copies beside them stay clean (`MotionFramesImageError`).

A fifth needs no map, and so no linear autoencoder:

* `toy_handoff`: the model samples the clip *before* this one from its true condition and hands its last K
  frames over through 8 bits, as a rollout does; E_img is the difference this makes to this clip's
  condition latent (`HandoffImageError`; the data must carry the previous clip: `data.prev_clip=true`).

experiments/toy_image_errors/README.md has what each did at toy scale.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from svi.erft.image_error import ImageErrorRequest, ImageErrorSource, WindowImageError, allowed_buckets
from svi.flow import add_noise, euler_step, expand_like, inference_sigmas, to_timesteps
from svi.sampling.media import quantize_frames


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


@torch.no_grad()
def _sample(request: ImageErrorRequest, y: Tensor, sigmas: Tensor) -> Tensor:
    """A clip the model samples on condition `y` with Euler over `sigmas` (descending to 0), from fresh noise of
    the latents' shape: (B, C, T, h, w) float32, no gradients."""
    x0 = request.x0
    x = torch.randn(x0.shape, generator=request.generator).to(device=x0.device, dtype=torch.float32)
    for k in range(len(sigmas) - 1):
        s = torch.full((x0.shape[0],), float(sigmas[k]), device=x0.device)
        v = request.velocity(x.to(x0.dtype), y, to_timesteps(s)).float()
        x = euler_step(x, v, s, torch.full_like(s, float(sigmas[k + 1])))
    return x


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


class MotionFramesImageError(WindowImageError):
    """`toy_motion_frames`: the paper's E_img, kept only on the first `frames` pixel frames of the condition.

    The condition video is K motion frames, then copies of the reference frame. Officially E_img covers
    `y_error_num` = 3 of an 81-frame clip's 21 latent frames: the motion frame and 8 reference copies; the
    other 72 copies of the reference stay clean, so the model always sees a clean reference beside the
    corrupted motion frames. A toy clip has 2 latent frames and E_img over both (`y_error_num` = 2)
    corrupts every reference copy too. This source draws the paper's error (a random window of a stored
    video error from any allowed bucket, `WindowImageError`) and removes the part that falls on pixel
    frames `frames` and later: it decodes the error with the autoencoder's linear part, keeps those frames
    only, encodes them and subtracts. Exact for a frame-separable linear autoencoder (the toy's), where
    every pixel frame of a latent has its own channels: the kept frames' error is the window's up to float
    rounding, and `frames` >= F gives the window source bit for bit. `frames` = 0 means K (the motion frames).
    """

    def __init__(self, frames: int = 0, window: str = "random", max_sigma: float = 1.0, scale: float = 1.0):
        if frames < 0:
            raise ValueError(f"img_source.frames is how many pixel frames of the condition keep E_img "
                             f"(0 = the K motion frames); it must be >= 0, got {frames}")
        super().__init__(window=window, max_sigma=max_sigma, scale=scale)
        self.frames, self.keep = frames, frames
        self.vae, self.std = None, None

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        super().bind(stack, condition, flow, grid_sigmas)
        vae = stack.require("vae", "img_source=toy_motion_frames")
        if not getattr(vae.config, "frame_separable", False):
            raise ValueError(f"img_source=toy_motion_frames removes E_img from chosen pixel frames, which is "
                             f"exact only for a frame-separable linear autoencoder (the toy PatchAutoencoder "
                             f"with frame_separable=true); {type(vae).__name__} is not one. Use "
                             f"img_source=window.")
        self.vae = vae
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.keep = self.frames or int(condition.num_motion_frames)

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        e_img = super().__call__(request)  # (B, C, n, h, w), zero where not selected
        n = e_img.shape[2]
        if 1 + 4 * (n - 1) <= self.keep or not bool(request.select.any()):
            return e_img  # every pixel frame the error covers is kept
        std = self.std.to(e_img.device)
        raw = (e_img.float() * std).cpu()
        pix = self.vae.linear_decode(raw.to(self.vae.dtype))  # (B, 3, F, H, W), F = 1 + 4 (n - 1)
        later = torch.zeros_like(pix)
        later[:, :, self.keep :] = pix[:, :, self.keep :]
        drop = self.vae.linear_encode(later).float()  # the error on frames >= keep, in latent units
        return (e_img.float() - (drop.to(e_img.device) / std)).to(e_img)


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
        x = _sample(request, request.y, self.sigmas)
        return _mapped_rows(request, x - request.x0.float(), self.img_map, self.scale)


class HandoffImageError(ImageErrorSource):
    """`toy_handoff`: E_img = the error of one real hand-off, in place.

    At inference a clip's motion frames are the last K frames the model wrote in the clip before, decoded,
    rounded to 8 bits and encoded again. Here the model samples that previous clip (`prev_video` in the
    batch: F true frames ending with this clip's K motion frames) from its true condition, with the
    sampler's Euler schedule (`steps`, 0 = `flow.num_inference_steps`), no gradients; its last K frames go
    through the same pixel round trip and become this clip's motion frames. E_img is the resulting change
    of this clip's condition latent (its first `y_error_num` latent frames), times `scale`. The error is
    this sample's own, at this sample's sprites, of the size the first hand-off of a rollout has; it needs
    no bank and no linear map. Cost: `steps` no-grad forwards per training step. Shot-type conditions (no
    extra signal inputs).

    `handoffs=N` (N > 1) chains N hand-offs, as clip N of a rollout meets them: the model samples the clip
    N before this one from its true condition, hands it over, samples the next from that handed-over
    condition, and so on; the N-th hand-off gives this clip's motion frames (`data.prev_clip=N`). Cost:
    N x `steps` no-grad forwards per training step.

    `placement="other"` (a control) gives each sample the hand-off error of the next sample in the batch
    instead of its own: an error of the same kind and size, from another world, where that world's sprites
    were, as a replay memory's errors come from other samples. It separates what kind of error is recycled
    from where it lands. `placement="mix"` gives each selected sample its own error with probability
    `own_fraction` and the next sample's otherwise (a coin per sample from the training generator): both
    kinds of place in one model.
    """

    PLACEMENTS = ("own", "other", "mix")

    def __init__(self, steps: int = 0, scale: float = 1.0, quantize: str = "round", placement: str = "own",
                 handoffs: int = 1, own_fraction: float = 0.5):
        if handoffs < 1:
            raise ValueError(f"img_source.handoffs must be >= 1 (hand-offs chained before the clip), "
                             f"got {handoffs}")
        if steps < 0:
            raise ValueError(f"img_source.steps must be >= 0 (0 = flow.num_inference_steps), got {steps}")
        if scale < 0:
            raise ValueError(f"img_source.scale must be >= 0, got {scale}")
        if placement not in self.PLACEMENTS:
            raise ValueError(f"img_source.placement must be one of {self.PLACEMENTS}, got {placement!r}")
        if not 0.0 <= own_fraction <= 1.0:
            raise ValueError(f"img_source.own_fraction is the probability a sample gets its own hand-off "
                             f"error with placement=mix; it must lie in [0, 1], got {own_fraction}")
        quantize_frames(torch.zeros(1, 3, 1, 1, 1), quantize)  # refuses an unknown mode now, naming the choices
        self.steps, self.scale, self.quantize, self.placement = steps, scale, quantize, placement
        self.handoffs, self.own_fraction = handoffs, own_fraction
        self.sigmas: Tensor | None = None

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        if condition.extra_fields:
            raise ValueError(f"img_source=toy_handoff samples the previous clip with this clip's signal; the "
                             f"{condition.name!r} condition takes {list(condition.extra_fields)} per clip. Use "
                             f"img_source=window.")
        sig = inference_sigmas(self.steps or flow.num_inference_steps, flow.shift)
        self.sigmas = torch.cat([sig, sig.new_zeros(1)])  # (N + 1,) descending to 0
        self.stack, self.condition = stack, condition

    def ready(self, memory) -> bool:
        return True

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        if not bool(request.select.any()):
            return request.zeros()
        batch = request.batch or {}
        if "prev_video" not in batch or "ref_image" not in batch:
            raise ValueError("img_source=toy_handoff needs the clip before each training clip: train on raw toy "
                             "clips with data.prev_clip=true (data=toy; a latent cache holds no previous clip)")
        if self.placement != "own" and request.y.shape[0] < 2:
            raise ValueError(f"img_source.placement={self.placement} gives samples another sample's hand-off "
                             f"error, so it needs a batch of at least 2: raise data.batch_size, or use "
                             f"placement=own")
        stack, condition, y = self.stack, self.condition, request.y
        prev, ref = batch["prev_video"].to(y.device), batch["ref_image"].to(y.device)
        F = request.x0.shape[2] * 4 - 3  # pixel frames of T latent frames (T = 1 + (F - 1) / 4)
        K, N = condition.num_motion_frames, self.handoffs
        span = F + (N - 1) * (F - K)  # the N clips before this one, chained
        if prev.shape[2] < span:
            raise ValueError(f"img_source.handoffs={N} needs the {N} clips before each training clip "
                             f"({span} frames), the batch holds {prev.shape[2]}: set data.prev_clip={N}")
        prev = prev[:, :, prev.shape[2] - span :]
        with torch.no_grad():
            y_handed = condition.build_y(stack, prev[:, :, :K], ref, F)  # the first chained clip's true one
            for _ in range(N):  # sample from the current condition, hand the last K frames over (8 bits)
                x = _sample(request, y_handed, self.sigmas)
                frames = quantize_frames(stack.decode_latents(x), self.quantize)  # (B, F, H, W, 3) uint8
                handed = frames[:, -K:].permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)  # (B, 3, K, H, W)
                motions = condition.motion_frames(handed, batch.get("draws"))  # as many as y was built with
                y_handed = torch.cat([condition.build_y(stack, m[None], ref[i : i + 1], F)
                                      for i, m in enumerate(motions)])
        n = request.num_frames
        err = (y_handed[:, 4:, :n] - y[:, 4:, :n]).float() * self.scale
        if self.placement != "own":
            other = err.roll(-1, dims=0)  # sample i gets sample i + 1's error (the last gets the first's)
            if self.placement == "other":
                err = other
            else:  # mix: a coin per sample, own with probability own_fraction
                own = torch.rand(err.shape[0], generator=request.generator) < self.own_fraction
                err = torch.where(own.to(err.device).view(-1, 1, 1, 1, 1), err, other)
        keep = request.select.to(err.device).view(-1, 1, 1, 1, 1)
        return torch.where(keep, err, torch.zeros_like(err)).to(request.zeros())
