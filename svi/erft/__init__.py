"""The ERFT method in pure torch: injection, error recycling, and the replay memory."""

from svi.erft.injection import (PER_SAMPLE_SOURCES, Injection, InjectionConfig, draw_injection, gate_on_memory, img_buckets, inject,
                                last_frames_error, rollout_image_error, sample_errors, self_image_error)
from svi.erft.recycling import StepResult, bidirectional_errors, erft_step, recycle_target

__all__ = [
    "PER_SAMPLE_SOURCES",
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
    "rollout_image_error",
    "sample_errors",
    "self_image_error",
]
