"""The metric registry: what each metric is (`MetricInfo`), the class that computes it (`Metric`), and
what the evaluation loop hands to it (`EvalContext` once per video, `SegmentInputs` once per segment).

A new metric is one class and one call:

    @register_metric
    class MeanGrey(FrameMetric):
        info = (MetricInfo("mean_grey", unit="", higher_is_better=None, per_frame=True, needs=None,
                           description="mean grey level of the frame"),)

        def measure(self, inputs, ctx):
            return pixel.luma(inputs.frames).flatten(1).mean(dim=1)  # (n,)

`evaluate_video` (svi/metrics/suite.py) then computes it whenever it is requested, and the report,
`metrics.json`, the CSV files and the plots include it. The metrics svi ships live in
svi/metrics/builtin.py, their definitions in docs/evaluate.md.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
from torch import Tensor

from svi.metrics.config import MetricsConfig
from svi.metrics.video import Segment


@dataclass(frozen=True)
class MetricInfo:
    """What a metric is: how reports label, orient and explain it, and what it needs to be computed.

    `needs` names the inputs beyond the frames, joined by "+": "gt" (a ground-truth video), "latents" (a
    latent source), or the key of an extractor in `evaluate_video(extractors=...)` (`build_extractors`
    makes "dino", "clip_b32", "aesthetic", "i3d" and "syncnet" from configured weights). A metric whose input is missing is reported
    unavailable, with what to configure, instead of being computed.
    """

    name: str
    unit: str
    higher_is_better: bool | None  # None: no better direction (drift reports the raw change)
    per_frame: bool  # has a per-frame series (else per segment only)
    needs: str | None  # None (always available) | "gt" | "latents" | an extractor name
    description: str


@dataclass
class SegmentInputs:
    """What the loop reads or computes once per segment and hands to every metric. Each input is computed
    once however many metrics use it, and only when a requested metric needs it (else it is None / empty).

        frames    (n, 3, H, W) float in [0, 1]
        diffs     (n,) mean |F_t - F_{t-1}| on [0, 1] pixels; entry 0 is against the previous segment's
                  last frame (NaN in the first segment)
        gt        (m, 3, H, W), m <= n: ground truth of the segment's first m frames; None once it has ended
        features  extractor name -> its output on `frames`, e.g. (n, d) normalised features
        latents   (C, T, h, w) latent frames of the segment; None when the latent source has none for it
    """

    frames: Tensor
    diffs: Tensor
    gt: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    latents: Tensor | None = None


@dataclass
class EvalContext:
    """What the metrics of one video share: the settings, the segments, the anchor frame, the extractors,
    and the arrays they fill.

    The arrays hold every requested name that can be computed, NaN until a metric writes them:
    `per_frame[name]` (num_frames,) for metrics with a per-frame series, `per_segment[name]`
    (num_segments,) and `video[name]` for all. A value left NaN is reported as missing (null in
    metrics.json).
    """

    cfg: MetricsConfig
    segments: list[Segment]
    anchor: Tensor  # (1, 3, H, W) in [0, 1]: frame `cfg.anchor_frame`, which drift is measured against
    extractors: Mapping[str, Callable[[Tensor], Tensor]]  # name -> frames (n, 3, H, W) -> (n, ...)
    per_frame: dict[str, np.ndarray]
    per_segment: dict[str, np.ndarray]
    video: dict[str, float]
    fps: float = 16.0  # the video's frame rate
    audio: np.ndarray | None = None  # its sound track, 16 kHz mono from frame 0 (lip-sync metrics), if any

    @property
    def num_frames(self) -> int:
        return self.segments[-1].stop


class Metric(ABC):
    """One metric, or a small family that shares its inputs and state, measured on one video.

    `info` lists one `MetricInfo` per name the class reports. `evaluate_video` makes one instance per
    video, with the names of `info` that were requested and can be computed here (`self.names`; only
    these have arrays in the context), and calls

        begin(ctx)                    once, before the first segment: per-video state (anchor features...)
        update(segment, inputs, ctx)  once per segment, in order: per-frame values go into
                                      ctx.per_frame[name][segment.start:segment.stop]
        finish(ctx)                   once, after the last segment: fill ctx.per_segment and ctx.video
    """

    info: ClassVar[tuple[MetricInfo, ...]] = ()

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(names)

    def begin(self, ctx: EvalContext) -> None:
        """Set up per-video state; most metrics keep none."""

    @abstractmethod
    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None: ...

    @abstractmethod
    def finish(self, ctx: EvalContext) -> None: ...


class FrameMetric(Metric):
    """A single metric with one value per frame: a segment's value is the mean of its measured frames,
    the video's the mean of all measured frames (frames never measured, e.g. past the end of the ground
    truth, are left out). Subclasses only implement `measure`."""

    @property
    def name(self) -> str:
        return self.info[0].name

    @abstractmethod
    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor | None:
        """Values (m,) for the segment's first m <= n frames, or None when nothing can be measured."""

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        values = self.measure(inputs, ctx)
        if values is not None:
            ctx.per_frame[self.name][segment.start:segment.start + len(values)] = values.numpy()

    def finish(self, ctx: EvalContext) -> None:
        series = ctx.per_frame[self.name]
        ctx.per_segment[self.name] = segment_means(series, ctx.segments)
        ctx.video[self.name] = finite_mean(series)


