"""DataStatsCallback: per-epoch health of the training data, and the epoch the datasets draw from.

At each epoch start it passes the epoch to the datamodule (`set_epoch`: new strides, crops and
reference frames, or the next cached draw). It feeds every batch that reports skips (raw video
clips, cached clips) into a `DataStats`; at each epoch end it prints the summary (clips, files
skipped with reasons, short videos padded) and logs `data/clips`, `data/skipped`, `data/short`.
A bad file never stops an epoch: the dataset skips it and the count shows up here.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from svi.data.video import DataStats


class DataStatsCallback(L.Callback):
    def __init__(self, max_listed: int = 5):
        self.max_listed = max_listed  # skipped files named in the printed summary
        self.stats = DataStats()
        self.seen = False  # batches without skip reports (synthetic latents) are not counted

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stats.reset()
        self.seen = False
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(trainer.current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if isinstance(batch, dict) and "skipped" in batch and "path" in batch:
            self.stats.update(batch)
            self.seen = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.seen:
            return
        rank_zero_info(f"[svi] data, epoch {trainer.current_epoch}: {self.stats.summary(self.max_listed)}")
        # Summed over ranks: each rank reads different videos, so a bad file is rarely counted twice.
        log = dict(on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)
        pl_module.log("data/clips", float(self.stats.clips), **log)
        pl_module.log("data/skipped", float(len(self.stats.skipped)), **log)
        pl_module.log("data/short", float(self.stats.short), **log)
