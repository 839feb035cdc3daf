"""Atomic checkpoint writes: a kill during a save leaves the previous checkpoint loadable.

Lightning's `TorchCheckpointIO` writes straight to the target file, so a process killed mid-write
(SLURM preemption, OOM killer) leaves a truncated `last.ckpt` that cannot be resumed from. Here the
checkpoint goes to a temporary file in the same directory, is flushed to disk, and replaces the
target with one `os.replace` (atomic on POSIX filesystems): readers see the old file or the new one,
never half of one. Remote paths (`s3://...`) keep Lightning's behaviour.

Used through `trainer.plugins` (conf/trainer/cpu.yaml, gpu.yaml). DeepSpeed writes its own checkpoint
directories and does not go through a CheckpointIO plugin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
