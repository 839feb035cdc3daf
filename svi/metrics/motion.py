"""Motion smoothness: how well each frame is predicted from its neighbours (VBench's definition).

VBench interpolates the midpoint of every pair of even frames (0, 2), (2, 4), ... with the AMT-S
frame-interpolation network and compares it with the real odd frame between them:

    m_t = (255 - mean |I_t - Î_t|) / 255        t odd, Î_t = interp(I_{t-1}, I_{t+1}) as 8-bit RGB

A video scores the mean of m_t. Smooth, physically plausible motion is easy to interpolate (close
to 1); jitter, flicker and popping objects are not. The score depends on the frame rate.

Two metrics share the formula:

* `motion_smoothness` runs a frame interpolator from a local file (`metrics.extractors.interpolator`, or
  $SVI_INTERPOLATOR): a TorchScript module called as `module(img0, img1, embt)` with (B, 3, H, W) images
  in [0, 1] and `embt` = 0.5 of shape (B, 1, 1, 1), returning the middle image (or a dict holding it
  under `imgt_pred`, as AMT's networks do), e.g. AMT-S exported with `torch.jit.trace` from its own
  code. Inputs are padded to multiples of 16 by edge replication and the output cropped back. Without
  the file the metric is reported unavailable, never replaced.
* `motion_smoothness_blend` predicts the middle frame as the average of its neighbours: no weights,
  always available, and **not** VBench's number: a blend ghosts every moving edge, so it rewards slow
  motion as much as smooth motion. Read it beside `flicker`, as a weight-free proxy.

Each segment is scored on its own interior frames (the frames next to a segment boundary are not
predicted), as VBench-Long scores each clip; odd frames are counted by their index in the video.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from svi.metrics.learned import Unavailable
from svi.metrics.registry import (EvalContext, Metric, MetricInfo, SegmentInputs, finite_mean,
                                  register_metric, segment_means)
from svi.metrics.video import Segment

ENV_VAR = "SVI_INTERPOLATOR"


def smoothness_from_prediction(frames: Tensor, predicted: Tensor, start: int) -> Tensor:
    """frames (n, 3, H, W) in [0, 1] (segment starting at video frame `start`), predicted (n - 2, 3, H, W):
    the middle of frames t-1 and t+1 for t = 1 .. n-2 -> (n,) m_t at odd video frames t, NaN elsewhere."""
    n = frames.shape[0]
    out = torch.full((n,), float("nan"))
    if n < 3:
        return out
    real = (frames[1:-1].float() * 255).round()
    pred = (predicted.float().clamp(0, 1) * 255).round()
    values = 1.0 - (real - pred).abs().flatten(1).mean(dim=1) / 255.0  # (n - 2,)
    odd = (torch.arange(1, n - 1) + start) % 2 == 1
    out[1:-1][odd] = values[odd].to(out.dtype)
    return out


def blend_midpoints(frames: Tensor) -> Tensor:
    """The average of each frame's neighbours: (n, 3, H, W) -> (n - 2, 3, H, W)."""
    return 0.5 * (frames[:-2] + frames[2:])


class TorchScriptInterpolator:
    """A frame interpolator from a TorchScript file; called on a segment's frames (n, 3, H, W) in [0, 1],
    it returns the middle of every frame's two neighbours, (n - 2, 3, H, W)."""

    def __init__(self, path: str | None, device: str = "cpu", batch_size: int = 8):
        path = path or os.environ.get(ENV_VAR)
        if not path:
            raise Unavailable(f"no frame-interpolation model: set metrics.extractors.interpolator=FILE (or "
                              f"${ENV_VAR}) to a TorchScript export of a VBench-style interpolator (AMT-S)")
        if not Path(path).expanduser().is_file():
            raise Unavailable(f"metrics.extractors.interpolator={path} is not a file")
        try:
            self.model = torch.jit.load(str(Path(path).expanduser()), map_location=device).eval()
        except RuntimeError as err:
            raise Unavailable(f"metrics.extractors.interpolator={path} is not a TorchScript module: "
                              f"{err}") from err
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, frames: Tensor) -> Tensor:
        if frames.shape[0] < 3:
            return frames.new_zeros(0, *frames.shape[1:])
        H, W = frames.shape[-2:]
        pad = (0, -W % 16, 0, -H % 16)
        x = F.pad(frames.float(), pad, mode="replicate") if any(pad) else frames.float()
        out = []
        for a in range(0, x.shape[0] - 2, self.batch_size):
            b = min(a + self.batch_size, x.shape[0] - 2)
            img0, img1 = x[a:b].to(self.device), x[a + 2:b + 2].to(self.device)
            embt = img0.new_full((b - a, 1, 1, 1), 0.5)
            mid = self.model(img0, img1, embt)
            if isinstance(mid, dict):
                mid = mid["imgt_pred"]
            out.append(mid[..., :H, :W].float().cpu())
        return torch.cat(out)


class _Smoothness(Metric):
    """m_t per odd video frame from a prediction of the segment's interior frames; a segment's value is
    the mean of its m_t, the video's the mean of all."""

    @property
    def name(self) -> str:
        return self.info[0].name

    def predict(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        raise NotImplementedError

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        values = smoothness_from_prediction(inputs.frames, self.predict(inputs, ctx), segment.start)
        ctx.per_frame[self.name][segment.start:segment.stop] = values.numpy()

    def finish(self, ctx: EvalContext) -> None:
        series = ctx.per_frame[self.name]
        ctx.per_segment[self.name] = segment_means(series, ctx.segments)
        ctx.video[self.name] = finite_mean(series)


@register_metric
class MotionSmoothness(_Smoothness):
    info = (MetricInfo("motion_smoothness", "", True, True, "interpolator",
                       "VBench motion smoothness: (255 - mean|I_t - interp(I_t-1, I_t+1)|) / 255 at odd "
                       "frames (a frame-interpolation model from a local file)"),)

    def predict(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return inputs.features["interpolator"]


@register_metric
class BlendSmoothness(_Smoothness):
    info = (MetricInfo("motion_smoothness_blend", "", True, True, None,
                       "motion smoothness with the neighbours' average as the prediction (weight-free proxy, "
                       "not VBench's number)"),)

    def predict(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return blend_midpoints(inputs.frames)
