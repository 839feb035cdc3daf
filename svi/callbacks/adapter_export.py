"""AdapterExport: write the trained LoRA (and condition adapters) for generation.

The Lightning checkpoint is for resuming; this file is for using the model: diffusers LoRA format
(`pytorch_lora_weights.safetensors`, keys `transformer.*`), loadable with
`WanImageToVideoPipeline.load_lora_weights(dir)` or `svi.backbones.lora.load_adapter`. A two-expert backbone
(Wan2.2-A14B) writes one such folder per expert: `high_noise/` (`transformer`) and `low_noise/` (`transformer_2`).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from svi.backbones.lora import save_stack_adapters


class AdapterExport(L.Callback):
    def __init__(self, dirpath: str, every_n_train_steps: int = 0):
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps  # 0: only at the end of training

    @rank_zero_only
    def _export(self, pl_module, directory: Path) -> Path | None:
        if pl_module.lora_spec.rank == 0:  # full training has no adapter (BackboneExport writes the model)
            return None
        modules = pl_module.condition.adapter_state_dict()  # the condition type's trainable adapters, if any
        return save_stack_adapters(directory, pl_module.stack, pl_module.lora_spec, modules)  # Wan 2.2 A14B: per expert

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step > 0:
            self._export(pl_module, self.dirpath / f"step_{trainer.global_step:06d}")

    def on_train_end(self, trainer, pl_module) -> None:
        path = self._export(pl_module, self.dirpath)
        if path is not None:
            rank_zero_info(f"[svi] adapter written to {path}")


class BackboneExport(L.Callback):
    """Write the whole trained stack in the diffusers layout at the end of training (full training,
    `lora.rank=0`). List it after an `EMAWeightAveraging` callback to export the averaged weights."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        from svi.backbones.wan import save_stack

        save_stack(pl_module.stack, self.dirpath)
        rank_zero_info(f"[svi] backbone written to {self.dirpath}")
