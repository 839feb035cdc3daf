"""FIFO-Diffusion (Kim et al., NeurIPS 2024) on a Wan DiT: diagonal denoising of a queue of latents.

The queue holds T = f * n latents at increasing noise, one step apart: slot j (0 = head) is at level
T - 1 - j (steps taken), so the head needs one more step and the tail is pure noise. One iteration:

    1. every queue latent takes one Euler step at its own sigma, through windows of f latents with one
       sigma per latent frame (latent partitioning: n windows per pass; lookahead: 2n, below);
    2. the head is now clean: it is emitted;
    3. the queue shifts one slot toward the head (every latent is now at its new slot's level) and fresh
       noise enters at the tail.

Lookahead denoising puts p = floor(f / 2) slots in front of the queue that hold the most recently
emitted clean latents (sigma 0). Window r = 0 .. 2n - 1 reads A[start_r : start_r + f] of the array
A = padding ++ queue and commits only A[mid_r : start_r + f]:

    start_r = (r // 2) f + (r % 2) floor(f / 2)
    mid_r   = start_r + floor(f / 2) + (r % 2) (f % 2)

so every queue latent is updated once per iteration, with about f / 2 cleaner latents before it (for
even f this is start_r = r f / 2, mid_r = start_r + f / 2; odd f, e.g. Wan's 21, alternates commits of
ceil(f/2) and floor(f/2)). Without lookahead the queue is cut into n windows of f, each committed whole.

Initialisation: an ordinary f-latent clip V is sampled with all T steps; the padding holds V[0] (clean);
queue slot j holds V[max(0, j - (T - f))] forward-noised to its level, so the noisiest f slots hold the
clip in order and the cleaner ones copies of its first latent. The first T - f emitted latents come from
those copies and are discarded (warm-up); the output starts after them, so it is a new sample for which
V is only a layout prior. N output latents cost N + T - f iterations.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from svi.sampling.diagonal import DiagonalSampler, Run, Window


def fifo_padding(f: int, lookahead: bool) -> int:
    """p: clean slots in front of the queue (floor(f / 2) with lookahead, else 0)."""
    return f // 2 if lookahead else 0


@lru_cache(maxsize=32)
def fifo_windows(f: int, n: int, lookahead: bool = True) -> tuple[Window, ...]:
    """The windows of one FIFO iteration over A = padding (p slots) ++ queue (f n slots), tail first.

    With lookahead: 2n windows of f, committing their latter part (module docstring); without: n
    partitions of the queue, each committed whole. Every queue slot is committed exactly once.
    """
    if f < 2 or n < 1:
        raise ValueError(f"FIFO needs a window of f >= 2 latents and n >= 1 partitions, got f={f}, n={n}")
    windows = []
    if lookahead:
        for r in reversed(range(2 * n)):
            start = (r // 2) * f + (r % 2) * (f // 2)
            mid = start + f // 2 + (r % 2) * (f % 2)
            windows.append(Window(tuple(range(start, start + f)), tuple(range(mid - start, f))))
    else:
        for m in reversed(range(n)):
            windows.append(Window(tuple(range(m * f, (m + 1) * f)), tuple(range(f))))
    return tuple(windows)


def fifo_levels(f: int, n: int, lookahead: bool = True) -> list[int]:
    """Level (steps taken) of every slot of A: padding at T (clean), queue slot j at T - 1 - j."""
    T = f * n
    return [T] * fifo_padding(f, lookahead) + [T - 1 - j for j in range(T)]


def fifo_initial_sources(f: int, n: int) -> list[int]:
    """Which base-clip latent initialises queue slot j: max(0, j - (T - f))."""
    T = f * n
    return [max(0, j - (T - f)) for j in range(T)]


class FIFOSampler(DiagonalSampler):
    """FIFO-Diffusion with latent partitioning and lookahead denoising (module docstring).

    Args (beyond `DiagonalSampler`'s):
        partitions: n, windows per pass without lookahead; T = f n denoising steps (`flow.num_inference_steps`
            is not used: FIFO ties the number of steps to the queue).
        lookahead: lookahead denoising (2n windows committing their latter part; twice the calls).
    """

    def __init__(self, condition=None, flow=None, partitions: int = 4, lookahead: bool = True,
                 window: int | None = None, chunk_latents: int | None = None, window_batch: int = 1,
                 quantize: Any = "truncate", use_lora: bool = True, progress: bool = True,
                 name: str = "fifo"):
        if partitions < 1:
            raise ValueError(f"sampler.partitions (n) must be >= 1, got {partitions}")
        super().__init__(condition=condition, flow=flow, window=window, chunk_latents=chunk_latents,
                         window_batch=window_batch, quantize=quantize, use_lora=use_lora, progress=progress,
                         name=name)
        self.partitions = partitions
        self.lookahead = lookahead

    def steps(self, window: int) -> int:
        return window * self.partitions

    def warmup(self, window: int) -> int:
        """Emitted latents discarded at the start: T - f."""
        return self.steps(window) - window

    def init_state(self, run: Run) -> dict[str, Tensor]:
        f, n = run.window, self.partitions
        T = f * n
        V = self.base_clip(run)  # (B, f, C, h, w), clean
        p = fifo_padding(f, self.lookahead)
        src = torch.tensor(fifo_initial_sources(f, n), device=run.device)
        queue = self.noised(run, V[:, src], [T - 1 - j for j in range(T)], 0, "init")
        padding = V[:, :1].expand(-1, p, -1, -1, -1)
        return {"queue": torch.cat([padding, queue], dim=1), "iteration": torch.tensor(0)}

    def advance(self, state: dict[str, Tensor], run: Run) -> Tensor | None:
        f, n = run.window, self.partitions
        T, p, warm = f * n, fifo_padding(f, self.lookahead), self.warmup(f)
        i = int(state["iteration"])
        levels = torch.tensor(fifo_levels(f, n, self.lookahead), device=run.device)

        def clip_of(w: Window) -> int:  # queue slot j is emitted j iterations from now
            return run.clip_of(i + w.committed_slots[0] - p - warm)

        A = self.jacobi_pass(state["queue"], levels, fifo_windows(f, n, self.lookahead), run, clip_of)
        head = A[:, p:p + 1]  # now at level T: clean
        state["queue"] = torch.cat([A[:, 1:], run.noise(i + T)], dim=1)  # padding shifts in the head
        state["iteration"] = torch.tensor(i + 1)
        return head if i >= warm else None
