"""Rollout monitoring: every N steps, roll a few clips out with the current weights and measure drift.

ERFT's point is what happens *after* several clips, which the training loss cannot show. This callback
runs the real long-video sampler (`svi.sampling.SVIClipSampler`, the code `svi-generate` uses) on a
fixed validation input: an image and a prompt, and optionally a ground-truth video (`ImageInput`, from
files; the toy world's `svi.toy.validation.ToyWorldInput` renders an exact future). The rollout is scored
with the weight-free metrics of `svi/metrics` (one segment per clip; PSNR/SSIM only with a ground
truth) and logged as `rollout/<metric>` (the whole rollout), `rollout/<metric>/last` (its last clip) and
`rollout/<metric>/first_last` (positive = worse), together with a short video (generated | ground truth
side by side when there is one): a `wandb.Video` when W&B logs the run, and always an mp4 under `dirpath`.

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


class ImageInput:
    """A validation input from files: the image (resized to the rollout's size), the prompt, optionally a
    ground-truth video whose frames continue the image (any format decord reads), and the condition type's
    whole-video inputs (`inputs`, e.g. `{audio: speech.wav}` for talk, `{pose: dance.mp4}` for dance)."""

    def __init__(self, image: str, prompt: str, ground_truth: str | None = None, inputs: dict | None = None):
        for path in (image, ground_truth):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"callbacks.rollout.input: {path} does not exist")
        self.image_path, self.prompt, self.gt_path = image, prompt, ground_truth
        self.inputs = dict(inputs or {})

    def image(self, height: int, width: int) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1]."""
        from svi.sampling.media import load_image

        return load_image(self.image_path, height, width)

    def ground_truth(self, num_frames: int, height: int, width: int) -> np.ndarray | None:
        """uint8 (n, H, W, 3) of at most `num_frames` frames, or None without one (sizes must match)."""
        if self.gt_path is None:
            return None
        from svi.metrics import FileVideo

        video = FileVideo(self.gt_path)
        if video.shape != (height, width):
            raise ValueError(f"callbacks.rollout.input.ground_truth {self.gt_path} is {video.shape[0]}x"
                             f"{video.shape[1]}, the rollout {height}x{width}")
        return video.read(0, num_frames)


class RolloutMonitor(L.Callback):
    """Args:
        enabled: off by default (paper configs); the tiny debug setting turns it on.
        input: the validation input: an object with `prompt`, `image(height, width)` and
            `ground_truth(num_frames, height, width)` (`ImageInput`, or the toy world's `ToyWorldInput`);
            required when enabled.
        every_n_steps: roll out after every this many optimizer steps.
        num_clips: clips per rollout (the generation loop of `svi-generate`).
        num_inference_steps: Euler steps per clip (the paper samples with 50; small keeps it cheap).
        guidance: text CFG scale of the rollout (<= 1: positive branch only, half the cost).
        num_frames, height, width: clip geometry (the backbone's native one).
        seed: noise seed of clip 0 (clip i uses seed + i).
        handoff: `pixel` | `latent` (svi-generate's hand-off modes).
        metrics: weight-free metric names to log (svi.metrics.METRICS).
        at_start: also roll out before the first step (the LoRA starts at zero: the base model).
        log_video: write the mp4 (and log it to W&B when W&B is on).
        dirpath: where the mp4s go (default: the trainer's root dir / rollout).
        fps: frame rate of the mp4 and of the metrics' time axis.
    """

    def __init__(self, enabled: bool = False, input=None, every_n_steps: int = 500, num_clips: int = 2,
                 num_inference_steps: int = 3, guidance: float = 5.0, num_frames: int = 17, height: int = 64,
                 width: int = 64, seed: int = 0, handoff: str = "pixel",
                 metrics: Sequence[str] = ROLLOUT_METRICS, at_start: bool = False, log_video: bool = True,
                 dirpath: str | None = None, fps: int = 16):
        from svi.metrics import METRICS

        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"callbacks.rollout.metrics: unknown metric(s) {unknown}; known: {sorted(METRICS)}")
        if every_n_steps < 1 or num_clips < 1 or num_inference_steps < 1:
            raise ValueError("callbacks.rollout: every_n_steps, num_clips and num_inference_steps must be >= 1")
        if enabled and input is None:
            raise ValueError("callbacks.rollout.enabled is true but callbacks.rollout.input is not set: give an "
                             "image and a prompt ({_target_: svi.callbacks.rollout.ImageInput, image: PATH, "
                             "prompt: TEXT}) or the toy world (svi.toy.validation.ToyWorldInput)")
        self.enabled, self.input, self.every_n_steps = enabled, input, every_n_steps
        self.num_clips, self.num_inference_steps, self.guidance = num_clips, num_inference_steps, guidance
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed, self.handoff = seed, handoff
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
        from svi.metrics import ArrayVideo, evaluate_video, metrics_config, segments_from_counts
        from svi.metrics.drift import summarise
        from svi.metrics.suite import METRICS
        from svi.sampling import WAN_NEGATIVE_PROMPT, ClipSpec, GenerationRequest, SVIClipSampler

        t0 = time.perf_counter()
        image = self.input.image(self.height, self.width)  # (1, 3, H, W)
        schedule = [ClipSpec(i, self.input.prompt, WAN_NEGATIVE_PROMPT, self.seed + i, self.guidance)
                    for i in range(self.num_clips)]
        inputs = dict(getattr(self.input, "inputs", {}) or {})
        condition = pl_module.condition
        condition.check_schedule(schedule, inputs)
        request = GenerationRequest(image=image, schedule=schedule, num_frames=self.num_frames,
                                    height=self.height, width=self.width, inputs=inputs,
                                    fps=condition.frame_rate or self.fps)
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
        truth = self.input.ground_truth(len(frames), self.height, self.width)
        segments = segments_from_counts([len(c) for c in chunks])
        cfg = metrics_config({"include": self.metrics, "plots": False})
        gt = ArrayVideo(truth, self.fps) if truth is not None else None
        report = evaluate_video(ArrayVideo(frames, self.fps), segments, cfg, gt=gt, extractors={})
        numbers: dict[str, float] = {}
        for name, values in report.per_segment.items():
            drift = summarise(values, segments, self.fps, METRICS[name].higher_is_better, table_seconds=())
            numbers[f"rollout/{name}"] = float(report.video.get(name, float("nan")))
            numbers[f"rollout/{name}/last"] = float(values[-1])
            numbers[f"rollout/{name}/first_last"] = float("nan") if drift["first_last"] is None \
                else float(drift["first_last"])
        numbers["rollout/seconds"] = time.perf_counter() - t0
        if truth is None or len(truth) < len(frames):
            return numbers, frames
        return numbers, np.concatenate([frames, truth[: len(frames)]], axis=2)  # generated | ground truth

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
