"""Synthetic latent batches of the right shapes: training without any video or encoder.

Each item is a fixed random tensor set derived from (seed, index), so a run over a small synthetic
dataset sees the same samples every epoch (a "fixed batch" on which the loss must go down); the mask
channels of `y` are the real Wan I2V mask of the chosen condition, and its extra inputs are random
tensors of the right shapes (`Condition.random_extras`).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from svi.conditions import ClipGeometry, Condition


class SyntheticLatents(Dataset):
    def __init__(self, num_samples: int, num_frames: int, height: int, width: int, condition: Condition,
                 latent_channels: int = 16, text_len: int = 512, text_dim: int = 4096,
                 image_tokens: int | None = 257, image_dim: int | None = 1280, seed: int = 0,
                 spatial_compression: int = 8):
        if (num_frames - 1) % 4:
            raise ValueError(f"data.num_frames must be 1+4k (e.g. 17, 81), got {num_frames}")
        s = spatial_compression  # 8 (Wan 2.1 VAE) | 16 (the Wan 2.2 VAE of TI2V-5B)
        if height % (2 * s) or width % (2 * s):
            raise ValueError(f"data.height/width must be multiples of {2 * s} (VAE /{s}, patch /2), got {height}x{width}")
        self.num_samples, self.seed, self.condition = num_samples, seed, condition
        self.geometry = ClipGeometry(num_frames, height, width)
        self.latent_shape = (latent_channels, 1 + (num_frames - 1) // 4, height // s, width // s)
        self.mask = condition.mask(1, num_frames, height // s, width // s)[0]  # (4, T, h, w)
        self.text_shape = (text_len, text_dim)
        self.image_shape = (image_tokens, image_dim) if image_dim else None

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + index)
        latents = torch.randn(self.latent_shape, generator=g)  # (16, T, h, w)
        cond = torch.randn(self.latent_shape, generator=g)
        item = {"latents": latents, "y": torch.cat([self.mask, cond], dim=0),
                "text": torch.randn(self.text_shape, generator=g)}
        if self.image_shape:
            item["image"] = torch.randn(self.image_shape, generator=g)
        extras = self.condition.random_extras(1, self.geometry, g)
        item["extras"] = {k: v[0] for k, v in extras.items()}
        return item


class SyntheticDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 1, num_workers: int = 0, **dataset_kwargs):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset_kwargs = dataset_kwargs

    def setup(self, stage: str | None = None) -> None:
        self.dataset = SyntheticLatents(**self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=False, persistent_workers=self.num_workers > 0)
