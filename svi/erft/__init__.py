"""The ERFT method in pure torch: injection, error recycling, and the replay memory."""

from svi.erft.injection import (Injection, InjectionConfig, draw_injection, gate_on_memory, img_buckets, inject,
                                last_frames_error, sample_errors, self_image_error)
from svi.erft.recycling import StepResult, bidirectional_errors, erft_step, recycle_target

__all__ = [
    "Injection",
    "InjectionConfig",
    "StepResult",
    "bidirectional_errors",
    "draw_injection",
    "erft_step",
    "gate_on_memory",
    "img_buckets",
    "inject",
    "last_frames_error",
    "recycle_target",
    "sample_errors",
    "self_image_error",
]
