"""A test-only callback for multi-process runs: what each rank produced and what its memory holds.

Added to a run with `+callbacks.probe._target_=_ddp_probe.MemoryProbe +callbacks.probe.out_dir=DIR` (with
this folder on PYTHONPATH, which Lightning's child processes inherit). Each rank writes
`rank{r}_warmup.pt` (its memory right after the last warmup insert) and `rank{r}_end.pt` (its memory at
the end, and the errors, buckets and clean flags its own module produced at every step).
"""

from pathlib import Path

import lightning as L
import torch

from svi.callbacks import ErrorReplayCallback


class MemoryProbe(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.own: list[dict] = []

    def _replay(self, trainer) -> ErrorReplayCallback:
        return next(c for c in trainer.callbacks if isinstance(c, ErrorReplayCallback))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        replay = self._replay(trainer)  # runs before this probe: the step's errors are already stored
        e = outputs["erft"]
        self.own.append({k: e[k].detach().cpu().clone() for k in ("e_vid", "e_noi", "grid", "clean")})
        if replay.iterations == replay.warmup_steps:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(replay.memory.state_dict(), self.out_dir / f"rank{trainer.global_rank}_warmup.pt")

    def on_train_end(self, trainer, pl_module) -> None:
        replay = self._replay(trainer)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"memory": replay.memory.state_dict(), "own": self.own, "world_size": trainer.world_size},
                   self.out_dir / f"rank{trainer.global_rank}_end.pt")
