"""Synthetic videos with known answers, and generation directories in svi-generate's layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

H = W = 48


def textured(seed: int = 0, n: int = 1, h: int = H, w: int = W, noise: float = 0.08) -> np.ndarray:
    """n copies of one smooth random texture with fine detail (`noise`), uint8 (n, h, w, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (3 * x + c)) * np.cos(2 * np.pi * (2 * y - c))
                     for c in (0.0, 0.3, 0.6)], -1)
    img = np.clip(base + rng.normal(0, noise, base.shape), 0, 1)
    return np.repeat((img * 255).round().astype(np.uint8)[None], n, 0)


def moving(n: int, seed: int = 0, step: int = 1, noise: float = 0.08, positions=None) -> np.ndarray:
    """A texture scrolling `step` px per frame (smooth motion), or placed at the given x `positions`."""
    positions = list(positions) if positions is not None else [t * step for t in range(n)]
    big = textured(seed, 1, H, W + max(positions) + 1, noise)[0]
    return np.stack([big[:, p : p + W] for p in positions])


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return frames.copy()
    r = int(3 * sigma + 1)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum())
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def shift_colour(frames: np.ndarray, rgb) -> np.ndarray:
    return np.clip(frames.astype(np.int16) + np.asarray(rgb, dtype=np.int16), 0, 255).astype(np.uint8)


def make_generation(out: Path, clip_frames=(16, 16, 16, 17), drift: float = 0.0, world_seed: int = 3,
                    size: int = 64, fps: int = 16) -> tuple[Path, Path]:
    """A toy-world video written through svi-generate's own OutputSession (video.mp4, clips/, state/),
    optionally degraded clip by clip (blur + a warm colour cast growing with `drift`); returns (dir, scenes.jsonl)."""
    from svi.toy.world import make_scene, render
    from svi.sampling import Chunk, OutputSession

    scene = make_scene(world_seed)
    truth = render(scene, 0, sum(clip_frames), size, size)
    config = {"num_frames": 17, "fps": fps, "condition": {"name": "shot", "num_motion_frames": 1},
              "backbone": {"_target_": "synthetic"}, "sampler": {"name": "svi"}}
    session = OutputSession(out, config, fps=fps)
    session.start(resume=False)
    start = 0
    for i, n in enumerate(clip_frames):
        frames = truth[start:start + n]
        if drift:
            frames = shift_colour(blur(frames, drift * i), (int(12 * drift * i), 0, -int(12 * drift * i)))
        session.commit(Chunk(index=i, frames=frames, cursor=i + 1, carry={}, info={"clip": i}))
        start += n
    scenes = out.parent / f"{out.name}_scenes.jsonl"
    scenes.write_text(json.dumps({"film": False, "scene": scene.to_dict()}) + "\n")
    return out, scenes
