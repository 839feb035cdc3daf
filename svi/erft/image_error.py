"""Where the image error E_img comes from: a plug-in, chosen by the `img_source` config group.

E_img corrupts the first `y_error_num` latent frames of the condition latent, the frames the next
clip's motion frames occupy: at inference they are the previous clip's output, which carries the error
of a whole trajectory. The paper draws E_img from the video-error bank over *all* timestep buckets and
takes a window of `y_error_num` latent frames of it (`WindowImageError`, the default).

A source is any object with this interface (`ImageErrorSource`):

    bind(stack, condition, flow, grid_sigmas)   once, before training: take what it needs
    ready(memory) -> bool                       can it give an error now? (an empty bank cannot)
    __call__(request) -> E_img                  (B, C, y_error_num, h, w), zero where not selected

so a new source is a new class plus a `conf/img_source/*.yaml` naming it with `_target_`; the training
module holds no branch per source. Sources that measure the error on the sample itself (research
variants of the toy package) use `request.velocity`, which runs the DiT without gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

WINDOWS = ("random", "last")


@dataclass
class ImageErrorRequest:
    """What a source may use to make E_img for one training batch."""

    x0: Tensor  # (B, C, T, h, w) the clean latents X_vid
    y: Tensor  # (B, 4 + C, T, h, w) the clean condition [mask | condition latent]
    select: Tensor  # (B,) bool: the samples that receive an image error
    grid: Tensor  # (B,) long: the timestep bucket of each sample
    num_frames: int  # y_error_num: latent frames of the condition that receive E_img
    memory: object | None  # a `MemoryReader` (read-only), or None without a replay memory
    velocity: Callable[[Tensor, Tensor, Tensor], Tensor]  # (x_s, y, t) -> v̂, no grad
    generator: torch.Generator | None = None
    batch: Mapping | None = None  # the whole training batch, for sources that need more of a sample than x0 and y

    def zeros(self) -> Tensor:
        """(B, C, y_error_num, h, w) zeros in the latents' dtype and device."""
        B, C, _, h, w = self.x0.shape
        return self.x0.new_zeros(B, C, self.num_frames, h, w)


class ImageErrorSource:
    """The interface of an image-error source (see the module docstring); subclasses override what they need."""

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        """Called once by the training module: the backbone, the condition, the flow settings and the
        sigma of every timestep bucket (N_test,)."""

    def ready(self, memory) -> bool:
        """Whether the source can give an error now; injection of E_img is skipped otherwise."""
        return memory is not None

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        raise NotImplementedError


def allowed_buckets(grid_sigmas: Tensor, max_sigma: float) -> Tensor | None:
    """Indices of the buckets whose sigma is at most `max_sigma`, or None for all (max_sigma >= 1)."""
    if max_sigma >= 1.0:
        return None
    allowed = (grid_sigmas.detach().cpu() <= max_sigma + 1e-6).nonzero().flatten()
    if allowed.numel() == 0:
        raise ValueError(f"img_source.max_sigma={max_sigma} is below every bucket's sigma "
                         f"(smallest {float(grid_sigmas.min()):.3f})")
    return allowed


class WindowImageError(ImageErrorSource):
    """The paper's E_img: a stored video error from any bucket, a window of `y_error_num` latent frames.

    Args:
        window: `random` (a random window, the default of the official code) or `last` (its last
            `y_error_num` latent frames: the official `use_last_y_error` option).
        max_sigma: draw only from buckets whose sigma is at most this (1.0 = every bucket, official).
        scale: E_img is multiplied by this (1.0, official).
    """

    def __init__(self, window: str = "random", max_sigma: float = 1.0, scale: float = 1.0):
        if window not in WINDOWS:
            raise ValueError(f"img_source.window must be one of {WINDOWS}, got {window!r}")
        if not 0.0 < max_sigma <= 1.0:
            raise ValueError(f"img_source.max_sigma must be in (0, 1], got {max_sigma}")
        if scale < 0.0:
            raise ValueError(f"img_source.scale must be >= 0, got {scale}")
        self.window, self.max_sigma, self.scale = window, max_sigma, scale
        self.buckets: Tensor | None = None  # the allowed buckets (None: all)

    def bind(self, stack, condition, flow, grid_sigmas: Tensor) -> None:
        self.buckets = allowed_buckets(grid_sigmas, self.max_sigma)

    def ready(self, memory) -> bool:
        if memory is None:
            return False
        if self.buckets is None:
            return memory.size("vid") > 0
        return bool(memory.nonempty("vid")[self.buckets].any())

    def __call__(self, request: ImageErrorRequest) -> Tensor:
        n, g = request.num_frames, request.generator
        e_img = request.zeros()
        for i in request.select.nonzero().flatten().tolist():
            e = request.memory.sample_any("vid", g, self.buckets)  # (C, T_e, h, w)
            if n > e.shape[1]:
                raise ValueError(f"injection.y_error_num={n} exceeds the {e.shape[1]} latent frames of a stored error")
            start = e.shape[1] - n if self.window == "last" else int(torch.randint(0, e.shape[1] - n + 1, (),
                                                                                    generator=g))
            e_img[i] = (e[:, start : start + n] * self.scale).to(e_img)
        return e_img
