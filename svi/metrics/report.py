"""Files of an evaluation: `metrics.json`, `metrics_per_segment.csv`, `metrics_per_frame.csv`, `plots/*.png`.

    metrics.json   {"video": ..., "fps", "num_frames", "segments": {...}, "metrics": {name: {available,
                   reason | unit, higher_is_better, video, per_segment, drift}}, "summary": {flat `/` names}}
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from svi.metrics.config import MetricsConfig
from svi.metrics.suite import METRICS, Report

PLOT_DIR = "plots"


def _clean(value):
    """JSON-safe: NaN/inf -> null, numpy -> python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_dict(report: Report, cfg: MetricsConfig, info: Mapping | None = None) -> dict:
    drift = report.drift(cfg)
    metrics = {}
    for name, meta in METRICS.items():
        if name in report.unavailable:
            metrics[name] = {"available": False, "reason": report.unavailable[name]}
        elif name in report.per_segment:
            metrics[name] = {"available": True, "unit": meta.unit, "higher_is_better": meta.higher_is_better,
                             "description": meta.description, "video": report.video.get(name),
                             "per_segment": report.per_segment[name], "drift": drift[name]}
    fps = report.fps
    return _clean({
        **(info or {}),
        "fps": fps, "num_frames": report.num_frames, "duration_s": report.num_frames / fps,
        "height": report.height, "width": report.width,
        "segments": {"source": report.segment_source, "count": len(report.segments),
                     "frames": [len(s) for s in report.segments], "seam_frames": report.seam_frames},
        "config": asdict(cfg),
        "metrics": metrics,
        "summary": report.summary(cfg),
    })


def write_report(report: Report, cfg: MetricsConfig, out_dir: str | Path, info: Mapping | None = None,
                 title: str = "") -> dict:
    """Write every output of one evaluation into `out_dir`; returns the metrics.json content."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = report_dict(report, cfg, info)
    (out / "metrics.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))
    fps = report.fps
    names = list(report.per_segment)
    with open(out / "metrics_per_segment.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["segment", "start_frame", "stop_frame", "start_s", "stop_s", *names])
        for s in report.segments:
            w.writerow([s.index, s.start, s.stop, f"{s.start / fps:.4f}", f"{s.stop / fps:.4f}",
                        *[_fmt(report.per_segment[n][s.index]) for n in names]])
    frame_names = list(report.per_frame)
    segment_of = np.concatenate([np.full(len(s), s.index) for s in report.segments])
    with open(out / "metrics_per_frame.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time_s", "segment", *frame_names])
        for t in range(report.num_frames):
            w.writerow([t, f"{t / fps:.4f}", int(segment_of[t]), *[_fmt(report.per_frame[n][t]) for n in frame_names]])
    if cfg.plots:
        plot_report(report, out / PLOT_DIR, title=title)
    return data


def _fmt(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{float(v):.6g}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(name: str) -> str:
    meta = METRICS[name]
    arrow = {True: " (higher is better)", False: " (lower is better)", None: ""}[meta.higher_is_better]
    return f"{name}{f' [{meta.unit}]' if meta.unit else ''}{arrow}"


def plot_report(report: Report, folder: str | Path, title: str = "") -> list[Path]:
    """One PNG per metric: the per-frame series (thin), the per-segment values (markers), clip seams (dotted)."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fps, paths = report.fps, []
    centres = np.array([(s.start + s.stop) / 2 / fps for s in report.segments])
    for name, values in report.per_segment.items():
        if not np.isfinite(values).any():
            continue
        fig, ax = plt.subplots(figsize=(7, 3.2))
        series = report.per_frame.get(name)
        if series is not None:
            ax.plot(np.arange(len(series)) / fps, series, lw=0.7, alpha=0.5, label="per frame")
        ax.plot(centres, values, "o-", ms=3, lw=1.2, label="per segment")
        for t in report.seam_frames:
            ax.axvline(t / fps, color="0.6", ls=":", lw=0.6)
        paths.append(_save(plt, fig, ax, name, f"{title + ': ' if title else ''}{_label(name)}", folder))
    return paths


def _save(plt, fig, ax, name: str, title: str, folder: Path) -> Path:
    """Axis labels, title and legend of a metric-vs-time plot, written to folder/<name>.png."""
    ax.set_xlabel("time [s]")
    ax.set_ylabel(name)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_comparison(runs: Sequence[tuple[str, dict]], folder: str | Path) -> list[Path]:
    """Metric vs time, one curve per run, from metrics.json contents: `runs` = [(label, data), ...]."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in METRICS if any(d["metrics"].get(n, {}).get("available") for _, d in runs)]
    paths = []
    for name in names:
        fig, ax = plt.subplots(figsize=(7, 3.4))
        for label, data in runs:
            m = data["metrics"].get(name, {})
            if not m.get("available"):
                continue
            frames, fps = data["segments"]["frames"], data["fps"]
            stops = np.cumsum(frames)
            centres = (stops - np.asarray(frames) / 2) / fps
            values = np.array([np.nan if v is None else v for v in m["per_segment"]], dtype=float)
            ax.plot(centres, values, "o-", ms=3, lw=1.2, label=label)
        paths.append(_save(plt, fig, ax, name, _label(name), folder))
    return paths
