"""Typed schema of `conf/generate.yaml`, so a misspelt or mistyped knob fails when the config is composed."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Handoff(str, Enum):
    pixel = "pixel"  # decode, hand the last K frames over, re-encode them (official)
    latent = "latent"  # reuse the last latent frames in the next condition (no VAE round trip)


class ImageResize(str, Enum):
    keep_aspect = "keep_aspect"  # the image's aspect ratio, at most max_width wide, sides multiples of 16 (official)
    stretch = "stretch"  # exactly height x width


class Quantize(str, Enum):
    truncate = "truncate"  # frames to uint8 by truncation (official)
    round = "round"  # by rounding (diffusers)


@dataclass
class LoraFileSchema:
    path: Optional[str] = None  # our adapter (file or directory) or an official SVI LoRA file; null: none
    scale: float = 1.0  # multiplies alpha / r (the official inference merges with --lora_alpha 1.0)


@dataclass
class GenerateSchema:
    backbone: Any = MISSING
    condition: Any = MISSING
    flow: Any = MISSING
    sampler: Any = MISSING
    lora: LoraFileSchema = field(default_factory=LoraFileSchema)
    task_name: str = "generate"
    experiment_name: str = MISSING
    image: Optional[str] = MISSING  # null only for a text-to-video backbone; may be left out with `video`
    video: Optional[str] = None  # an existing video to continue (its last K frames start clip 0)
    prompts: str = MISSING
    inputs: Dict[str, Any] = field(default_factory=dict)
    num_clips: Optional[int] = None
    num_frames_total: Optional[int] = None  # exact video length in frames (instead of num_clips)
    use_first_prompt_only: Optional[bool] = None
    prompt_repeat_times: int = 1
    seed: int = 0
    seed_stride: int = 1
    same_seed: bool = False
    cfg: float = 5.0
    negative_prompt: Optional[str] = None
    num_frames: int = MISSING
    height: int = MISSING
    width: int = MISSING
    image_resize: ImageResize = ImageResize.keep_aspect
    max_width: Optional[int] = None
    quantize: Quantize = Quantize.truncate
    handoff: Handoff = Handoff.pixel
    fps: int = 16
    out: Optional[str] = None
    resume: bool = False
    stop_after: Optional[int] = None
    save_latents: bool = False
    device: str = "auto"
    progress: bool = True


def register_configs() -> None:
    from svi.config import register_schema
    from svi.sampling.fifo import FIFOSampler
    from svi.sampling.miga import MIGASampler

    ConfigStore.instance().store(name="generate_schema", node=GenerateSchema)
    register_schema("sampler", "fifo_schema", FIFOSampler)  # conf/sampler/fifo.yaml is checked at compose
    register_schema("sampler", "miga_schema", MIGASampler)


register_configs()