def segment_means(series: np.ndarray, segments: Sequence[Segment]) -> np.ndarray:
    """(num_frames,) -> (num_segments,): the mean of each segment's finite values, NaN where it has none."""
    return np.array([np.nanmean(series[s.start:s.stop]) if np.isfinite(series[s.start:s.stop]).any() else np.nan
                     for s in segments])


def finite_mean(values: np.ndarray) -> float:
    """The mean of the finite values, NaN when there are none."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


# -- the registry ------------------------------------------------------------------------------

METRICS: dict[str, MetricInfo] = {}  # name -> what it is, in the order reports list metrics
METRIC_CLASSES: dict[str, type[Metric]] = {}  # name -> the class that computes it
WEIGHT_FREE: list[str] = []  # names that need no weights (nothing, or only a ground-truth video)


def register_metric(cls: type[Metric]) -> type[Metric]:
    """Register `cls` under every name of its `info`; returns `cls`, so it also works as a class decorator.

    The class is checked here rather than halfway through an evaluation: it must be a complete `Metric`
    subclass, and its names must be new."""
    if not (inspect.isclass(cls) and issubclass(cls, Metric)):
        raise TypeError(f"register_metric takes a Metric subclass, got {cls!r}")
    if inspect.isabstract(cls):
        missing = sorted(getattr(cls, "__abstractmethods__", ()))
        raise TypeError(f"{cls.__name__} does not implement {missing}, so it cannot be registered")
    names = [info.name for info in cls.info]
    if not names:
        raise ValueError(f"{cls.__name__}.info lists no MetricInfo: there is nothing to register")
    if len(set(names)) != len(names):
        raise ValueError(f"{cls.__name__}.info repeats a name: {names}")
    taken = [n for n in names if n in METRICS]
    if taken:
        raise ValueError(f"metric name(s) {taken} of {cls.__name__} are already registered by "
                         f"{sorted({METRIC_CLASSES[n].__name__ for n in taken})}")
    if issubclass(cls, FrameMetric) and (len(cls.info) != 1 or not cls.info[0].per_frame):
        raise ValueError(f"{cls.__name__} is a FrameMetric, so its info must be one MetricInfo with "
                         f"per_frame=True")
    for info in cls.info:
        METRICS[info.name] = info
        METRIC_CLASSES[info.name] = cls
        if info.needs in (None, "gt"):
            WEIGHT_FREE.append(info.name)
    return cls
