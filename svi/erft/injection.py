"""Which errors to inject into a training sample, and drawing them from the replay memory.

SPEC §3 steps 1-3. Each sample independently draws `inject_noi ~ Bern(p_noi)`,
`inject_vid ~ Bern(p_vid)`, `inject_img ~ Bern(p_img)`, then `clean ~ Bern(p_clean)` switches all
three off. An injection also needs its bank to hold something (each bank gated on itself: the
official code gates the video-error injection on the noise bank, which we do not copy).

Selective resampling: E_vid / E_noi come from the bucket of the current timestep's grid index; E_img
comes from the video-error bank over all buckets (the next clip's reference carries the error of the
whole previous trajectory), as a random window of `y_error_num` latent frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from svi.flow import add_noise, euler_step, expand_like, to_timesteps


IMG_SOURCES = ("window", "last_frames", "self", "rollout")
PER_SAMPLE_SOURCES = ("self", "rollout")  # E_img measured on the sample itself, not drawn from the bank


@dataclass
class InjectionConfig:
    """Knobs of error injection (paper symbols in comments)."""

    enabled: bool = True  # ERFT on; False = plain LoRA fine-tuning (nothing injected, no memory)
    p_noi: float = 0.01  # p_noi: probability of adding a noise-side error E_noi to the noise
    p_vid: float = 0.9  # p_vid: probability of adding a video-side error E_vid to the clean latent
    p_img: float = 0.9  # p_img: probability of adding an image error E_img to the condition latent
    p_clean: float = 0.2  # p_clean: probability of a fully clean sample (Shot 0.2, Film 0.5)
    clean_buffer_update_prob: float = 0.1  # store errors of clean samples only this often
    y_error_num: int = 3  # latent frames of the condition that receive E_img (1 = last-frame option)
    error_modulate_factor: float = 0.0  # f: each error scaled by U(1-f, 1+f); 0 officially
    img_max_sigma: float = 1.0  # E_img only from buckets with sigma <= this (1.0 = all buckets, official)
    img_scale: float = 1.0  # E_img multiplied by this (1.0 = official)
    # window (official): a random window of y_error_num latent frames of a stored E_vid.
    # last_frames: the error of the stored clip's last K pixel frames, placed where the next clip's condition
    # carries them (its K motion frames) and re-encoded in the condition's latent layout. Needs an
    # autoencoder with a linear decode (the toy PatchAutoencoder).
    # self: a per-sample error instead of the shared bank: the model's own current one-step error on this
    # sample, mapped as last_frames (`self_image_error`); one more no-grad forward per step; linear autoencoder.
    # rollout: per sample, the error of a whole generated clip: the model samples this clip from its clean
    # condition (img_rollout_steps Euler steps, no grad) and the generated last K frames' error, mapped as
    # last_frames, is E_img: the handoff error the next clip meets at inference (`rollout_image_error`).
    img_source: str = "window"
    img_rollout_steps: int = 0  # Euler steps of img_source=rollout; 0 = flow.num_inference_steps

    def __post_init__(self) -> None:
        for name in ("p_noi", "p_vid", "p_img", "p_clean", "clean_buffer_update_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"injection.{name} must be a probability in [0, 1], got {value}")
        if self.y_error_num < 1:
            raise ValueError(f"injection.y_error_num must be >= 1, got {self.y_error_num}")
        if not 0.0 < self.img_max_sigma <= 1.0:
            raise ValueError(f"injection.img_max_sigma must be in (0, 1], got {self.img_max_sigma}")
        if self.img_scale < 0.0:
            raise ValueError(f"injection.img_scale must be >= 0, got {self.img_scale}")
        if self.img_source not in IMG_SOURCES:
            raise ValueError(f"injection.img_source must be one of {IMG_SOURCES}, got {self.img_source!r}")
        if self.img_rollout_steps < 0:
            raise ValueError(f"injection.img_rollout_steps must be >= 0 (0 = the sampler's steps), "
                             f"got {self.img_rollout_steps}")
        if not 0.0 <= self.error_modulate_factor < 1.0:
            raise ValueError(f"injection.error_modulate_factor must be in [0, 1), got {self.error_modulate_factor}")


@dataclass
class Injection:
    """Per-sample injection decisions, each a bool tensor (B,)."""

    vid: Tensor
    noi: Tensor
    img: Tensor

    @property
    def clean(self) -> Tensor:
        """A sample is clean when no error was injected into it at all."""
        return ~(self.vid | self.noi | self.img)


def draw_injection(cfg: InjectionConfig, batch_size: int, generator: torch.Generator | None = None) -> Injection:
    """Independent Bernoulli draws per sample, then the clean coin switches everything off."""
    if not cfg.enabled:
        off = torch.zeros(batch_size, dtype=torch.bool)
        return Injection(vid=off, noi=off.clone(), img=off.clone())
    u = torch.rand(4, batch_size, generator=generator)
    noi, vid, img, clean = u[0] < cfg.p_noi, u[1] < cfg.p_vid, u[2] < cfg.p_img, u[3] < cfg.p_clean
    return Injection(vid=vid & ~clean, noi=noi & ~clean, img=img & ~clean)


def img_buckets(cfg: InjectionConfig, grid_sigmas: Tensor) -> Tensor | None:
    """Bucket indices E_img may come from (sigma_n <= img_max_sigma), or None for all buckets."""
    if cfg.img_max_sigma >= 1.0:
        return None
    allowed = (grid_sigmas.cpu() <= cfg.img_max_sigma + 1e-6).nonzero().flatten()
    if allowed.numel() == 0:
        raise ValueError(f"injection.img_max_sigma={cfg.img_max_sigma} is below every grid sigma "
                         f"(smallest {float(grid_sigmas.min()):.3f})")
    return allowed


def gate_on_memory(inj: Injection, memory, grid: Tensor, img_from: Tensor | None = None,
                   img_needs_memory: bool = True) -> Injection:
    """Drop injections whose bank has nothing to give (the bucket for E_vid/E_noi, any allowed entry for E_img)."""
    if memory is None:
        off = torch.zeros_like(inj.vid)
        return Injection(vid=off, noi=off.clone(), img=off.clone())
    vid_ok = memory.vid.nonempty_mask[grid.cpu()]  # (B,)
    noi_ok = memory.noi.nonempty_mask[grid.cpu()]
    # img_source=self / rollout measure E_img on the sample itself and need nothing from the bank
    has_img = (not img_needs_memory or (len(memory.vid) > 0 if img_from is None
                                        else bool(memory.vid.nonempty_mask[img_from].any())))
    any_ok = torch.full_like(inj.img, has_img)
    return Injection(vid=inj.vid & vid_ok, noi=inj.noi & noi_ok, img=inj.img & any_ok)


def _modulate(e: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    if factor == 0.0:
        return e
    scale = 1.0 + factor * (2 * torch.rand((), generator=generator).item() - 1)
    return e * scale


def sample_errors(
    memory,
    grid: Tensor,
    inj: Injection,
    like: Tensor,
    cfg: InjectionConfig,
    generator: torch.Generator | None = None,
    img_from: Tensor | None = None,
    img_map: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw E_vid, E_noi (B, C, T, h, w) and E_img (B, C, y_error_num, h, w); zeros where not injected.

    `like` is the clean latent batch (B, C, T, h, w): it fixes shape, dtype and device. `img_from`:
    the bucket indices E_img may come from (`img_buckets`), None for all. `img_map`: a stored error
    (C, T, h, w) -> the condition-latent error it causes (C, >= y_error_num, h, w), replacing the random
    window (`img_source: last_frames`, see `last_frames_error`).
    """
    B, C, T, h, w = like.shape
    n = cfg.y_error_num
    if n > T:
        raise ValueError(f"injection.y_error_num={n} exceeds the {T} latent frames of the clip")
    e_vid = torch.zeros(B, C, T, h, w)
    e_noi = torch.zeros(B, C, T, h, w)
    e_img = torch.zeros(B, C, n, h, w)
    for i in range(B):
        bucket = int(grid[i])
        if inj.vid[i]:
            e_vid[i] = _modulate(memory.vid.sample(bucket, generator), cfg.error_modulate_factor, generator)
        if inj.noi[i]:
            e_noi[i] = _modulate(memory.noi.sample(bucket, generator), cfg.error_modulate_factor, generator)
        if inj.img[i] and cfg.img_source not in PER_SAMPLE_SOURCES:  # those: `self_image_error`, `rollout_image_error`
            e = memory.vid.sample_any(generator, img_from)  # (C, T_e, h, w), from any (allowed) bucket
            if img_map is not None:
                e = img_map(e)[:, :n]
            else:
                start = int(torch.randint(0, e.shape[1] - n + 1, (), generator=generator))
                e = e[:, start : start + n]
            e_img[i] = _modulate(e, cfg.error_modulate_factor, generator) * cfg.img_scale
    e_vid, e_noi, e_img = (t.to(device=like.device, dtype=like.dtype) for t in (e_vid, e_noi, e_img))
    return e_vid, e_noi, e_img


