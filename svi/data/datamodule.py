"""LightningDataModules of the real data paths: raw video folders (`data=folders`) and latent caches
(`data=cache`). Synthetic latents live in `svi.data.synthetic`.

Both datasets draw per epoch (a new stride/start/crop/reference frame per video, or the next cached
draw), so the current epoch must reach them before each epoch's workers start. `train_dataloader`
sets it (this covers the first epoch and a resumed run) and `svi.callbacks.data_stats.DataStatsCallback`
calls `set_epoch` at every epoch start; workers are not persistent, so each epoch's workers get a
fresh copy of the dataset with the new epoch.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from svi.data.cache import CachedLatents, check_compatible
from svi.data.video import VideoClipDataset, collate_clips


class _EpochDataModule(L.LightningDataModule):
    dataset: Dataset | None = None

    def __init__(self, batch_size: int = 1, num_workers: int = 0):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size must be >= 1 and data.num_workers >= 0, "
                             f"got {batch_size}, {num_workers}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.dataset is not None:
            self.dataset.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            self.setup("fit")
        if self.trainer is not None:
            self.set_epoch(self.trainer.current_epoch)
        # Workers are not persistent: they would keep the first epoch's copy of the dataset (and its draws).
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, collate_fn=collate_clips, persistent_workers=False)


class VideoFolderDataModule(_EpochDataModule):
    """Raw clips (`video`, `ref_image`, `caption`) from a video folder; the module encodes them on the fly.

    Args mirror `VideoClipDataset`: root (official `<category>/<category>.csv` or `metadata.csv/jsonl`
    layout), clip geometry (num_frames = 1+4k, height, width), max_stride, layout, min_frames,
    ref_outside_clip, min_crop_scale, seed, and the condition (reads each row's and clip's extra inputs).
    """

    def __init__(self, root: str, num_frames: int = 81, height: int = 480, width: int = 832,
                 max_stride: int = 2, batch_size: int = 1, num_workers: int = 0, layout: str = "auto",
                 min_frames: int = 1, ref_outside_clip: bool = True, min_crop_scale: float = 13 / 14,
                 seed: int = 0, condition=None):
        super().__init__(batch_size, num_workers)
        self.dataset_kwargs = dict(root=str(root), num_frames=num_frames, height=height, width=width,
                                   max_stride=max_stride, layout=layout, min_frames=min_frames,
                                   ref_outside_clip=ref_outside_clip, min_crop_scale=min_crop_scale,
                                   seed=seed, condition=condition)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:  # reading the listing validates it before any training starts
            self.dataset = VideoClipDataset(**self.dataset_kwargs)
            self.dataset.set_epoch(self.epoch)


class LatentCacheDataModule(_EpochDataModule):
    """Latent batches (`latents`, `y`, `text`, `image`) from a cache written by `svi-prepare`.

    num_frames / height / width / condition / backbone_name / dims describe the training run; a cache
    built for anything else is refused (`CacheMismatchError`) with both settings named. Any of them
    left None is not checked.
    """

    def __init__(self, root: str, batch_size: int = 1, num_workers: int = 0, sample: str = "epoch",
                 allow_incomplete: bool = False, num_frames: int | None = None, height: int | None = None,
                 width: int | None = None, condition=None, backbone_name: str | None = None,
                 dims: dict | None = None):
        super().__init__(batch_size, num_workers)
        self.root, self.sample, self.allow_incomplete = str(root), sample, allow_incomplete
        self.expected = dict(condition=condition, num_frames=num_frames, height=height, width=width,
                             backbone_name=backbone_name, dims=dict(dims) if dims else None)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            dataset = CachedLatents(self.root, sample=self.sample, allow_incomplete=self.allow_incomplete)
            check_compatible(dataset.index, self.root, **self.expected)
            dataset.set_epoch(self.epoch)
            self.dataset = dataset
