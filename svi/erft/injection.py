"""Which errors to inject into a training sample, and drawing them from the replay memory.

Each sample independently draws `inject_noi ~ Bern(p_noi)`, `inject_vid ~ Bern(p_vid)`,
`inject_img ~ Bern(p_img)`, then the clean coin `clean ~ Bern(p_clean)` switches all three off. An
injection also needs its bank to hold something (each bank gated on itself: the official code gates
the video-error injection on the noise bank, which we do not copy).

Selective resampling: E_vid / E_noi come from the bucket of the current timestep's grid index. E_img
comes from an image-error source (`svi.erft.image_error`; the paper's draws a window of a stored video
error from any bucket).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CLEAN_FLAGS = ("coin", "nothing_injected")


@dataclass
class InjectionConfig:
    """Knobs of error injection (paper symbols in comments)."""

    enabled: bool = True  # ERFT on; False = plain LoRA fine-tuning (nothing injected, no memory)
    p_noi: float = 0.01  # p_noi: probability of adding a noise-side error E_noi to the noise
    p_vid: float = 0.9  # p_vid: probability of adding a video-side error E_vid to the clean latent
    p_img: float = 0.9  # p_img: probability of adding an image error E_img to the condition latent
    p_clean: float = 0.2  # p_clean: probability of a fully clean sample (Shot 0.2, Film 0.5)
    clean_buffer_update_prob: float = 0.1  # store errors of clean samples only this often
    y_error_num: int = 3  # latent frames of the condition that receive E_img (official 3)
    error_modulate_factor: float = 0.0  # f: each error scaled by U(1-f, 1+f); 0 officially
    # Which samples count as clean for clean_buffer_update_prob: `coin` (official: the clean coin fell) or
    # `nothing_injected` (no error was injected, e.g. also when every bank it asked was still empty).
    clean_flag: str = "coin"

    def __post_init__(self) -> None:
        for name in ("p_noi", "p_vid", "p_img", "p_clean", "clean_buffer_update_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"injection.{name} must be a probability in [0, 1], got {value}")
        if self.y_error_num < 1:
            raise ValueError(f"injection.y_error_num must be >= 1, got {self.y_error_num}")
        if self.clean_flag not in CLEAN_FLAGS:
            raise ValueError(f"injection.clean_flag must be one of {CLEAN_FLAGS}, got {self.clean_flag!r}")
        if not 0.0 <= self.error_modulate_factor < 1.0:
            raise ValueError(f"injection.error_modulate_factor must be in [0, 1), got {self.error_modulate_factor}")


@dataclass
class Injection:
    """Per-sample injection decisions, each a bool tensor (B,), and the clean coin itself."""

    vid: Tensor
    noi: Tensor
    img: Tensor
    coin: Tensor  # the clean coin fell: nothing is injected into this sample

    @property
    def nothing_injected(self) -> Tensor:
        return ~(self.vid | self.noi | self.img)

    def clean(self, flag: str = "coin") -> Tensor:
        """Which samples count as clean for `clean_buffer_update_prob` (`InjectionConfig.clean_flag`)."""
        return self.coin.clone() if flag == "coin" else self.nothing_injected


def draw_injection(cfg: InjectionConfig, batch_size: int, generator: torch.Generator | None = None) -> Injection:
    """Independent Bernoulli draws per sample, then the clean coin switches everything off."""
    if not cfg.enabled:
        off = torch.zeros(batch_size, dtype=torch.bool)
        return Injection(vid=off, noi=off.clone(), img=off.clone(), coin=off.clone())
    u = torch.rand(4, batch_size, generator=generator)
    noi, vid, img, clean = u[0] < cfg.p_noi, u[1] < cfg.p_vid, u[2] < cfg.p_img, u[3] < cfg.p_clean
    return Injection(vid=vid & ~clean, noi=noi & ~clean, img=img & ~clean, coin=clean)


def gate_on_memory(inj: Injection, memory, grid: Tensor, img_ready: bool) -> Injection:
    """Drop injections whose source has nothing to give: the timestep's bucket for E_vid / E_noi,
    `img_ready` (the image-error source's `ready`) for E_img. `memory` is a `MemoryReader` or None."""
    if memory is None:
        off = torch.zeros_like(inj.vid)
        return Injection(vid=off, noi=off.clone(), img=off.clone(), coin=inj.coin)
    vid_ok = memory.nonempty("vid")[grid.cpu()]  # (B,)
    noi_ok = memory.nonempty("noi")[grid.cpu()]
    return Injection(vid=inj.vid & vid_ok, noi=inj.noi & noi_ok, img=inj.img & bool(img_ready), coin=inj.coin)


def modulate(e: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    """e scaled by U(1 - f, 1 + f) (`error_modulate_factor`); unchanged, with no draw, when f = 0."""
    if factor == 0.0:
        return e
    scale = 1.0 + factor * (2 * torch.rand((), generator=generator).item() - 1)
    return e * scale


def sample_errors(memory, grid: Tensor, inj: Injection, like: Tensor, cfg: InjectionConfig,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw E_vid and E_noi (B, C, T, h, w) from the timestep's bucket; zeros where not injected.

    `like` is the clean latent batch (B, C, T, h, w): it fixes shape, dtype and device.
    """
    e_vid = torch.zeros(like.shape)
    e_noi = torch.zeros(like.shape)
    for i in range(like.shape[0]):
        bucket = int(grid[i])
        if inj.vid[i]:
            e_vid[i] = modulate(memory.sample("vid", bucket, generator), cfg.error_modulate_factor, generator)
        if inj.noi[i]:
            e_noi[i] = modulate(memory.sample("noi", bucket, generator), cfg.error_modulate_factor, generator)
    return tuple(t.to(device=like.device, dtype=like.dtype) for t in (e_vid, e_noi))


def modulate_rows(e_img: Tensor, select: Tensor, factor: float, generator: torch.Generator | None) -> Tensor:
    """`modulate` applied to each selected row of E_img (B, ...) (a no-op without a draw when f = 0)."""
    if factor == 0.0:
        return e_img
    out = e_img.clone()
    for i in select.nonzero().flatten().tolist():
        out[i] = modulate(e_img[i], factor, generator)
    return out


def inject(x0: Tensor, noise: Tensor, y: Tensor, e_vid: Tensor, e_noi: Tensor, e_img: Tensor):
    """X~_vid = X_vid + E_vid, X~_noi = eps + E_noi, and E_img added to the first latent frames of y.

    y is the I2V condition (B, 4 + C, T, h, w) = [mask | condition latent]; E_img goes to the condition
    latent channels only (model-input channels 20:36), first `e_img.shape[2]` latent frames.
    """
    n = e_img.shape[2]
    y_tilde = y.clone()
    y_tilde[:, 4:, :n] = y_tilde[:, 4:, :n] + e_img
    return x0 + e_vid, noise + e_noi, y_tilde