def last_frames_error(stack, num_motion_frames: int, option: str = "last_frames") -> Callable[[Tensor], Tensor]:
    """`img_source: last_frames`: map a stored E_vid to the condition error it stands for.

    At inference the next clip's condition holds the previous clip's last K frames, decoded and
    re-encoded. So the error it carries is the error of those frames, in the condition's own latent
    layout (for Wan's causal VAE, motion frame 0 alone fills latent 0). The map decodes the stored
    error to pixel frames with the autoencoder's linear part, puts its last K frames in the K motion
    frames of an otherwise error-free condition video and encodes that. Exact for a linear
    autoencoder; the Wan VAE is not linear, so it is refused there.
    """
    vae = stack.require("vae", f"injection.img_source={option}")
    if not (hasattr(vae, "linear_decode") and hasattr(vae, "linear_encode")):
        raise ValueError(f"injection.img_source={option} needs an autoencoder with a linear decode "
                         f"(the toy PatchAutoencoder); {type(vae).__name__} has none. Use img_source=window.")
    cfg = vae.config
    std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(-1, 1, 1, 1)
    K = int(num_motion_frames)

    def to_condition(e: Tensor) -> Tensor:
        pix = vae.linear_decode((e.float().cpu() * std)[None].to(vae.dtype))[0]  # (3, F, H, W)
        if K > pix.shape[1]:
            raise ValueError(f"{K} motion frames exceed the {pix.shape[1]} frames of the stored error")
        cond = torch.zeros_like(pix)
        cond[:, :K] = pix[:, pix.shape[1] - K :]
        return vae.linear_encode(cond[None])[0].float() / std

    return to_condition


