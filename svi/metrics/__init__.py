"""Drift and quality metrics of long videos, per segment and per frame, their drift summaries, and tables.

    from svi.metrics import evaluate_video, open_run, FileVideo
    run = open_run("outputs/cat_shot")                       # an svi-generate output directory
    video = FileVideo(run.video_path)
    segments, source = run.segments(len(video), segment_seconds=None)   # one segment per clip
    report = evaluate_video(video, segments, gt=FileVideo("gt.mp4"))
    report.summary(MetricsConfig())                          # {"psnr": .., "psnr/first_last": .., ...}

See docs/evaluate.md for every metric's definition, direction and what it needs; svi/metrics/registry.py
for how a new metric is added (one `Metric` subclass passed to `register_metric`).
"""

from svi.metrics.config import ExtractorPaths, FrechetConfig, MetricsConfig, metrics_config
from svi.metrics.drift import summarise
from svi.metrics.registry import (METRICS, WEIGHT_FREE, EvalContext, FrameMetric, Metric, MetricInfo, SegmentInputs,
                                  register_metric)
from svi.metrics.runs import compare_runs, evaluate_run
from svi.metrics.suite import Report, SavedLatents, VaeLatents, build_extractors, evaluate_video
from svi.metrics.video import (ArrayVideo, FileVideo, GeneratedRun, Segment, fixed_segments, open_run,
                               segments_from_counts)

__all__ = ["METRICS", "WEIGHT_FREE", "ArrayVideo", "EvalContext", "ExtractorPaths", "FileVideo", "FrameMetric",
           "FrechetConfig", "GeneratedRun", "Metric", "MetricInfo", "MetricsConfig", "Report", "SavedLatents",
           "Segment", "SegmentInputs", "VaeLatents", "build_extractors", "compare_runs",
           "evaluate_run", "evaluate_video", "fixed_segments", "metrics_config", "open_run", "register_metric",
           "segments_from_counts", "summarise"]
