"""Rollout monitoring: every N steps, roll a few clips out with the current weights and measure drift.

ERFT's point is what happens *after* several clips, which the training loss cannot show. This callback
runs the real long-video sampler (`svi.sampling.SVIClipSampler`, the code `svi-generate` uses) on a
fixed validation input, the procedural toy world (svi/data/toyworld.py): its first frame is the input
image, its caption the prompt, and its rendered future the exact ground truth. The rollout is scored
with the weight-free metrics of `svi/metrics` (one segment per clip) and logged as `rollout/<metric>`
(the whole rollout), `rollout/<metric>/last` (its last clip) and `rollout/<metric>/first_last`
(positive = worse), together with a short video (generated | ground truth side by side): a
`wandb.Video` when W&B logs the run, and always an mp4 under `dirpath`.

Only global rank 0 rolls out, on its own copy of the weights and outside any collective, so the other
ranks simply wait at their next gradient sync. Sharded-parameter strategies (FSDP, ZeRO-3) hold no
full copy on one rank: the monitor switches itself off there with a warning. The rollout draws its
noise from per-clip CPU generators and runs under `torch.random.fork_rng`, so training's random
stream (and exact resume) is untouched.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch

ROLLOUT_METRICS = ("psnr", "ssim", "colour_de", "colour_hist", "sharpness", "flicker", "seam_ratio", "fd")


class RolloutMonitor(L.Callback):
    """Args:
        enabled: off by default (paper configs); the tiny experiments turn it on.
        every_n_steps: roll out after every this many optimizer steps.
        num_clips: clips per rollout (SPEC §5 loop).
        num_inference_steps: Euler steps per clip (the paper samples with 50; small keeps it cheap).
        guidance: text CFG scale of the rollout (<= 1: positive branch only, half the cost).
        num_frames, height, width: clip geometry (the backbone's native one).
        world_seed: which toy-world scene is the fixed validation input.
        seed: noise seed of clip 0 (clip i uses seed + i, as svi-generate).
        handoff: `pixel` | `latent` (svi-generate's hand-off modes).
        metrics: weight-free metric names to log (svi.metrics.METRICS).
        at_start: also roll out before the first step (the LoRA starts at zero: the base model).
        log_video: write the mp4 (and log it to W&B when W&B is on).
        dirpath: where the mp4s go (default: the trainer's root dir / rollout).
        fps: frame rate of the mp4 and of the metrics' time axis.
    """

    def __init__(self, enabled: bool = False, every_n_steps: int = 500, num_clips: int = 2,
                 num_inference_steps: int = 3, guidance: float = 5.0, num_frames: int = 17, height: int = 64,
                 width: int = 64, world_seed: int = 0, seed: int = 0, handoff: str = "pixel",
                 metrics: Sequence[str] = ROLLOUT_METRICS, at_start: bool = False, log_video: bool = True,
                 dirpath: str | None = None, fps: int = 16):
        from svi.metrics import METRICS

        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"callbacks.rollout.metrics: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
        if every_n_steps < 1 or num_clips < 1 or num_inference_steps < 1:
            raise ValueError("callbacks.rollout: every_n_steps, num_clips and num_inference_steps must be >= 1")
        self.enabled, self.every_n_steps = enabled, every_n_steps
        self.num_clips, self.num_inference_steps, self.guidance = num_clips, num_inference_steps, guidance
        self.num_frames, self.height, self.width = num_frames, height, width
        self.world_seed, self.seed, self.handoff = world_seed, seed, handoff
        self.metrics, self.at_start, self.log_video = list(metrics), at_start, log_video
        self.dirpath, self.fps = dirpath, fps
        self._last_step: int | None = None
        self.history: list[dict] = []  # what was logged, per rollout (for tests and notebooks)

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not self._usable(trainer, pl_module):
            self.enabled = False
        if self.enabled and self.at_start:
            self._maybe_roll_out(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.enabled and trainer.global_step % self.every_n_steps == 0:
            self._maybe_roll_out(trainer, pl_module)

    def _maybe_roll_out(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: several batches share one step
            return
        self._last_step = step
        if not trainer.is_global_zero:
            return
        numbers, video = self.roll_out(pl_module)
        numbers["rollout/step"] = float(step)
        self.history.append(numbers)
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in numbers.items() if np.isfinite(v)}, step=step)
        if self.log_video:
            self._write_video(trainer, video, step)

    # -- the rollout ---------------------------------------------------------------------------
    def _usable(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        strategy = type(trainer.strategy).__name__
        stage = getattr(trainer.strategy, "config", None) or {}
        if "FSDP" in strategy or (stage.get("zero_optimization", {}) or {}).get("stage") == 3:
            warnings.warn(f"callbacks.rollout: {strategy} shards the weights across ranks, so rank 0 cannot roll "
                          f"out alone; the rollout monitor is off for this run (use svi-generate on an export)")
            return False
        stack = getattr(pl_module, "stack", None)
        missing = [c for c in ("vae", "text_encoder") if getattr(stack, c, None) is None]
        if stack is None or missing:
            warnings.warn(f"callbacks.rollout: the backbone was built without {missing or 'a stack'}, which a "
                          f"rollout needs (add them to backbone.components); the rollout monitor is off")
            return False
        return True

    @torch.no_grad()
    def roll_out(self, pl_module: L.LightningModule) -> tuple[dict[str, float], np.ndarray]:
        """Generate `num_clips` clips on the validation input; returns (logged numbers, video frames)."""
        from svi.data.toyworld import caption, make_scene, render
        from svi.metrics import ArrayVideo, evaluate_video, metrics_config, segments_from_counts
        from svi.metrics.drift import summarise
        from svi.metrics.suite import METRICS
        from svi.sampling import WAN_NEGATIVE_PROMPT, ClipSpec, GenerationRequest, SVIClipSampler
        from svi.sampling.media import from_uint8

        t0 = time.perf_counter()
        world = make_scene(self.world_seed)
        image = from_uint8(render(world, 0, 1, self.height, self.width)).squeeze(2)  # (1, 3, H, W)
        prompt = caption(world)
        schedule = [ClipSpec(i, prompt, WAN_NEGATIVE_PROMPT, self.seed + i, self.guidance)
                    for i in range(self.num_clips)]
        request = GenerationRequest(image=image, schedule=schedule, num_frames=self.num_frames,
                                    height=self.height, width=self.width)
        flow = dataclasses.replace(pl_module.flow, num_inference_steps=self.num_inference_steps)
        sampler = SVIClipSampler(pl_module.condition, flow=flow, handoff=self.handoff, progress=False)
        sampler.bind(pl_module.stack)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                chunks = [c.frames for c in sampler.stream(request)]
        finally:
            pl_module.train(was_training)
        frames = np.concatenate(chunks)
        truth = render(world, 0, len(frames), self.height, self.width)
        segments = segments_from_counts([len(c) for c in chunks])
        cfg = metrics_config({"include": self.metrics, "plots": False})
        report = evaluate_video(ArrayVideo(frames, self.fps), segments, cfg, gt=ArrayVideo(truth, self.fps),
                                extractors={})
        numbers: dict[str, float] = {}
        for name, values in report.per_segment.items():
            drift = summarise(values, segments, self.fps, METRICS[name].higher_is_better, table_seconds=())
            numbers[f"rollout/{name}"] = float(report.video.get(name, float("nan")))
            numbers[f"rollout/{name}/last"] = float(values[-1])
            numbers[f"rollout/{name}/first_last"] = float("nan") if drift["first_last"] is None \
                else float(drift["first_last"])
        numbers["rollout/seconds"] = time.perf_counter() - t0
        return numbers, np.concatenate([frames, truth], axis=2)  # generated | ground truth

    def _write_video(self, trainer: L.Trainer, video: np.ndarray, step: int) -> Path:
        from svi.sampling.media import write_mp4

        folder = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "rollout"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step{step:06d}.mp4"
        write_mp4(path, video, self.fps)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_video("rollout/video", [str(path)], step=step,
                                 caption=[f"step {step}: generated | ground truth"])
        return path
