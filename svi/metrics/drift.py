"""Drift summaries of a metric over a long video (the keys of metrics.json's `drift`, docs/evaluate.md).

For a metric M with per-segment values M_s at segment times t_s (and, where it exists, a per-frame
series):

    first_last       M(first segment) vs M(last segment), signed so that positive = worse
                     (higher-is-better metrics: M_first - M_last; lower-is-better: M_last - M_first)
    first_last_pct   100 * first_last / |M_first|
    start_end        FramePack's |M(first 15 % of frames) - M(last 15 % of frames)| (direction-agnostic)
    slope_per_min    OLS slope of M_s against segment centre time, in units of M per minute (raw sign)
    at_<L>s          SVI's length table: M over the first L seconds of the same rollout (frame-weighted over
                     the segments that end by L); not applicable when the video is shorter than L
    delta            at_<L2>s - at_<L1>s for the table's two lengths (raw sign, as the paper's columns)
    last_at_<L>s     M of the last segment that ends by L: averages over the whole video dilute late drift
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from svi.metrics.video import Segment


def _finite_mean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)[ok]
        return float((values[ok] * w).sum() / w.sum()) if ok.any() and w.sum() > 0 else math.nan
    return float(values[ok].mean()) if ok.any() else math.nan


def degradation(first: float, last: float, higher_is_better: bool | None) -> float:
    """Positive = worse. Metrics without a better direction report the raw change last - first."""
    return first - last if higher_is_better else last - first


def ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x, dtype=np.float64)[ok], np.asarray(y, dtype=np.float64)[ok]
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def start_end_contrast(segment_values: np.ndarray, segments: Sequence[Segment], num_frames: int,
                       per_frame: np.ndarray | None = None, frac: float = 0.15) -> float:
    """|M(first frac of frames) - M(last frac of frames)|; from the per-frame series when there is one,
    otherwise from the segments whose centre falls in each part (at least the first / last segment)."""
    n = max(1, int(round(frac * num_frames)))
    if per_frame is not None and np.isfinite(per_frame).any():
        head, tail = _finite_mean(per_frame[:n]), _finite_mean(per_frame[-n:])
        if math.isfinite(head) and math.isfinite(tail):
            return abs(head - tail)
    centres = np.array([(s.start + s.stop) / 2 for s in segments])
    head = np.flatnonzero(centres < n) if (centres < n).any() else np.array([0])
    tail = np.flatnonzero(centres >= num_frames - n) if (centres >= num_frames - n).any() \
        else np.array([len(segments) - 1])
    sizes = np.array([len(s) for s in segments])
    return abs(_finite_mean(segment_values[head], sizes[head]) - _finite_mean(segment_values[tail], sizes[tail]))


def length_table(segment_values: np.ndarray, segments: Sequence[Segment], fps: float,
                 seconds: Sequence[float]) -> dict:
    """SVI's `M@L1 | M@L2 | delta` over prefixes of one rollout; lengths the video lacks are not applicable."""
    out: dict = {}
    total = segments[-1].stop if segments else 0
    sizes = np.array([len(s) for s in segments])
    stops = np.array([s.stop for s in segments])
    for L in seconds:
        key = f"{L:g}s"
        need = int(round(L * fps))
        if total < need:
            out[f"at_{key}"] = None
            out[f"last_at_{key}"] = None
            out.setdefault("not_applicable", []).append(
                f"{key}: the video is {total / fps:.1f} s long (needs {L:g} s)")
            continue
        inside = stops <= need + 0.5 * sizes  # a segment counts if most of it lies within L
        inside[0] = True
        out[f"at_{key}"] = _finite_mean(segment_values[inside], sizes[inside])
        out[f"last_at_{key}"] = float(segment_values[np.flatnonzero(inside)[-1]])
    if len(seconds) == 2:
        a, b = (out.get(f"at_{L:g}s") for L in seconds)
        out["delta"] = (b - a) if a is not None and b is not None else None
    return out


def summarise(segment_values: Sequence[float], segments: Sequence[Segment], fps: float,
              higher_is_better: bool | None, per_frame: np.ndarray | None = None, start_end_frac: float = 0.15,
              table_seconds: Sequence[float] = (50.0, 250.0)) -> dict:
    """All drift summaries of one metric (module docstring)."""
    values = np.asarray(segment_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    num_frames = segments[-1].stop if segments else 0
    out: dict = {"first": None, "last": None, "first_last": None, "first_last_pct": None}
    if len(finite):
        first, last = float(values[finite[0]]), float(values[finite[-1]])
        change = degradation(first, last, higher_is_better)
        out.update(first=first, last=last, first_last=change,
                   first_last_pct=100 * change / abs(first) if first != 0 else None)
    out["start_end"] = start_end_contrast(values, segments, num_frames, per_frame, start_end_frac) \
        if len(finite) else None
    centres_min = np.array([(s.start + s.stop) / 2 / fps / 60 for s in segments])
    slope = ols_slope(centres_min, values)
    out["slope_per_min"] = slope if math.isfinite(slope) else None
    out.update(length_table(values, segments, fps, table_seconds))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
