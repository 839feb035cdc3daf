"""Batched long rollouts on held-out toy worlds, through the SVI clip sampler's own clip step.

Every video starts from the first K frames of a test world (frame 0 is the Shot reference; with K = 1
this is `svi-generate`'s single input image) and is extended clip by clip exactly as `svi-generate`
does it (`SVIClipSampler.sample_clip`: condition from the previous clip's last frames, pixel round
trip with the sampler's 8-bit quantisation, fresh noise per clip). A talk or dance condition gets each
clip's own slice of the world's sound or pose video (`svi.toy.signals`). The noise of clip c is drawn from
(noise_seed, c) for the whole batch, so two models rolled out with the same seed see identical noise:
their differences are paired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from svi.toy.clips import ToyWorldSpec, heldout_scene_seed, to_tensor
from svi.toy.signals import batch_signals
from svi.toy.world import caption, render
from svi.sampling.media import from_uint8, quantize_frames
from svi.sampling.svi_clip import SVIClipSampler, motion_latent_frames


@dataclass
class Rollout:
    """videos uint8 (B, K + C*(F-K), H, W, 3): frame j is world frame j (frames 0..K-1 = the input)."""

    videos: np.ndarray
    worlds: list
    frames_per_clip: int  # new frames per clip, F - K


def check_motion_from(value: str, knob: str = "motion_from") -> None:
    """Refuse an unknown motion source (svi-demo calls this with knob="eval.motion_from" before any fine-tune)."""
    if value not in ("generated", "truth"):
        raise ValueError(f"{knob} must be 'generated' (SVI's hand-off) or 'truth' (teacher forcing, a diagnostic), "
                         f"got {value!r}")


def heldout_worlds(spec: ToyWorldSpec, seed: int, num_videos: int) -> list:
    """The held-out worlds of evaluation seed `seed` (never drawn by `data=toy`)."""
    return [spec.world(heldout_scene_seed(10_000 + seed, i)) for i in range(num_videos)]


@torch.no_grad()
def rollout(sampler: SVIClipSampler, worlds: list, num_clips: int, num_frames: int, noise_seed: int,
            height: int, width: int, batch_size: int = 32, desc: str = "rollout", progress: bool = True,
            motion_from: str = "generated") -> Rollout:
    """`motion_from`: where each clip's K motion frames come from. "generated" (SVI): the last K frames the
    previous clip wrote, through 8 bits. "truth" (a diagnostic, teacher forcing): the world's true frames
    at the same place, so no clip sees an earlier clip's errors; what drifts then is not the chaining."""
    check_motion_from(motion_from)
    stack = sampler.stack
    K = sampler.num_motion_frames
    new = num_frames - K
    # The video starts from the world's first K true frames (frame 0 is also the Shot reference); every
    # clip then adds F - K frames. With K > 1 this is a continuation, so the model sees the motion.
    out = np.zeros((len(worlds), K + num_clips * new, height, width, 3), dtype=np.uint8)
    bar = tqdm(total=num_clips * len(worlds), desc=desc, unit="clip", leave=False, disable=not progress)
    for b0 in range(0, len(worlds), batch_size):
        batch = worlds[b0 : b0 + batch_size]
        B = len(batch)
        first = np.stack([render(w, 0, K, height, width) for w in batch])  # (B, K, H, W, 3)
        ref = torch.stack([to_tensor(f[:1])[:, 0] for f in first])  # (B, 3, H, W): frame 0
        out[b0 : b0 + B, :K] = first
        text = stack.encode_text([caption(w) for w in batch])
        motion, prev = torch.stack([to_tensor(f) for f in first]), None  # (B, 3, K, H, W)
        pos = K  # next world frame to fill
        for c in range(num_clips):
            g = torch.Generator().manual_seed(int(noise_seed) * 1_000_003 + c)

            def noise(shape, g=g, b0=b0):
                full = torch.randn((b0 + shape[0], *shape[1:]), generator=g)  # same draw per video index
                return full[b0:]

            extras = batch_signals(sampler.condition, stack, batch, pos - K, num_frames, height, width)
            x = sampler.sample_clip(motion, ref, num_frames, text, noise, extras=extras,
                                    prev_latents=prev if sampler.handoff == "latent" else None)
            video = stack.decode_latents(x)  # (B, 3, F, H, W)
            frames = quantize_frames(video, sampler.quantize).numpy()  # (B, F, H, W, 3), as the sampler writes them
            out[b0 : b0 + B, pos : pos + new] = frames[:, K:]
            pos += new
            if motion_from == "truth":  # the true frames pos-K .. pos-1, where the generated ones would be
                motion = torch.cat([from_uint8(render(w, pos - K, K, height, width)) for w in batch])
                prev = None  # the sampler encodes the true frames (latent hand-off included)
            else:
                motion = torch.cat([from_uint8(f[-K:]) for f in frames])  # (B, 3, K, H, W): 8-bit round trip
                prev = x[:, :, -motion_latent_frames(K):]
            bar.update(B)
    bar.close()
    return Rollout(out, list(worlds), new)


def ground_truth(worlds: list, num_frames: int, height: int, width: int) -> np.ndarray:
    """(B, num_frames, H, W, 3) uint8: the true videos."""
    return np.stack([render(w, 0, num_frames, height, width) for w in worlds])


def autoencoder_round_trip(stack, videos: np.ndarray, num_frames: int, num_motion_frames: int = 1) -> np.ndarray:
    """The ceiling: true videos passed through the autoencoder clip by clip (uint8, same layout): each
    clip of F frames is the K true frames before it plus its F - K new ones, as in a rollout."""
    B, N = videos.shape[:2]
    out = videos.copy()
    K = int(num_motion_frames)
    new = num_frames - K
    starts = list(range(K, N - new + 1, new))
    if starts and starts[-1] + new < N:  # a tail shorter than a clip: one more clip, aligned to the end
        starts.append(N - new)
    for s in starts:
        clip = torch.stack([to_tensor(v[s - K : s + new]) for v in videos])  # (B, 3, F, H, W)
        rec = stack.decode_latents(stack.encode_video(clip))
        out[:, s : s + new] = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)[:, K:]
    return out
