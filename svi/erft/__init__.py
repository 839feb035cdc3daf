"""The ERFT method in pure torch: injection, image-error sources, error recycling, the replay memory."""

from svi.erft.image_error import ImageErrorRequest, ImageErrorSource, WindowImageError, allowed_buckets
from svi.erft.injection import (Injection, InjectionConfig, draw_injection, gate_on_memory, inject, modulate,
                                modulate_rows, sample_errors)
from svi.erft.memory import MemoryConfig, MemoryReader, ReplayMemory
from svi.erft.recycling import StepResult, bidirectional_errors, erft_step, recycle_target

__all__ = [
    "ImageErrorRequest",
    "ImageErrorSource",
    "Injection",
    "InjectionConfig",
    "MemoryConfig",
    "MemoryReader",
    "ReplayMemory",
    "StepResult",
    "WindowImageError",
    "allowed_buckets",
    "bidirectional_errors",
    "draw_injection",
    "erft_step",
    "gate_on_memory",
    "inject",
    "modulate",
    "modulate_rows",
    "recycle_target",
    "sample_errors",
]
