"""ErrorReplayCallback: owns the replay memory of ERFT (docs/method.md, "Storing errors").

Per training iteration (per `training_step`, i.e. per micro-batch under gradient accumulation, as
the official code does) it takes the errors the module measured and stores them:

- Warmup (the first W iterations): every rank all-gathers the errors, buckets and clean flags of all
  ranks and inserts all of them, so every rank's banks start identical and fill W x world_size times
  faster. Whether to gather depends only on the iteration count, which all ranks share, so all ranks
  enter the collective together. The "store this clean sample's error?" coins are drawn after the
  collective from a generator seeded identically on all ranks, so the banks stay identical.
- Afterwards each rank inserts only its own errors, with coins from a per-rank generator.

Errors of clean samples are stored only with probability `clean_buffer_update_prob`: they would
otherwise crowd the bank with errors of a situation the model never meets at inference. Which samples
count as clean is the module's decision (`injection.clean_flag`; officially the clean coin). Non-finite
errors are refused and counted by the memory.

The memory, the iteration count and both generators are saved with the checkpoint (the per-rank
generator of every rank: gathered when the checkpoint is dumped). Under DDP the checkpoint is written
by rank 0, so after warmup a resumed run restarts every rank from rank 0's banks.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_info

from svi.config import as_dataclass
from svi.erft.memory import MemoryConfig, ReplayMemory
from svi.utils.cadence import logs_this_step
from svi.utils.rank_state import gather_per_rank, own_rank_state


class ErrorReplayCallback(L.Callback):
    """Owns the replay memory; see the module docstring.

    Args:
        memory: the `MemoryConfig` node (`conf/memory/*.yaml`: buckets, Z, replacement, warmup W, storage).
        clean_buffer_update_prob: probability of storing the errors of a clean sample.
        enabled: false for plain LoRA fine-tuning (no memory at all).
        seed: seeds the store coins and the count-sketch.
        log_buckets_every_n_steps: per-bucket fill logged this often (`erft/bucket/NN`).
    """

    def __init__(self, memory: MemoryConfig | dict | None = None, clean_buffer_update_prob: float = 0.1,
                 enabled: bool = True, seed: int = 0, log_buckets_every_n_steps: int = 50):
        config = as_dataclass(MemoryConfig, memory)
        self.enabled = enabled
        self.warmup_steps = config.warmup_steps  # W
        self.clean_buffer_update_prob = clean_buffer_update_prob
        self.log_buckets_every_n_steps = log_buckets_every_n_steps
        self.seed = seed
        self.memory = ReplayMemory(config, sketch_seed=seed) if enabled else None
        self.iterations = 0  # training_step calls seen; identical on every rank
        self.shared_generator = torch.Generator().manual_seed(seed)  # same stream on all ranks
        self.local_generator = torch.Generator().manual_seed(seed + 1)  # re-seeded per rank in setup
        self.stored = 0
        self._reported_capacity = False

    @property
    def state_key(self) -> str:
        return "ErrorReplayCallback"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled:
            return
        self.local_generator.manual_seed(self.seed + 1 + 7919 * trainer.global_rank)
        pl_module.error_memory = self.memory.reader()

    # ------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled or not isinstance(outputs, dict) or "erft" not in outputs:
            return
        errors = {k: v.detach() for k, v in outputs["erft"].items()}
        warmup = self.iterations < self.warmup_steps  # rank-invariant decision
        if warmup and trainer.world_size > 1:
            gathered = pl_module.all_gather(errors)  # each (world, B, ...)
            errors = {k: v.flatten(0, 1) for k, v in gathered.items()}
        generator = self.shared_generator if warmup else self.local_generator
        # Coins drawn after the collective: identical on all ranks during warmup.
        clean = errors["clean"].bool().cpu()
        coin = torch.rand(clean.shape[0], generator=generator) < self.clean_buffer_update_prob
        keep = ~clean | coin
        self.stored += self.memory.add(errors["grid"].cpu(), errors["e_vid"], errors["e_noi"], keep=keep,
                                       generator=generator)
        self.iterations += 1
        if not self._reported_capacity and self.memory.effective_capacity is not None:
            self._report_capacity()
        if logs_this_step(trainer):
            self._log(pl_module, warmup)
        if self.log_buckets_every_n_steps and self.iterations % self.log_buckets_every_n_steps == 0:
            kw = dict(on_step=True, on_epoch=False, batch_size=1)
            for n, count in enumerate(self.memory.vid.counts.tolist()):  # per-bucket fill (same for noi)
                pl_module.log(f"erft/bucket/{n:02d}", float(count), **kw)

    def _report_capacity(self) -> None:
        """Once the first error fixes the entry size: what one entry costs and the Z in force."""
        self._reported_capacity = True
        bank = self.memory.vid
        budget = "none" if bank.budget_bytes is None else f"{2 * bank.budget_bytes / 2**30:.3g} GiB"
        full = 2 * bank.num_buckets * bank.z * bank.entry_nbytes
        rank_zero_info(f"[erft] replay memory: entry {bank.entry_shape} {str(bank.dtype).removeprefix('torch.')} "
                       f"= {bank.entry_nbytes / 2**20:.3g} MiB; budget {budget} -> Z = {bank.z} per bucket "
                       f"(configured {bank.capacity}); at most {full / 2**30:.3g} GiB when full")

    def _log(self, pl_module, warmup: bool) -> None:
        mem, kw = self.memory, dict(on_step=True, on_epoch=False, batch_size=1)
        for name, bank in (("vid", mem.vid), ("noi", mem.noi)):
            pl_module.log(f"erft/bank/{name}/fill", bank.fill_fraction, **kw)
            pl_module.log(f"erft/bank/{name}/buckets_nonempty", float(bank.nonempty_mask.sum()), **kw)
            pl_module.log(f"erft/bank/{name}/nonfinite", float(bank.num_nonfinite), **kw)
        pl_module.log("erft/bank/stored", float(self.stored), **kw)
        pl_module.log("erft/bank/bytes", float(mem.nbytes), **kw)
        pl_module.log("erft/bank/capacity", float(mem.vid.z), **kw)
        pl_module.log("erft/warmup", float(warmup), **kw)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.enabled:
            c = self.memory.vid.counts
            rank_zero_info(f"[erft] replay memory: {len(self.memory.vid)} error pairs in {int((c > 0).sum())}/"
                           f"{len(c)} buckets, {self.memory.nbytes / 2**20:.1f} MiB, "
                           f"{self.memory.vid.num_nonfinite} non-finite refused")

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if not self.enabled:
            return {}
        # Every rank's local coins (collective: all ranks dump the checkpoint together; rank 0 writes it).
        return {"memory": self.memory.state_dict(), "iterations": self.iterations, "stored": self.stored,
                "shared_generator": self.shared_generator.get_state(),
                "local_generator_per_rank": gather_per_rank(self.local_generator.get_state())}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self.enabled or not state_dict:
            return
        self.memory.load_state_dict(state_dict["memory"])
        self._reported_capacity = False  # report the Z in force again after a resume
        self.iterations = state_dict["iterations"]
        self.stored = state_dict["stored"]
        self.shared_generator.set_state(state_dict["shared_generator"])
        initialized = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if initialized else (0, 1)
        local = own_rank_state(state_dict.get("local_generator_per_rank", []), rank, world)
        if local is not None:
            self.local_generator.set_state(local)
        else:  # another world size: fresh, distinct per-rank streams
            self.local_generator.manual_seed(self.seed + 1 + 7919 * rank + 104_729 * self.iterations)
