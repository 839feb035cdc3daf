"""The toy world's talk and dance signals as a condition type's raw inputs, and the toy audio encoder.

A voiced toy scene (`make_scene(voice=True)`) has a sound whose loudness drives its top sprite's size; a
dancing one (`dance=True`) has sprites on a choreography, shown by a pose video of coloured markers. Both are
exact functions of the frame index, so a training clip or a rollout clip gets exactly its own slice:

    clip_signals(condition, world, start, F, H, W)  -> the raw extras `Condition.load_extras` would read from
                                                       files (talk: the clip's sound with 2 frames of context
                                                       each side; dance: the clip's pose frames)

`EnvelopeFeatures` is condition=toy_talk's audio encoder (the stand-in for wav2vec2, with the same call):
the sound's RMS loudness in `bins` equal steps per video frame, scaled so that the toy voice gives its
loudness envelope a(t) in [0, 1]. `svi-toyworld voice=true` writes the same sound as wav files, so
`svi-generate condition=toy_talk inputs.audio=...` reads it through the real audio path.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from svi.toy.world import SAMPLE_RATE, render_pose, voice_samples


class EnvelopeFeatures:
    """Speech -> frame-aligned loudness features (B, F, 1, bins): RMS of `bins` equal slices of each frame."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, bins: int = 4):
        if bins < 1:
            raise ValueError(f"condition.audio_encoder.bins must be >= 1, got {bins}")
        self.sample_rate, self.bins = int(sample_rate), int(bins)

    def check(self) -> None:
        """Nothing to load (wav2vec2 checks its directory here)."""

    def __call__(self, samples: Tensor, num_frames: int) -> Tensor:
        power = samples.float().pow(2).unsqueeze(1)  # (B, 1, n)
        rms = F.adaptive_avg_pool1d(power, num_frames * self.bins).clamp_min(0).sqrt()  # (B, 1, F * bins)
        # a tone of amplitude 0.5 a has RMS 0.5 a / sqrt(2): scaled back to a
        return (rms * 2 * math.sqrt(2)).view(samples.shape[0], num_frames, 1, self.bins)


def _audio(condition, world, start: int, num_frames: int, height: int, width: int) -> Tensor:
    """The clip's sound with `MARGIN` frames of context each side, at the encoder's sample rate: what
    `TalkCondition.load_extras` cuts from a file."""
    from svi.conditions.talk import MARGIN

    rate = getattr(condition.audio_encoder, "sample_rate", SAMPLE_RATE)
    return torch.from_numpy(voice_samples(world, start - MARGIN, start + num_frames + MARGIN,
                                          condition.frame_rate, rate))


def _pose(condition, world, start: int, num_frames: int, height: int, width: int) -> Tensor:
    """The clip's pose frames (3, F, H, W) in [0, 1]: what `DanceCondition.load_extras` reads from a pose video."""
    frames = render_pose(world, start, num_frames, height, width)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0


#: extra input name (a condition type's `extra_fields`) -> its toy-world rendering
SIGNALS: dict[str, Callable[..., Tensor]] = {"audio": _audio, "pose": _pose}


#: extra input name -> the world option that makes it (a voice for audio, a dance for pose)
WORLD_OPTIONS = {"audio": "voice", "pose": "dance"}


def signal_world(spec, condition):
    """The `ToyWorldSpec` with the signals `condition` takes switched on (talk: voiced worlds; dance: dancing)."""
    import dataclasses

    wanted = {WORLD_OPTIONS[f]: True for f in getattr(condition, "extra_fields", ()) if f in WORLD_OPTIONS}
    return dataclasses.replace(spec, **wanted) if wanted else spec


def clip_signals(condition, world, start: int, num_frames: int, height: int, width: int) -> dict[str, Tensor]:
    """The raw extras of the clip of world frames [start, start + num_frames) for `condition`'s extra inputs."""
    fields = tuple(getattr(condition, "extra_fields", ()) or ())
    unknown = [f for f in fields if f not in SIGNALS]
    if unknown:
        raise ValueError(f"condition '{condition.name}' takes {unknown}, which the toy world does not render "
                         f"(it renders {sorted(SIGNALS)}); add a renderer to svi.toy.signals.SIGNALS")
    return {f: SIGNALS[f](condition, world, start, num_frames, height, width) for f in fields}


def batch_signals(condition, stack, worlds: list, start: int, num_frames: int, height: int,
                  width: int) -> dict[str, Tensor]:
    """Encoded extras (what the denoiser takes) of the same clip of several worlds, batched."""
    raws = [clip_signals(condition, w, start, num_frames, height, width) for w in worlds]
    if not raws or not raws[0]:
        return {}
    raw = {k: torch.stack([r[k] for r in raws]) for k in raws[0]}
    return condition.encode_extras(stack, raw)


def pose_video(world, num_frames: int, height: int, width: int) -> np.ndarray:
    """The whole pose video (uint8, for side-by-side views)."""
    return render_pose(world, 0, num_frames, height, width)
