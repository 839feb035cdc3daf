"""svi-evaluate: drift and quality metrics of generated long videos. Only wiring lives here.

    svi-evaluate run=outputs/cat_shot                         # metrics.json, metrics_per_segment.csv, plots/
    svi-evaluate run=DIR gt=toy/toyworld/scenes.jsonl gt_index=0   # + PSNR/SSIM vs the exact toy-world future
    svi-evaluate runs='outputs/ablation/*/generate'           # every run, plus one curve per run
    svi-evaluate run=DIR metrics.extractors.dino=weights/dino-vitb16   # + VBench subject consistency

The metrics themselves live in `svi/metrics/` (docs/evaluate.md).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import svi.config  # noqa: F401  (registers the typed schemas before composition)
from svi.metrics import (FileVideo, MetricsConfig, SavedLatents, ToyWorldVideo, VaeLatents, build_extractors,
                         evaluate_video, open_run)
from svi.metrics.config import metrics_config
from svi.metrics.report import plot_comparison, write_report
from svi.metrics.suite import METRICS
from svi.paths import CONF_DIR

log = logging.getLogger("svi.evaluate")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def _ground_truth(gt: str | None, index: int, video: FileVideo):
    if not gt:
        return None
    if str(gt).endswith(".jsonl"):
        h, w = video.shape
        return ToyWorldVideo(gt, index, len(video), h, w, fps=video.fps)
    return FileVideo(gt)


def evaluate_run(run: str | Path, metrics: MetricsConfig, gt: str | None = None, gt_index: int = 0,
                 stack=None, extractors: dict | None = None) -> dict:
    """Measure one generated run and write its outputs into the run directory; returns metrics.json."""
    generated = open_run(run)
    video = FileVideo(generated.video_path)
    segments, source = generated.segments(len(video), metrics.segment_seconds)
    latents = VaeLatents(stack) if stack is not None and getattr(stack, "vae", None) is not None else \
        SavedLatents(generated.latents_dir) if generated.latents_dir.is_dir() else None
    if extractors is None:
        extractors = build_extractors(metrics, metrics.include or list(METRICS), device=_device_of(stack))
    report = evaluate_video(video, segments, metrics, gt=_ground_truth(gt, gt_index, video), latents=latents,
                            extractors=extractors, segment_source=source)
    info = {"run": str(generated.root), "video": str(generated.video_path), "gt": gt,
            "gt_index": gt_index if gt and str(gt).endswith(".jsonl") else None,
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


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _log(cfg: DictConfig, data: dict) -> None:
    """Per-segment curves (step = segment) and the summary to the configured loggers (job_type=evaluate)."""
    os.environ.setdefault("WANDB_MODE", "offline")  # as svi-train: W&B never phones home unless asked to
    loggers = [instantiate(v) for v in (cfg.get("logger") or {}).values() if isinstance(v, DictConfig)
               and "_target_" in v]
    if not loggers:
        return
    try:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
            names = [n for n, m in data["metrics"].items() if m.get("available")]
            for s in range(data["segments"]["count"]):
                row = {f"eval/segment/{n}": data["metrics"][n]["per_segment"][s] for n in names}
                lg.log_metrics({k: v for k, v in row.items() if v is not None}, step=s)
            lg.log_metrics({f"eval/{k}": v for k, v in data["summary"].items() if v is not None},
                           step=data["segments"]["count"])
            lg.finalize("success")
    finally:
        if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
            import wandb

            wandb.finish()


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate `run` (one directory) or `runs` (a glob, plus comparison plots); returns {run: metrics.json}."""
    if bool(cfg.run) == bool(cfg.runs):
        raise ValueError("give exactly one of run=DIR (one generation) or runs='GLOB' (several, compared)")
    metrics = metrics_config(cfg.metrics)
    stack = instantiate(cfg.backbone).to(_device(cfg.device)).eval() if cfg.get("backbone") else None
    extractors = build_extractors(metrics, metrics.include or list(METRICS),
                                  device=str(_device(cfg.device)))
    if cfg.run:
        data = evaluate_run(cfg.run, metrics, cfg.gt, cfg.gt_index, stack, extractors)
        _log(cfg, data)
        return {str(cfg.run): data}
    dirs = sorted(p for p in glob.glob(str(Path(cfg.runs).expanduser()))
                  if (Path(p) / "video.mp4").is_file() or Path(p).suffix.lower() in VIDEO_SUFFIXES)
    if not dirs:
        raise FileNotFoundError(f"runs={cfg.runs} matches no generation directory (with a video.mp4) or video file")
    results = {}
    for d in dirs:
        existing = Path(d) / "metrics.json"
        if cfg.reuse and existing.is_file():
            results[d] = json.loads(existing.read_text())
        else:
            results[d] = evaluate_run(d, metrics, cfg.gt, cfg.gt_index, stack, extractors)
    out = Path(cfg.out) if cfg.out else Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() \
        else Path(".")
    labels = _labels(dirs)
    if metrics.plots:
        plot_comparison([(labels[d], results[d]) for d in dirs], out / "plots")
    (out / "runs.json").write_text(json.dumps({labels[d]: d for d in dirs}, indent=1))
    log.info(f"[svi] {len(dirs)} runs evaluated; comparison plots in {out / 'plots'}")
    return results


def _labels(dirs: list[str]) -> dict[str, str]:
    """The shortest distinguishing path tail of each run directory (its legend label)."""
    parts = [Path(d).resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return dict(zip(dirs, tails))
    return {d: d for d in dirs}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
