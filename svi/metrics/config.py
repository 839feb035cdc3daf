"""Typed schema of the `metrics/` config group (conf/metrics/*.yaml): a misspelt knob fails at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass
class FrechetConfig:
    dim: int = 64  # feature size of the fixed random conv net
    size: int = 64  # frames are resized to size x size first
    seed: int = 0  # the net's weights come from this seed (same on every machine)


@dataclass
class ExtractorPaths:
    """Local weights of the learned metrics; null = the metric is reported unavailable."""

    dino: Optional[str] = None  # transformers ViTModel (DINO ViT-B/16) or Dinov2Model directory
    clip_b32: Optional[str] = None  # transformers CLIP (ViT-B/32) directory with the visual projection
    clip_l14: Optional[str] = None  # transformers CLIP (ViT-L/14) directory with the visual projection
    laion_head: Optional[str] = None  # LAION aesthetic head: nn.Linear(768, 1) state dict (.pth | .safetensors)
    i3d: Optional[str] = None  # TorchScript I3D (i3d_torchscript.pt): FVD
    syncnet: Optional[str] = None  # folder with SyncNet's syncnet_v2.model and sfd_face.pth: Sync-C / Sync-D
    interpolator: Optional[str] = None  # TorchScript frame interpolator (AMT-S export): motion smoothness


@dataclass
class MetricsConfig:
    include: Optional[list[str]] = None  # metric names to compute; null = all (svi.metrics.METRICS)
    segment_seconds: Optional[float] = None  # null: one segment per generated clip; else fixed windows
    anchor_frame: int = 0  # colour drift and *_anchor similarities are measured against this frame
    psnr_cap_db: float = 60.0  # identical frames would give infinite PSNR
    start_end_frac: float = 0.15  # FramePack's start-end contrast: first / last 15 % of the frames
    table_seconds: list[float] = field(default_factory=lambda: [50.0, 250.0])  # SVI's length table
    histogram_bins: int = 8  # per channel, joint RGB histogram (8^3 cells)
    hf_cutoff: float = 0.25  # cycles/pixel above which spectral energy counts as high frequency
    frechet: FrechetConfig = field(default_factory=FrechetConfig)
    extractors: ExtractorPaths = field(default_factory=ExtractorPaths)
    batch_size: int = 32  # frames per forward pass of a learned extractor
    plots: bool = True  # PNG curves beside metrics.json


def metrics_config(value: Any = None) -> MetricsConfig:
    """A `MetricsConfig` (nested dataclasses) from a dataclass, dict, DictConfig or None; unknown keys fail."""
    if isinstance(value, MetricsConfig):
        return value
    base = OmegaConf.structured(MetricsConfig)
    if value is not None:
        base = OmegaConf.merge(base, value)
    return OmegaConf.to_object(base)


def register_configs() -> None:
    ConfigStore.instance().store(group="metrics", name="schema", node=MetricsConfig)


register_configs()
