"""The conditioned tracks' metrics: lip sync (SyncNet) per segment against the audio, and FVD (I3D)."""

import math

import numpy as np
import pytest
import torch

from svi.metrics import ArrayVideo, evaluate_video, metrics_config, segments_from_counts
from svi.metrics.conditioned import I3D_WINDOW, I3DFeatures, SyncNetScorer
from svi.metrics.learned import Unavailable


def _video(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)


class RecordingScorer:
    """Stands in for SyncNet: remembers what each call got; confidence = mean pixel, distance = audio length."""

    def __init__(self):
        self.calls = []

    def score(self, frames, audio, fps):
        self.calls.append((len(frames), len(audio), fps))
        return float(frames.mean()), float(len(audio))


def test_lip_sync_scores_each_segment_with_its_span_of_the_audio():
    scorer = RecordingScorer()
    video = ArrayVideo(_video(), fps=25)
    segs = segments_from_counts([9, 8, 7])
    audio = np.zeros(24 * 640, np.float32)  # 24 frames at 25 fps, 16 kHz
    report = evaluate_video(video, segs, metrics_config({"include": ["sync_c", "sync_d"], "plots": False}),
                            extractors={"syncnet": scorer}, audio=audio)
    assert scorer.calls == [(9, 9 * 640, 25.0), (8, 8 * 640, 25.0), (7, 7 * 640, 25.0)]
    assert report.per_segment["sync_d"].tolist() == [9 * 640, 8 * 640, 7 * 640]
    assert report.video["sync_c"] == pytest.approx(np.mean(report.per_segment["sync_c"]))
    silent = evaluate_video(video, segs, metrics_config({"include": ["sync_c"], "plots": False}),
                            extractors={"syncnet": scorer})
    assert "no audio track" in silent.unavailable["sync_c"]


def test_sync_metrics_say_what_is_missing(tmp_path):
    with pytest.raises(Unavailable, match="metrics.extractors.syncnet=DIR"):
        SyncNetScorer(None)
    with pytest.raises(Unavailable, match=r"lacks \['syncnet_v2.model', 'sfd_face.pth'\]"):
        SyncNetScorer(str(tmp_path))
    for name in ("syncnet_v2.model", "sfd_face.pth"):
        (tmp_path / name).write_bytes(b"")
    try:
        import syncnet_python  # noqa: F401
    except ImportError:
        with pytest.raises(Unavailable, match="pip install syncnet-python"):
            SyncNetScorer(str(tmp_path))


class MeanI3D(torch.nn.Module):
    """A TorchScript stand-in with the I3D calling convention: per clip, the mean colour of its frame halves."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True, return_features: bool = True):
        assert x.min() >= -1 and x.max() <= 1 and not rescale and resize and return_features
        return torch.cat([x[:, :, :8].mean(dim=(2, 3, 4)), x[:, :, 8:].mean(dim=(2, 3, 4))], dim=1)


def test_fvd_compares_the_windows_of_video_and_ground_truth(tmp_path):
    torch.jit.script(MeanI3D()).save(str(tmp_path / "i3d.pt"))
    i3d = I3DFeatures(str(tmp_path / "i3d.pt"))
    frames = torch.rand(40, 3, 16, 16)
    assert i3d(frames).shape == (40 // I3D_WINDOW, 6)  # two whole windows; the rest is left out
    video = _video(96, seed=1)
    segs = segments_from_counts([48, 48])
    cfg = metrics_config({"include": ["fvd"], "plots": False})
    same = evaluate_video(ArrayVideo(video), segs, cfg, gt=ArrayVideo(video), extractors={"i3d": i3d})
    other = evaluate_video(ArrayVideo(video), segs, cfg, gt=ArrayVideo(_video(96, seed=2) // 2), extractors={"i3d": i3d})
    assert same.video["fvd"] == pytest.approx(0.0, abs=1e-9) and other.video["fvd"] > 0.01
    assert all(math.isnan(v) for v in same.per_segment["fvd"])  # one number per video
    missing = evaluate_video(ArrayVideo(video), segs, cfg, extractors={"i3d": i3d})
    assert "ground-truth" in missing.unavailable["fvd"]
    with pytest.raises(Unavailable, match="metrics.extractors.i3d=FILE"):
        I3DFeatures(None)
