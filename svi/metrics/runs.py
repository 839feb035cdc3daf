"""Evaluating `svi-generate` output directories: one run, written into its own folder, or several runs
compared (one curve per run). svi/evaluate.py wires these to the command line.

    evaluate_run("outputs/cat_shot", MetricsConfig(), gt="scenes.jsonl", gt_index=0)    # -> metrics.json
    compare_runs("outputs/ablation/*/generate", MetricsConfig(), out="outputs/compare")  # + plots/, runs.json
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from svi.metrics.config import MetricsConfig
from svi.metrics.registry import METRICS
from svi.metrics.report import plot_comparison, write_report
from svi.metrics.suite import SavedLatents, VaeLatents, build_extractors, evaluate_video
from svi.metrics.video import FileVideo, open_run

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def _ground_truth(gt: str | None, index: int, video: FileVideo, readers: Mapping[str, Callable] | None = None):
    """The ground truth of `video`: a video file, or (by suffix) a reader of `gt_readers` called as
    `reader(path, index, num_frames, height, width, fps)` (the toy world's scenes.jsonl, for example)."""
    if not gt:
        return None
    reader = (readers or {}).get(Path(str(gt)).suffix.lstrip("."))
    if reader is not None:
        h, w = video.shape
        return reader(gt, index, len(video), h, w, fps=video.fps)
    return FileVideo(gt)


def _sound_track(path: Path):
    """The video's audio track, 16 kHz mono, or None when it has none (a talk generation has one)."""
    from svi.conditions.audio import AudioReadError, read_audio

    try:
        return read_audio(path)
    except AudioReadError:
        return None


def evaluate_run(run: str | Path, metrics: MetricsConfig, gt: str | None = None, gt_index: int = 0,
                 stack=None, extractors: dict | None = None, gt_readers: Mapping[str, Callable] | None = None) -> dict:
    """Measure one generated run and write its outputs into the run directory; returns metrics.json."""
    generated = open_run(run)
    video = FileVideo(generated.video_path)
    segments, source = generated.segments(len(video), metrics.segment_seconds)
    latents = VaeLatents(stack) if stack is not None and getattr(stack, "vae", None) is not None else \
        SavedLatents(generated.latents_dir) if generated.latents_dir.is_dir() else None
    if extractors is None:
        extractors = build_extractors(metrics, metrics.include or list(METRICS), device=_device_of(stack))
    truth = _ground_truth(gt, gt_index, video, gt_readers)
    scorer = extractors.get("syncnet")
    audio = _sound_track(generated.video_path) if scorer is not None and not isinstance(scorer, Exception) else None
    report = evaluate_video(video, segments, metrics, gt=truth, latents=latents,
                            extractors=extractors, segment_source=source, audio=audio)
    info = {"run": str(generated.root), "video": str(generated.video_path), "gt": gt,
            "gt_index": gt_index if truth is not None and not isinstance(truth, FileVideo) else None,
            "clip_frames": generated.num_frames, "motion_frames": generated.num_motion_frames}
    data = write_report(report, metrics, generated.root, info=info, title=generated.root.name)
    missing = ", ".join(f"{k} ({v.split(':')[0]})" for k, v in report.unavailable.items())
    log.info(f"[svi] {generated.root}: {report.num_frames} frames, {len(segments)} segments ({source}) -> "
             f"{generated.root / 'metrics.json'}" + (f"; unavailable: {missing}" if missing else ""))
    return data


def _device_of(stack) -> str:
    if stack is not None:
        return str(next(stack.parameters()).device)
    return "cpu"


def generation_dirs(pattern: str) -> list[str]:
    """The generation directories (holding a video.mp4) and video files the glob matches, sorted."""
    dirs = sorted(p for p in glob.glob(str(Path(pattern).expanduser()))
                  if (Path(p) / "video.mp4").is_file() or Path(p).suffix.lower() in VIDEO_SUFFIXES)
    if not dirs:
        raise FileNotFoundError(f"runs={pattern} matches no generation directory (with a video.mp4) or video file")
    return dirs


def compare_runs(pattern: str, metrics: MetricsConfig, out: str | Path, gt: str | None = None, gt_index: int = 0,
                 stack=None, extractors: dict | None = None, reuse: bool = False,
                 gt_readers: Mapping[str, Callable] | None = None) -> dict[str, dict]:
    """Evaluate every run the glob matches (`reuse` keeps an existing metrics.json), then draw one curve per
    run into `out/plots/<metric>.png` and map the legend labels to directories in `out/runs.json`.
    Returns {directory: metrics.json content}."""
    dirs = generation_dirs(pattern)
    results = {}
    for d in dirs:
        existing = Path(d) / "metrics.json"
        if reuse and existing.is_file():
            results[d] = json.loads(existing.read_text())
        else:
            results[d] = evaluate_run(d, metrics, gt, gt_index, stack, extractors, gt_readers)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(dirs)
    if metrics.plots:
        plot_comparison([(labels[d], results[d]) for d in dirs], out / "plots")
    (out / "runs.json").write_text(json.dumps({labels[d]: d for d in dirs}, indent=1))
    return results


def _labels(dirs: list[str]) -> dict[str, str]:
    """The shortest distinguishing path tail of each run directory (its legend label)."""
    parts = [Path(d).resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return dict(zip(dirs, tails))
    return {d: d for d in dirs}
