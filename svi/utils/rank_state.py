"""Per-rank state in a checkpoint that only rank 0 writes.

Under DDP every rank draws from its own random streams (noise, timesteps, injection coins, clean-store
coins), but the checkpoint file is written by rank 0. Saving only rank 0's stream would give every
rank the same stream after a resume; so the states of all ranks are gathered when the checkpoint is
dumped (all ranks dump it together) and each rank takes its own row back on load.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection


def gather_per_rank(state: Any) -> list:
    """All ranks' `state` in rank order (a one-element list without a process group). Collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    # Tensors travel as numpy arrays (pickled tensors do not round-trip through all_gather_object).
    dist.all_gather_object(states, apply_to_collection(state, torch.Tensor, lambda t: t.cpu().numpy()))
    return [apply_to_collection(s, np.ndarray, torch.from_numpy) for s in states]


def own_rank_state(states: list, rank: int, world_size: int) -> Any | None:
    """This rank's entry when the checkpoint came from a run of the same world size, else None."""
    if len(states) != world_size:
        return None
    return states[rank]
