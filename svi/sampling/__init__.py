"""Long-video samplers behind one interface, the per-clip schedule, streaming output and resume."""

from svi.sampling.base import Chunk, Denoiser, EulerSolver, GenerationRequest, LongVideoSampler, WindowCond
from svi.sampling.decode import StreamingDecoder
from svi.sampling.diagonal import DiagonalSampler
from svi.sampling.fifo import FIFOSampler
from svi.sampling.miga import MIGASampler
from svi.sampling.schedule import (SVI_NEGATIVE_PROMPT, WAN_NEGATIVE_PROMPT, ClipSpec, ScheduleError, build_schedule,
                                   load_entries)
from svi.sampling.session import OutputSession, ResumeError
from svi.sampling.svi_clip import SVIClipSampler, latent_handoff, motion_latent_frames

__all__ = ["Chunk", "ClipSpec", "Denoiser", "DiagonalSampler", "EulerSolver", "FIFOSampler", "GenerationRequest",
           "LongVideoSampler", "MIGASampler", "OutputSession", "ResumeError", "SVIClipSampler", "SVI_NEGATIVE_PROMPT",
           "ScheduleError", "StreamingDecoder", "WAN_NEGATIVE_PROMPT", "WindowCond", "build_schedule",
           "latent_handoff", "load_entries", "motion_latent_frames"]
