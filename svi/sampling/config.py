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


class Offload(str, Enum):
    none = "none"  # every component on the device
    model = "model"  # each component on the device only while it runs
    group = "group"  # the transformer's blocks come to the device a group at a time
    sequential = "sequential"  # the transformer's leaf modules come one at a time (least memory, slowest)


class Quantize(str, Enum):
    truncate = "truncate"  # frames to uint8 by truncation (official)
    round = "round"  # by rounding (diffusers)


@dataclass
class LoraFileSchema:
    path: Optional[str] = None  # our adapter, an official SVI (DiffSynth) or a ComfyUI Wan LoRA; null: none
    path_low: Optional[str] = None  # Wan2.2-A14B: the low-noise expert's LoRA (lora.path is the high-noise one's)
    scale: float = 1.0  # multiplies alpha / r (the official inference merges with --lora_alpha 1.0)
    expert: Optional[str] = None  # high | low: one Wan 2.2 expert of a diffusers file holding both


@dataclass
class LowMemSchema:
    fp8: bool = False  # transformer weights stored in float8_e4m3fn, computed in the loaded dtype
    offload: Offload = Offload.none
    blocks_per_group: int = 1  # offload=group: transformer blocks per group
    stream: bool = False  # offload=group on CUDA: prefetch the next group on a side stream


@dataclass
class GenerateSchema:
    backbone: Any = MISSING
    condition: Any = MISSING
    flow: Any = MISSING
    sampler: Any = MISSING
    lora: LoraFileSchema = field(default_factory=LoraFileSchema)
    lowmem: LowMemSchema = field(default_factory=LowMemSchema)
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
