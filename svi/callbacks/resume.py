"""ExactResume: a run stopped at step k and resumed continues exactly as if it had never stopped.

The module's random stream and the replay memory with its generators are saved by their owners
(`ERFTModule`, `ErrorReplayCallback`). Two things remain, and this callback owns them:

- the order of the training data. A `DataLoader(shuffle=True)` draws each epoch's permutation from
  the global RNG when its iterator is created, and a resumed run restarts the epoch from its first
  batch. The callback rebuilds the train loader as a `ResumableDataLoader`: the permutation is a
  function of (seed, epoch) (a `DistributedSampler`, one replica without DDP, so Lightning sets its
  epoch and keeps it under DDP) and the loader reports how many batches of the epoch it handed out,
  so the resumed iterator skips exactly those (as indices: skipped samples are never loaded);
- the global RNGs (torch, CUDA, numpy, python) of every rank, restored just before the first resumed
  batch (LoRA dropout, dataset augmentations that use them).

Datamodules may also return a `ResumableDataLoader` themselves; the callback leaves any loader that
already has `state_dict`/`load_state_dict` alone, and leaves custom samplers alone with a warning.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

from svi.utils.rank_state import gather_per_rank, own_rank_state


class _SkipFirst:
    """Index sampler wrapper: the next iterator skips the batches the loader was told to skip.

    The skip is taken when the iterator is first advanced, not when it is created: torch's
    multi-worker iterator creates the index iterator twice before using the second one.
    """

    def __init__(self, base, loader: "ResumableDataLoader"):
        self.base, self.loader = base, loader

    def __iter__(self):
        it = iter(self.base)
        skip, self.loader._skip = self.loader._skip, 0
        for _ in range(skip):
            next(it, None)
        yield from it

    def __len__(self) -> int:
        return len(self.base)


class _Counted:
    """Iterator wrapper counting the batches handed out in the current epoch."""

    def __init__(self, it, loader: "ResumableDataLoader"):
        self.it, self.loader = it, loader

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.loader._served += 1
        return batch


class ResumableDataLoader(DataLoader):
    """A map-style DataLoader whose order is a function of (seed, epoch) and that resumes mid-epoch.

    Args: those of `DataLoader` (no sampler / batch_sampler / generator), plus `seed`, and
    `num_replicas` / `rank` for the data-parallel split (defaults: one replica).
    `state_dict()` = {epoch, batches handed out in it}; Lightning saves it in the checkpoint (the
    loader is `_Stateful`) and calls `load_state_dict` before creating the resumed iterator.
    """

    def __init__(self, dataset, batch_size: int = 1, shuffle: bool = False, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, **kwargs):
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._skip = 0  # batches the next iterator skips
        self._served = 0  # batches handed out in the current epoch

    @property
    def _index_sampler(self):
        return _SkipFirst(super()._index_sampler, self)

    def __iter__(self):
        self._served = self._skip
        if hasattr(self.dataset, "set_epoch"):  # per-epoch draws (crops, strides, ...) follow the order's epoch,
            self.dataset.set_epoch(self.sampler.epoch)  # also when a resume starts the next epoch
        return _Counted(super().__iter__(), self)

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved on the last batch of an epoch: the next one starts fresh
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self._skip = batches


_REBUILT = {"dataset", "batch_size", "shuffle", "sampler", "batch_sampler", "generator"}


def make_resumable(loader: Any, seed: int, num_replicas: int = 1, rank: int = 0) -> Any:
    """A plain shuffled/sequential DataLoader rebuilt as a `ResumableDataLoader` with the same options."""
    if hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict"):
        return loader  # already resumable (ours, torchdata's StatefulDataLoader, ...)
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if loader.batch_size is None or type(loader.sampler) not in (RandomSampler, SequentialSampler):
        rank_zero_warn("ExactResume: the train loader has a custom sampler; a run resumed mid-epoch restarts "
                       "that epoch's order (give the datamodule a ResumableDataLoader for exact resumes)")
        return loader
    params = inspect.signature(DataLoader.__init__).parameters
    kwargs = {k: getattr(loader, k) for k in params if k not in _REBUILT and k != "self" and hasattr(loader, k)}
    return ResumableDataLoader(loader.dataset, batch_size=loader.batch_size,
                               shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                               num_replicas=num_replicas, rank=rank, **kwargs)


def _rng_states() -> dict:
    """Lightning's RNG snapshot with numpy's state as tensors (checkpoints load with weights_only=True)."""
    states = _collect_rng_states(include_cuda=True)
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, torch.from_numpy(keys.copy()), int(pos), int(has_gauss), float(gauss))
    return states


def _from_tensors(states: dict) -> dict:
    states = dict(states)
    if "numpy" in states:
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, keys.numpy(), pos, has_gauss, gauss)
    if not torch.cuda.is_available():
        states.pop("torch.cuda", None)
    return states


class ExactResume(L.Callback):
    """Data order and global RNGs for exact resumes (see the module docstring).

    Args:
        seed: the seed of the data order (the run's seed).
    """

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng_to_restore: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        # The loader is requested by the fit loop after `setup`: wrap whichever object provides it
        # (loaders passed to `fit(train_dataloaders=...)` directly are used as they are).
        source = trainer.datamodule if trainer.datamodule is not None else pl_module
        if source is pl_module and not is_overridden("train_dataloader", pl_module):
            return
        make = source.train_dataloader
        if getattr(make, "_svi_resumable", False):
            return
        world, rank = trainer.world_size, trainer.global_rank

        def train_dataloader():
            return make_resumable(make(), self.seed, num_replicas=world, rank=rank)

        train_dataloader._svi_resumable = True
        source.train_dataloader = train_dataloader

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._rng_to_restore is not None:
            _set_rng_states(_from_tensors(self._rng_to_restore))
            self._rng_to_restore = None

    def state_dict(self) -> dict:
        # Collective: every rank dumps the checkpoint at the same step; rank 0 writes all rows.
        return {"rng_per_rank": gather_per_rank(_rng_states())}

    def load_state_dict(self, state_dict: dict) -> None:
        import torch.distributed as dist

        initialized = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if initialized else (0, 1)
        self._rng_to_restore = own_rank_state(state_dict.get("rng_per_rank", []), rank, world)
        if self._rng_to_restore is None and state_dict.get("rng_per_rank"):
            rank_zero_warn("ExactResume: the checkpoint comes from a different number of ranks; the global RNGs "
                           "continue from the seed instead")
