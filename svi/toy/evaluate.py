"""Evaluate toy rollouts: per-clip world metrics, the primary drift number, paired intervals."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from svi.toy.metrics import clip_means, correlation, frame_metrics

# The primary drift measure and how to read it. Positive = worse; 0 = as good as the ground truth
# through the autoencoder. world_rmse (distance to the nearest valid world frame) counts colour shift,
# blur and identity loss alike; bg_rmse (reported too) sees only the background, so erasing the sprites
# scores well on it.
PRIMARY = "world_rmse"
BACKGROUND = "bg_rmse"
LATE_FRACTION = 1 / 3  # "late" = the last third of the clips


def late_clips(num_clips: int) -> slice:
    """The clips the drift is read from: the last `LATE_FRACTION` of them (at least one)."""
    return slice(num_clips - max(1, round(num_clips * LATE_FRACTION)), num_clips)


@dataclass
class ModelEval:
    """Per video x clip metric arrays of one model on one seed's worlds."""

    per_clip: dict[str, np.ndarray]  # metric -> (videos, clips)
    per_video: dict[str, np.ndarray] = field(default_factory=dict)  # metric -> (videos,): toy_sync, toy_sync_late

    def video_values(self, metric: str) -> np.ndarray:
        """One number per video: a per-video metric, or a per-clip one averaged over all clips."""
        if metric in self.per_video:
            return self.per_video[metric]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a video with the metric undefined: NaN
            return np.nanmean(self.per_clip[metric], axis=1)

    def drift(self, ceiling: "ModelEval", metric: str = PRIMARY) -> np.ndarray:
        """Per video: mean of `metric` over the late clips minus the autoencoder ceiling's (same clips)."""
        v, c = self.per_clip[metric], ceiling.per_clip[metric]
        late = late_clips(v.shape[1])
        return np.nanmean(v[:, late], axis=1) - np.nanmean(c[:, late], axis=1)


def _video_metrics(video: np.ndarray, world, frames_per_clip: int, start: int) -> tuple[dict, dict]:
    """Per-clip means of the frame metrics, and per-video numbers: in a voiced world the toy sync, the
    correlation of the generated top-sprite size with the true one (an affine function of the sound's
    loudness), over all generated frames and over the first and the last third of the clips' frames."""
    frames = frame_metrics(world, video[start:], start=start)
    scalars = {}
    if np.isfinite(frames["size_true"]).any():
        n = len(frames["size"]) // frames_per_clip
        late = late_clips(n)
        early = slice(0, late.stop - late.start)
        size, true = frames["size"], frames["size_true"]
        scalars = {"toy_sync": correlation(size, true)}
        for name, part in (("toy_sync_early", early), ("toy_sync_late", late)):
            lo, hi = part.start * frames_per_clip, part.stop * frames_per_clip
            scalars[name] = correlation(size[lo:hi], true[lo:hi])
    return clip_means(frames, frames_per_clip), scalars


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def metric_pool(workers: int):
    """A process pool for `evaluate_videos` (the metrics are per-frame numpy, one core per worker), or
    None for `workers` <= 1. Spawned, not forked: the parent holds torch's OpenMP threads."""
    if int(workers) <= 1:
        return None
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(int(workers), mp_context=mp.get_context("spawn"), initializer=_single_thread)


def evaluate_videos(videos: np.ndarray, worlds: list, frames_per_clip: int, start: int = 1, pool=None) -> ModelEval:
    """videos uint8 (B, K + C*n, H, W, 3) -> metrics of the generated frames (the K = `start` input
    frames excluded). `pool` (from `metric_pool`) spreads the videos over processes; same numbers."""
    n = len(videos)
    args = (list(videos), list(worlds), [frames_per_clip] * n, [start] * n)
    rows = list(pool.map(_video_metrics, *args)) if pool is not None else list(map(_video_metrics, *args))
    per: dict[str, list] = {}
    videos: dict[str, list] = {}
    for m, scalars in rows:
        for k, v in m.items():
            per.setdefault(k, []).append(v)
        for k, v in scalars.items():
            videos.setdefault(k, []).append(v)
    return ModelEval({k: np.stack(v) for k, v in per.items()}, {k: np.array(v) for k, v in videos.items()})


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile via the Cornish-Fisher expansion (error < 1e-3 for df >= 5; no scipy needed)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) \
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def paired_interval(diff: np.ndarray, confidence: float = 0.95) -> dict:
    """Mean and two-sided t interval of paired differences (one per video)."""
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": n, "better": 0}
    se = float(d.std(ddof=1) / math.sqrt(n))
    h = t_quantile(0.5 + confidence / 2, n - 1) * se
    return {"mean": mean, "low": mean - h, "high": mean + h, "n": n, "better": int((d < 0).sum())}