def _mapped_rows(err: Tensor | None, like: Tensor, select: Tensor, cfg: InjectionConfig,
                 img_map: Callable[[Tensor], Tensor], generator: torch.Generator | None) -> Tensor:
    """E_img (B, C, y_error_num, h, w): each selected row's clip error `err` (B, C, T, h, w) through
    `img_map`, modulated and scaled by `img_scale`; zero elsewhere (and everywhere when `err` is None)."""
    B, C, _, h, w = like.shape
    e_img = torch.zeros(B, C, cfg.y_error_num, h, w, device=like.device, dtype=like.dtype)
    if err is not None:
        for i in select.nonzero().flatten().tolist():
            e = img_map(err[i])[:, : cfg.y_error_num]
            e_img[i] = (_modulate(e, cfg.error_modulate_factor, generator) * cfg.img_scale).to(e_img)
    return e_img


def self_image_error(
    velocity: Callable[[Tensor, Tensor, Tensor], Tensor],
    x0: Tensor,
    y: Tensor,
    select: Tensor,
    cfg: InjectionConfig,
    grid_sigmas: Tensor,
    img_map: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
) -> Tensor:
    """`img_source: self`: E_img (B, C, n, h, w) from the sample's own error (a per-sample bank of one).

    The model runs once more on this batch, without gradients, on its own clips and conditions, from
    x_s at a noise level drawn from the allowed E_img buckets (`img_max_sigma`). Its clean-end error
    x^_0 - x0 (x^_0 = x_s - s v^) is what E_vid would store for this sample; `img_map` turns it into a
    condition error the way `last_frames` does (the clip's last K frames, placed in the K motion
    frames). So the image error carries this sample's background, colours and sprites, moved by a few
    frames of motion, instead of another sample's errors in the wrong place. `velocity(x_s, y, t)`
    wraps the DiT. Rows not in `select` (B,) are zero.
    """
    if not bool(select.any()):
        return _mapped_rows(None, x0, select, cfg, img_map, generator)
    B = x0.shape[0]
    allowed = img_buckets(cfg, grid_sigmas)
    if allowed is None:
        allowed = torch.arange(grid_sigmas.numel())
    pick = allowed[torch.randint(0, allowed.numel(), (B,), generator=generator)]
    sigma = grid_sigmas.detach().cpu().float()[pick].to(x0.device)  # (B,)
    noise = torch.randn(x0.shape, generator=generator).to(device=x0.device, dtype=x0.dtype)
    x_s = add_noise(x0, noise, sigma)
    with torch.no_grad():
        v_hat = velocity(x_s, y, to_timesteps(sigma)).float()
    err = x_s.float() - expand_like(sigma, v_hat) * v_hat - x0.float()  # (B, C, T, h, w)
    return _mapped_rows(err, x0, select, cfg, img_map, generator)


