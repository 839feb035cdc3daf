"""CFG-parallel generation: the guidance branches of each denoiser call run on different processes.

Classifier-free guidance evaluates the network two times per step (positive and negative prompt; talk:
three). The branches are independent, so with two processes (`torchrun --nproc_per_node 2`) each runs
one and an all-gather gives every process both predictions; every process then combines them, takes the
same Euler step and stays in step with the others. Everything else (text, CLIP and VAE encoding, VAE
decoding, noise) runs on every process: it is small next to the DiT, and it keeps the processes
identical without further communication. Only rank 0 writes the output.

Branch j runs on rank `j % world_size`; with three branches on two ranks, rank 0 runs two and rank 1 one,
so a step costs two network evaluations instead of three. Each branch is the same computation as in a
single process (same inputs, shapes and weights), so on the same kind of device the result is the
single-process result bit for bit; the all-gather copies the tensors exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class CFGParallel:
    """The processes that share the guidance branches (`torch.distributed` is initialised)."""

    rank: int
    world_size: int
    group: Any = None

    def run(self, branches: Sequence[Callable[[], Tensor]], like: Tensor) -> list[Tensor]:
        """Evaluate `branches` (each returns a float32 tensor shaped like `like`) across the processes.

        Every process returns all results, in order. A single branch is run locally by every process."""
        n, W = len(branches), self.world_size
        if n <= 1:
            return [b() for b in branches]
        per_rank = -(-n // W)
        mine = [branches[j]() for j in range(self.rank, n, W)]
        pad = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        local = torch.stack([v.to(torch.float32) for v in mine] + [pad] * (per_rank - len(mine)))
        gathered = [torch.empty_like(local) for _ in range(W)]
        dist.all_gather(gathered, local.contiguous(), group=self.group)
        return [gathered[j % W][j // W] for j in range(n)]


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_cfg_parallel(device: torch.device) -> tuple[CFGParallel | None, torch.device, bool]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl for CUDA, gloo for CPU) and give each
    process its own GPU (`LOCAL_RANK`). Returns (the CFGParallel or None, the device, whether this call
    created the group and should destroy it)."""
    world = world_size_from_env()
    if world <= 1:
        return None, device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return CFGParallel(rank=dist.get_rank(), world_size=dist.get_world_size()), device, created


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every process (an exception raised on rank 0 is raised on every process)."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
