"""Learning-rate schedules (per optimizer step)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_ratio` x lr at `total_steps`."""
    if total_steps <= 0 or warmup_steps < 0 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine needs total_steps > 0, warmup_steps >= 0 and 0 <= min_ratio <= 1, "
                         f"got {total_steps}, {warmup_steps}, {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