def rollout_image_error(
    velocity: Callable[[Tensor, Tensor, Tensor], Tensor],
    x0: Tensor,
    y: Tensor,
    select: Tensor,
    cfg: InjectionConfig,
    sampling_sigmas: Tensor,
    img_map: Callable[[Tensor], Tensor],
    generator: torch.Generator | None = None,
) -> Tensor:
    """`img_source: rollout`: E_img (B, C, n, h, w) from a whole clip the model generates for this sample.

    At inference the next clip's condition holds the last K frames of a clip the model *sampled*, not
    of a one-step prediction. So here the model samples this very clip from fresh noise and its clean
    condition `y`, with the sampler's Euler schedule `sampling_sigmas` (N,) (descending, ending at 0),
    without gradients; the error of the generated clip, x^_0 - x0, goes through `img_map` (the clip's
    last K frames placed in the K motion frames, as `last_frames`). That is the handoff error of one
    clip of rollout, measured on this sample with the current weights. Costs N no-grad forwards per
    step. Rows not in `select` (B,) are zero.
    """
    if not bool(select.any()):
        return _mapped_rows(None, x0, select, cfg, img_map, generator)
    B = x0.shape[0]
    sig = sampling_sigmas.detach().cpu().float()
    sig = torch.cat([sig, sig.new_zeros(1)])
    x = torch.randn(x0.shape, generator=generator).to(device=x0.device, dtype=torch.float32)
    with torch.no_grad():
        for k in range(len(sig) - 1):
            s = torch.full((B,), float(sig[k]), device=x0.device)
            v = velocity(x.to(x0.dtype), y, to_timesteps(s)).float()
            x = euler_step(x, v, s, torch.full_like(s, float(sig[k + 1])))
    return _mapped_rows(x - x0.float(), x0, select, cfg, img_map, generator)


def inject(x0: Tensor, noise: Tensor, y: Tensor, e_vid: Tensor, e_noi: Tensor, e_img: Tensor):
    """X~_vid = X_vid + E_vid, X~_noi = eps + E_noi, and E_img added to the first latent frames of y.

    y is the I2V condition (B, 4 + C, T, h, w) = [mask | condition latent]; E_img goes to the condition
    latent channels only (model-input channels 20:36), first `e_img.shape[2]` latent frames.
    """
    n = e_img.shape[2]
    y_tilde = y.clone()
    y_tilde[:, 4:, :n] = y_tilde[:, 4:, :n] + e_img
    return x0 + e_vid, noise + e_noi, y_tilde
