"""One interface for long-video samplers: SVI clip by clip, FIFO-Diffusion and MIGA.

SVI, FIFO-Diffusion and MIGA are all "grouped diagonal schedules": latents at noise levels one step
apart, denoised by one network through windows, emitted in order. What differs is how the queue is laid
out and which windows are run. This module fixes the parts they share, so a new sampler only plans:

* `Denoiser` - the only place the network runs: CFG, one sigma per sample `(B,)` or per latent frame
  `(B, T)` (FIFO/MIGA), LoRA already merged into the backbone, the condition type's extra inputs made
  visible to its adapters (`Condition.forward_context`), so every sampler gets all of it for free.
* `EulerSolver` - the pure update `x <- x + (sigma_next - sigma) v`, per sample or per latent frame.
* `LongVideoSampler` - `stream(request, start, carry)` yields `Chunk`s of finished pixel frames in global
  order. A chunk carries `cursor` (where a resumed stream restarts) and `carry` (the tensors it needs
  then), so the entrypoint streams, writes and resumes any sampler without knowing its internals.

SVI (`svi.sampling.svi_clip.SVIClipSampler`) is the degenerate case: one window per clip (depth 1),
one scalar sigma per step, and the hand-off between windows through the condition `y`. FIFO and MIGA
keep their queue, window planner and reflection hooks inside their own `stream`, call the same
`Denoiser` with per-frame sigmas, and put their queue into `carry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from svi.conditions import Condition
from svi.flow import euler_step, frame_to_token_timesteps, to_timesteps
from svi.sampling.schedule import ClipSpec


@dataclass
class GenerationRequest:
    """Everything a sampler needs to know about the video to make (validated before any compute)."""

    image: Tensor | None  # (1, 3, H, W) in [-1, 1]: the reference image and first motion frame; None for T2V
    schedule: Sequence[ClipSpec]  # one entry per clip
    num_frames: int  # F pixel frames per clip, 1 + 4k
    height: int
    width: int
    inputs: dict = field(default_factory=dict)  # whole-video extra inputs of the condition type (inputs.NAME=...)
    fps: float = 16.0
    total_frames: int | None = None  # exact length of the video (`num_frames_total`); None: the sampler's default

    @property
    def num_clips(self) -> int:
        return len(self.schedule)


@dataclass
class Chunk:
    """Finished frames, in order, plus what a resumed stream needs to continue after them."""

    index: int  # which chunk this is (SVI: the clip index)
    frames: np.ndarray  # (n, H, W, 3) uint8, ready for the writer
    cursor: int  # the stream restarts here on resume (SVI: the next clip index)
    carry: dict[str, Tensor] = field(default_factory=dict)  # small tensors restored on resume
    info: dict = field(default_factory=dict)  # JSON-able facts for the state file (seed, prompt, ...)
    latents: Tensor | None = None  # the chunk's clean latents (SVI: the clip's x0), kept with save_latents
    # The last `tail` frames of `frames` end the video only while this chunk is the last one: a stream that
    # goes on past it drops them (SVI: the last clip's K hand-off frames, which a next clip re-creates).
    tail: int = 0


@dataclass
class WindowCond:
    """Conditioning of one denoiser call (one window): `y`, text and CLIP tokens, guidance."""

    y: Tensor | None  # (B, 20, T, h, w): mask (4) + condition latent (16); None for a T2V backbone
    text: Tensor  # (B, L_text, D) positive prompt embeddings
    negative_text: Tensor | None  # (B, L_text, D), or None without guidance
    image: Tensor | None  # (B, 257, D_img) CLIP tokens, None for backbones without an image path
    cfg: float = 5.0  # text guidance scale; <= 1 runs the positive branch only (as diffusers)
    extras: dict = field(default_factory=dict)  # the condition type's encoded extra inputs of this window


class Denoiser:
    """v̂ = DiT(x, sigma, cond) with classifier-free guidance on the text.

    `sigma` is `(B,)` (one level per sample, SVI) or `(B, T)` (one level per latent frame, FIFO/MIGA). A
    `(B, T)` sigma that is equal along T takes the scalar path, so both give bit-identical results.
    Guidance is the condition type's (`Condition.guide`): by default diffusers' text CFG,
    `v = v_neg + cfg (v_pos - v_neg)`, the branches (`Condition.guidance_branches`) run one after the other
    (a batch of 2 would double peak activation memory on a 14B model), or, with `parallel`, on different
    processes (CFG-parallel, `svi.sampling.parallel`). Each branch runs inside the condition's
    `forward_context`, so its adapters see that branch's extra inputs.
    """

    def __init__(self, stack, condition: Condition | None = None, parallel=None):
        self.stack = stack
        self.condition = condition or Condition()  # the plain I2V condition: text guidance, no extras
        self.parallel = parallel  # a `svi.sampling.parallel.CFGParallel`: the branches on several processes

    def timesteps(self, x: Tensor, sigma: Tensor) -> Tensor:
        if sigma.ndim == 2 and bool((sigma == sigma[:, :1]).all()):
            sigma = sigma[:, 0]
        t = to_timesteps(sigma.float()).to(x.device)
        if t.ndim == 2:  # per latent frame -> per token (tokens are ordered f, h, w)
            patch = self.stack.transformer.config.patch_size
            t = frame_to_token_timesteps(t, x.shape[-2], x.shape[-1], patch=patch[1])
        return t

    @torch.no_grad()
    def __call__(self, x: Tensor, sigma: Tensor, cond: WindowCond) -> Tensor:
        t = self.timesteps(x, sigma)
        condition = self.condition

        def velocity(text: Tensor, extras: dict) -> Tensor:
            with condition.forward_context(extras):
                return self.stack.velocity(x, cond.y, t, text, cond.image).float()

        if type(condition).guide is not Condition.guide:  # a type that guides its own way: all on this process
            return condition.guide(velocity, cond)
        branches = condition.guidance_branches(cond)  # text CFG unless the condition type guides otherwise
        calls = [lambda text=text, extras=extras: velocity(text, extras) for text, extras in branches]
        if self.parallel is not None:
            return condition.combine_guidance(self.parallel.run(calls, like=x), cond)
        return condition.combine_guidance([call() for call in calls], cond)


class EulerSolver:
    """First-order flow-matching step (SVI's solver); stateless, per sample or per latent frame."""

    def step(self, x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return euler_step(x, v, sigma, sigma_next)


class LongVideoSampler(ABC):
    """A long-video sampler: yields finished frames chunk by chunk, resumable from any chunk."""

    #: Whether the entrypoint merges `lora.path` into the backbone for this sampler.
    use_lora: bool = True
    #: Whether a chunk depends only on the schedule entries up to it, so a finished run can be continued
    #: with more clips (the resume check then compares the committed clips' entries, not the whole schedule).
    extendable: bool = False

    def bind(self, stack) -> "LongVideoSampler":
        """Give the sampler its backbone; configuration and `validate` run before weights are loaded."""
        self.stack = stack
        return self

    def num_chunks(self, request: GenerationRequest) -> int:
        """How many chunks `stream` yields in all (for progress bars)."""
        return request.num_clips

    def clips_for_frames(self, total_frames: int, num_frames: int) -> int:
        """How many schedule entries a video of `total_frames` frames needs (`num_frames_total`): clip by
        clip, K + C (F - K) >= total_frames; the entrypoint trims the last clip to the exact length."""
        K = int(getattr(self, "num_motion_frames", 1))
        return max(1, -(-(total_frames - K) // (num_frames - K)))

    @abstractmethod
    def stream(self, request: GenerationRequest, start: int = 0,
               carry: dict[str, Tensor] | None = None) -> Iterator[Chunk]:
        """Yield chunks in order, beginning at `start` with the `carry` of the chunk before it."""

    def validate(self, request: GenerationRequest) -> None:
        """Raise a clear error for a request this sampler cannot run (called before any compute)."""
