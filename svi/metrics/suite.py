"""The evaluation loop: one pass over a video, segment by segment, every requested metric at once.

`evaluate_video` reads each segment once, computes the inputs the requested metrics share (float
frames, frame differences, and where a requested metric needs them: ground-truth frames, extractor
features, latents) and hands them to each metric of the registry (svi/metrics/registry.py). It returns
a `Report` (per-frame series, per-segment values, one value per video, and the reason each unavailable
metric is missing); `Report.summary()` adds the drift summaries. Nothing here writes files
(svi/metrics/report.py does) or knows about Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from svi.metrics import builtin  # noqa: F401  (registers the metrics svi ships, in report order)
from svi.metrics import motion  # noqa: F401  (motion smoothness)
from svi.metrics import learned, pixel
from svi.metrics.conditioned import I3DFeatures, SyncNetScorer  # (also registers sync_c, sync_d, fvd)
from svi.metrics.config import MetricsConfig, metrics_config
from svi.metrics.drift import summarise
from svi.metrics.registry import METRIC_CLASSES, METRICS, EvalContext, Metric, SegmentInputs
from svi.metrics.video import Segment, VideoSource, seams


# -- latent sources ----------------------------------------------------------------------------

class VaeLatents:
    """Latents of each segment from a backbone's VAE: the first 1+4k frames of the segment are encoded."""

    def __init__(self, stack):
        self.stack = stack

    def __call__(self, frames: Tensor, segment: Segment) -> Tensor | None:
        n = 1 + 4 * ((frames.shape[0] - 1) // 4)
        video = (frames[:n] * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, n, H, W) in [-1, 1]
        return self.stack.encode_video(video)[0].float().cpu()  # (16, T, h, w)


class SavedLatents:
    """Latents a run saved per clip: `<dir>/clip_NNNN.pt` holding a (16, T, h, w) or (1, 16, T, h, w) tensor."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __call__(self, frames: Tensor, segment: Segment) -> Tensor | None:
        path = self.folder / f"clip_{segment.index:04d}.pt"
        if not path.is_file():
            return None
        z = torch.load(path, map_location="cpu", weights_only=True)
        return (z[0] if z.ndim == 5 else z).float()


# -- the report --------------------------------------------------------------------------------

@dataclass
class Report:
    fps: float
    height: int
    width: int
    segments: list[Segment]
    segment_source: str
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (num_frames,)
    per_segment: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (num_segments,)
    video: dict[str, float] = field(default_factory=dict)  # name -> one value
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why / what to configure

    @property
    def num_frames(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    @property
    def seam_frames(self) -> list[int]:
        return seams(self.segments)

    def drift(self, cfg: MetricsConfig) -> dict[str, dict]:
        return {name: summarise(values, self.segments, self.fps, METRICS[name].higher_is_better,
                                per_frame=self.per_frame.get(name), start_end_frac=cfg.start_end_frac,
                                table_seconds=cfg.table_seconds)
                for name, values in self.per_segment.items()}

    def summary(self, cfg: MetricsConfig) -> dict[str, float | None]:
        """Flat `/`-named numbers for tables and loggers: `psnr`, `psnr/first_last`, `psnr/at_50s`, ..."""
        out: dict[str, float | None] = {}
        for name, drift in self.drift(cfg).items():
            out[name] = _num(self.video.get(name))
            for k, v in drift.items():
                if isinstance(v, (int, float)) or v is None:
                    out[f"{name}/{k}"] = _num(v)
        return out


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


# -- the loop ----------------------------------------------------------------------------------

def _requested(cfg: MetricsConfig) -> list[str]:
    names = list(cfg.include) if cfg.include else list(METRICS)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in metrics.include; known: {sorted(METRICS)}")
    return names


def build_extractors(cfg: MetricsConfig, names: Sequence[str], device: str = "cpu") -> dict[str, object]:
    """The learned extractors the requested metrics need: an object, or the `Unavailable` explaining why not."""
    paths = cfg.extractors
    makers: dict[str, Callable[[], object]] = {
        "dino": lambda: learned.DinoFeatures(paths.dino, device=device, batch_size=cfg.batch_size),
        "clip_b32": lambda: learned.ClipFeatures(paths.clip_b32, key="clip_b32", device=device,
                                                 batch_size=cfg.batch_size),
        "aesthetic": lambda: learned.LaionAesthetic(paths.clip_l14, paths.laion_head, device=device,
                                                    batch_size=cfg.batch_size),
        "syncnet": lambda: SyncNetScorer(paths.syncnet, device=device),
        "i3d": lambda: I3DFeatures(paths.i3d, device=device),
        "interpolator": lambda: motion.TorchScriptInterpolator(paths.interpolator, device=device,
                                                               batch_size=cfg.batch_size),
    }
    out = {}
    for need in sorted(set().union(*(needs_of(n) for n in names)) & set(makers)):
        try:
            out[need] = makers[need]()
        except learned.Unavailable as err:
            out[need] = err
    return out


def needs_of(name: str) -> set[str]:
    """The inputs a metric needs beyond the frames (`MetricInfo.needs`, parts joined by "+")."""
    need = METRICS[name].needs
    return set(need.split("+")) if need else set()


def evaluate_video(video: VideoSource, segments: Sequence[Segment], cfg: MetricsConfig | Mapping | None = None,
                   gt: VideoSource | None = None, latents: Callable[[Tensor, Segment], Tensor | None] | None = None,
                   extractors: Mapping[str, object] | None = None, segment_source: str = "clips",
                   progress: Callable | None = None, audio: np.ndarray | None = None) -> Report:
    """Measure every requested metric of `video` in one streaming pass over `segments`; `audio` is the video's
    sound track (16 kHz mono, starting with frame 0), for the lip-sync metrics."""
    cfg = metrics_config(cfg)
    names = _requested(cfg)
    segments = list(segments)
    if not segments or segments[-1].stop > len(video):
        raise ValueError(f"segments cover {segments[-1].stop if segments else 0} frames; the video has {len(video)}")
    first = video.read(cfg.anchor_frame, cfg.anchor_frame + 1)
    if not len(first):
        raise ValueError(f"metrics.anchor_frame={cfg.anchor_frame} is outside the {len(video)}-frame video")
    height, width = first.shape[1:3]
    report = Report(video.fps, height, width, segments, segment_source)

    # What can run here: everything else is reported with the reason.
    extractors = dict(extractors) if extractors is not None else build_extractors(cfg, names)
    report.unavailable = _unavailable(names, gt, latents, extractors, audio)
    todo = [n for n in names if n not in report.unavailable]
    needs = set().union(*(needs_of(n) for n in todo))
    if "gt" in needs:
        gshape = tuple(gt.read(0, 1).shape[1:3])
        if gshape != (height, width):
            raise ValueError(f"ground truth is {gshape[0]}x{gshape[1]} but the video is {height}x{width}")

    T, S = segments[-1].stop, len(segments)
    ctx = EvalContext(cfg, segments, pixel.to_float(first), extractors,
                      per_frame={n: np.full(T, np.nan) for n in todo if METRICS[n].per_frame},
                      per_segment={n: np.full(S, np.nan) for n in todo}, video={n: math.nan for n in todo},
                      fps=video.fps, audio=audio)
    metrics = _instances(todo)
    for m in metrics:
        m.begin(ctx)
    previous = None  # the last frame of the previous segment: frame differences run across seams
    for s in segments:
        inputs = _segment_inputs(video, s, previous, needs, gt, latents, extractors)
        for m in metrics:
            m.update(s, inputs, ctx)
        previous = inputs.frames[-1]
        if progress is not None:
            progress(s)
    for m in metrics:
        m.finish(ctx)
    report.per_frame, report.per_segment, report.video = ctx.per_frame, ctx.per_segment, ctx.video
    return report


def _unavailable(names: Sequence[str], gt: VideoSource | None, latents: Callable | None,
                 extractors: Mapping[str, object], audio: np.ndarray | None = None) -> dict[str, str]:
    """The requested metrics whose input is missing here, each with what to pass or configure."""
    out = {}
    for n in names:
        for need in sorted(needs_of(n)):
            if need == "gt" and gt is None:
                out[n] = "needs a ground-truth video: gt=VIDEO (or gt=scenes.jsonl gt_index=I for the toy world)"
            elif need == "latents" and latents is None:
                out[n] = ("needs latents: pass backbone=NAME (its VAE encodes the frames) or save them "
                          "as DIR/latents/clip_NNNN.pt")
            elif need not in ("gt", "latents"):
                ex = extractors.get(need)
                if ex is None or isinstance(ex, Exception):
                    out[n] = str(ex) if ex is not None else f"no extractor '{need}' given"
                elif need == "syncnet" and audio is None:
                    out[n] = "needs speech: the video has no audio track (svi-generate condition=talk writes one)"
            if n in out:
                break
    return out


def _instances(names: Sequence[str]) -> list[Metric]:
    """One instance per registered class, given the names of it to compute (a family may compute a part)."""
    by_class: dict[type[Metric], list[str]] = {}
    for n in names:
        by_class.setdefault(METRIC_CLASSES[n], []).append(n)
    return [cls(members) for cls, members in by_class.items()]


def _segment_inputs(video: VideoSource, s: Segment, previous: Tensor | None, needs: set[str],
                    gt: VideoSource | None, latents: Callable | None,
                    extractors: Mapping[str, Callable[[Tensor], Tensor]]) -> SegmentInputs:
    """Read segment `s` and compute what the requested metrics need of it, each input once."""
    x = pixel.to_float(video.read(s.start, s.stop))  # (n, 3, H, W)
    inputs = SegmentInputs(frames=x, diffs=pixel.frame_differences(x, previous))
    if "gt" in needs:
        g = gt.read(s.start, s.stop)  # (m, H, W, 3), m < n when the ground truth ends inside the segment
        if len(g):
            inputs.gt = pixel.to_float(g)
    if "latents" in needs:
        inputs.latents = latents(x, s)
    for name in sorted(needs - {"gt", "latents"}):
        if callable(extractors[name]):  # a feature extractor (a scorer such as SyncNet is called by its metric)
            inputs.features[name] = extractors[name](x)
    return inputs
