"""Metrics of the conditioned tracks, from local weights only (reported unavailable otherwise):

* `sync_c`, `sync_d` (talk): SyncNet's lip-sync confidence (higher is better) and minimum audio-video
  feature distance (lower is better), the LSE-C / LSE-D of talking-head papers, per segment against the
  video's own audio track. Computed by the `syncnet-python` package (face detection, tracking, cropping
  and SyncNet in one call) with the original weights in a local directory (`syncnet_v2.model`,
  `sfd_face.pth`); the package is optional (it brings torchvision), so it is imported only here.
* `fvd` (dance, against the ground truth): the Fréchet distance between I3D features of the generated
  video's 16-frame windows and the ground truth's, from a TorchScript I3D (the `i3d_torchscript.pt` that
  FVD implementations share: `model(videos, rescale=False, resize=True, return_features=True)` on
  (N, 3, 16, H, W) in [-1, 1] -> (N, 400)). FVD as papers report it compares sets of videos; one long
  video gives a set of windows, so it needs a few dozen windows to be stable.

PSNR and SSIM against the ground truth (dance's other numbers) are in svi/metrics/builtin.py.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from svi.metrics.frechet import frechet_distance, gaussian_stats
from svi.metrics.learned import Unavailable
from svi.metrics.registry import EvalContext, Metric, MetricInfo, SegmentInputs, register_metric
from svi.metrics.video import Segment

I3D_WINDOW = 16  # frames per I3D window (FVD's clip length)
SYNCNET_FILES = ("syncnet_v2.model", "sfd_face.pth")


class SyncNetScorer:
    """`score(frames (n, 3, H, W) in [0, 1], audio (samples,) at 16 kHz, fps) -> (confidence, distance)`."""

    def __init__(self, weights: str | None, device: str = "cpu"):
        if not weights:
            raise Unavailable("weights not configured: set metrics.extractors.syncnet=DIR (a folder with the original "
                              "SyncNet weights syncnet_v2.model and sfd_face.pth) or SVI_SYNCNET_DIR")
        root = Path(weights).expanduser()
        missing = [f for f in SYNCNET_FILES if not (root / f).is_file()]
        if missing:
            raise Unavailable(f"metrics.extractors.syncnet={weights} lacks {missing}")
        try:
            from syncnet_python import SyncNetPipeline
        except ImportError as err:
            raise Unavailable(f"needs the syncnet-python package ({err}); pip install syncnet-python (it brings "
                              f"torchvision and OpenCV)") from None
        self.pipe = SyncNetPipeline({"s3fd_weights": str(root / "sfd_face.pth"),
                                     "syncnet_weights": str(root / "syncnet_v2.model")}, device=device)

    def score(self, frames: Tensor, audio: np.ndarray, fps: float) -> tuple[float, float]:
        import soundfile

        from svi.sampling.media import write_mp4

        with tempfile.TemporaryDirectory() as tmp:
            video, wav = Path(tmp) / "segment.mp4", Path(tmp) / "segment.wav"
            pixels = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            write_mp4(video, pixels, fps=round(fps))
            soundfile.write(str(wav), audio.astype(np.float32), 16000)
            _, _, _, confidence, distance, _, has_face = self.pipe.inference(video_path=str(video),
                                                                              audio_path=str(wav))
        return (float(confidence), float(distance)) if has_face else (math.nan, math.nan)


class I3DFeatures:
    """Frames (n, 3, H, W) in [0, 1] -> I3D features of its consecutive 16-frame windows (m, d)."""

    def __init__(self, path: str | None, device: str = "cpu"):
        if not path:
            raise Unavailable("weights not configured: set metrics.extractors.i3d=FILE (a TorchScript I3D, "
                              "i3d_torchscript.pt) or SVI_I3D_PATH")
        if not Path(path).expanduser().is_file():
            raise Unavailable(f"metrics.extractors.i3d={path} does not exist")
        self.model = torch.jit.load(str(Path(path).expanduser()), map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, frames: Tensor) -> Tensor:
        m = len(frames) // I3D_WINDOW
        if m == 0:
            return frames.new_zeros(0, 0)
        clips = frames[: m * I3D_WINDOW].unflatten(0, (m, I3D_WINDOW)).permute(0, 2, 1, 3, 4)  # (m, 3, 16, H, W)
        out = self.model(clips.to(self.device) * 2 - 1, rescale=False, resize=True, return_features=True)
        return out.float().cpu()


@register_metric
class LipSync(Metric):
    """SyncNet confidence and distance per segment (its frames and its span of the audio track); the video's
    value is the mean over the segments SyncNet found a face in."""

    info = (MetricInfo("sync_c", "", True, False, "syncnet", "SyncNet lip-sync confidence (LSE-C), per segment"),
            MetricInfo("sync_d", "", False, False, "syncnet", "SyncNet audio-video distance (LSE-D), per segment"))

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        rate = 16000 / ctx.fps
        audio = ctx.audio[round(segment.start * rate):round(segment.stop * rate)]
        confidence, distance = ctx.extractors["syncnet"].score(inputs.frames, audio, ctx.fps)
        for name, value in (("sync_c", confidence), ("sync_d", distance)):
            if name in self.names:
                ctx.per_segment[name][segment.index] = value

    def finish(self, ctx: EvalContext) -> None:
        for name in self.names:
            values = ctx.per_segment[name]
            ctx.video[name] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


@register_metric
class FrechetVideoDistance(Metric):
    """FVD of the generated video's 16-frame windows against the ground truth's (within each segment, over
    the frames both have)."""

    info = (MetricInfo("fvd", "", False, False, "i3d+gt",
                       "Fréchet distance of I3D features of 16-frame windows, generated vs ground truth"),)

    def begin(self, ctx: EvalContext) -> None:
        self.generated: list[Tensor] = []
        self.truth: list[Tensor] = []

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        if inputs.gt is None:
            return
        n = len(inputs.gt)
        i3d = ctx.extractors["i3d"]
        self.generated.append(i3d(inputs.frames[:n]) if n < len(inputs.frames) else inputs.features["i3d"])
        self.truth.append(i3d(inputs.gt))

    def finish(self, ctx: EvalContext) -> None:
        gen = torch.cat(self.generated) if self.generated else torch.zeros(0)
        truth = torch.cat(self.truth) if self.truth else torch.zeros(0)
        if len(gen) < 2 or len(truth) < 2:  # a Gaussian needs at least two windows on each side
            return
        ctx.video["fvd"] = frechet_distance(*gaussian_stats(gen), *gaussian_stats(truth))
