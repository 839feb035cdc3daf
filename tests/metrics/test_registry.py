"""The metric registry and the evaluation loop around it: a metric registered from outside svi is computed
like a shipped one, each input is computed once and only when needed, metrics do not affect each other,
and register_metric refuses classes that would fail halfway through an evaluation."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svi.metrics import (METRICS, WEIGHT_FREE, ArrayVideo, FrameMetric, Metric, MetricInfo, evaluate_video,
                         metrics_config, pixel, register_metric, segments_from_counts)
from svi.metrics.registry import METRIC_CLASSES
from svi.metrics.report import report_dict
from tests.metrics.conftest import moving, shift_colour

COUNTS = [5, 7, 1, 8]  # a one-frame segment too


@pytest.fixture
def registry():
    """Metrics registered inside a test are removed afterwards: other tests see the shipped registry."""
    metrics, classes, weight_free = dict(METRICS), dict(METRIC_CLASSES), list(WEIGHT_FREE)
    yield
    METRICS.clear()
    METRICS.update(metrics)
    METRIC_CLASSES.clear()
    METRIC_CLASSES.update(classes)
    WEIGHT_FREE[:] = weight_free


def frames():
    """21 frames of a scrolling texture getting warmer: every metric moves."""
    tex = moving(sum(COUNTS), step=2)
    return np.concatenate([shift_colour(tex[t:t + 1], (3 * t, 0, -3 * t)) for t in range(len(tex))])


def grey_means(x_u8):
    """Mean grey level per frame, written out: (n,) in [0, 1]."""
    x = x_u8.astype(np.float64) / 255
    return (0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]).mean(axis=(1, 2))


class MeanGrey(FrameMetric):
    info = (MetricInfo("mean_grey", unit="", higher_is_better=None, per_frame=True, needs=None,
                       description="mean grey level of the frame"),)

    def measure(self, inputs, ctx):
        return pixel.luma(inputs.frames).flatten(1).mean(dim=1)


class GreyRange(Metric):
    """Per segment only, with its own video rule: max - min of the frames' mean grey level."""

    info = (MetricInfo("grey_range", unit="", higher_is_better=False, per_frame=False, needs=None,
                       description="range of the mean grey level"),)

    def begin(self, ctx):
        self.lowest, self.highest = np.inf, -np.inf

    def update(self, segment, inputs, ctx):
        g = pixel.luma(inputs.frames).flatten(1).mean(dim=1).numpy()
        ctx.per_segment["grey_range"][segment.index] = g.max() - g.min()
        self.lowest, self.highest = min(self.lowest, g.min()), max(self.highest, g.max())

    def finish(self, ctx):
        ctx.video["grey_range"] = float(self.highest - self.lowest)


class Redness(FrameMetric):
    """Needs an extractor svi does not know: passed to evaluate_video by name."""

    info = (MetricInfo("redness", unit="", higher_is_better=None, per_frame=True, needs="channel_means",
                       description="mean red channel, from the channel_means extractor"),)

    def measure(self, inputs, ctx):
        return inputs.features["channel_means"][:, 0]


def channel_means(x):
    return x.flatten(2).mean(dim=2)  # (n, 3)


def test_a_metric_registered_outside_svi_is_computed_per_frame_segment_and_video(registry):
    for cls in (MeanGrey, GreyRange, Redness):
        assert register_metric(cls) is cls
    video = frames()
    segs = segments_from_counts(COUNTS)
    cfg = metrics_config({"include": ["mean_grey", "grey_range", "flicker"], "plots": False})
    r = evaluate_video(ArrayVideo(video), segs, cfg, extractors={})
    grey = grey_means(video)
    assert r.per_frame["mean_grey"] == pytest.approx(grey, abs=1e-6)
    assert r.per_segment["mean_grey"] == pytest.approx([grey[s.start:s.stop].mean() for s in segs], abs=1e-6)
    assert r.video["mean_grey"] == pytest.approx(grey.mean(), abs=1e-6)
    assert r.per_segment["grey_range"] == pytest.approx([np.ptp(grey[s.start:s.stop]) for s in segs], abs=1e-6)
    assert r.video["grey_range"] == pytest.approx(np.ptp(grey), abs=1e-6)
    assert "grey_range" not in r.per_frame  # per_frame=False: no series
    # It is a metric like the others: drift summaries, metrics.json, the default `include` (all).
    assert r.summary(cfg)["grey_range/first_last"] == pytest.approx(r.per_segment["grey_range"][-1]
                                                                    - r.per_segment["grey_range"][0])
    data = report_dict(r, cfg)
    assert data["metrics"]["mean_grey"]["available"] and data["metrics"]["mean_grey"]["unit"] == ""
    everything = evaluate_video(ArrayVideo(video), segs, {"plots": False}, extractors={})
    assert everything.video["mean_grey"] == r.video["mean_grey"] and "psnr" in everything.unavailable
    # A new extractor name: computed when the extractor is given, unavailable (with the reason) otherwise.
    cfg = metrics_config({"include": ["redness"], "plots": False})
    r = evaluate_video(ArrayVideo(video), segs, cfg, extractors={"channel_means": channel_means})
    assert r.per_frame["redness"] == pytest.approx(video[..., 0].mean(axis=(1, 2)) / 255, abs=1e-6)
    r = evaluate_video(ArrayVideo(video), segs, cfg, extractors={})
    assert r.unavailable == {"redness": "no extractor 'channel_means' given"} and not r.per_segment


def test_register_metric_refuses_what_would_fail_later(registry):
    before = dict(METRICS)

    class NoFinish(Metric):
        info = (MetricInfo("no_finish", "", True, False, None, ""),)

        def update(self, segment, inputs, ctx):
            pass

    class NoInfo(MeanGrey):
        info = ()

    class Twice(GreyRange):
        info = GreyRange.info * 2

    class TakenName(GreyRange):
        info = (METRICS["psnr"],)

    class FrameWithoutSeries(MeanGrey):
        info = (MetricInfo("frameless", "", True, False, None, ""),)

    with pytest.raises(TypeError, match="Metric subclass"):
        register_metric(channel_means)
    with pytest.raises(TypeError, match="does not implement.*finish"):
        register_metric(NoFinish)
    with pytest.raises(ValueError, match="nothing to register"):
        register_metric(NoInfo)
    with pytest.raises(ValueError, match="repeats a name"):
        register_metric(Twice)
    with pytest.raises(ValueError, match=r"already registered by \['Psnr'\]"):
        register_metric(TakenName)
    with pytest.raises(ValueError, match="per_frame=True"):
        register_metric(FrameWithoutSeries)
    assert METRICS == before


def test_the_registry_is_complete_and_documented():
    assert len(METRICS) == 21 and set(METRIC_CLASSES) == set(METRICS)
    for name, info in METRICS.items():
        assert info.name == name and info in METRIC_CLASSES[name].info
    assert WEIGHT_FREE == [n for n, m in METRICS.items() if m.needs in (None, "gt")]
    docs = (Path(__file__).resolve().parents[2] / "docs" / "evaluate.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", docs, flags=re.M)
    assert set(METRICS) <= set(documented)


class Recorder(Metric):
    """Records what the loop calls, with what."""

    info = (MetricInfo("recorder", "", None, False, None, ""),)
    calls: list = []

    def begin(self, ctx):
        self.calls.append(("begin", tuple(ctx.anchor.shape)))

    def update(self, segment, inputs, ctx):
        self.calls.append(("update", segment.index, tuple(inputs.frames.shape), bool(torch.isnan(inputs.diffs[0])),
                           inputs.gt, inputs.latents, sorted(inputs.features)))

    def finish(self, ctx):
        self.calls.append(("finish",))


def test_begin_update_finish_run_in_order_with_the_segment_inputs(registry):
    register_metric(Recorder)
    Recorder.calls = []
    segs = segments_from_counts(COUNTS)
    cfg = metrics_config({"include": ["recorder"], "plots": False})
    evaluate_video(ArrayVideo(frames()), segs, cfg, gt=ArrayVideo(frames()), latents=lambda x, s: 1 / 0,
                   extractors={}, progress=lambda s: Recorder.calls.append(("progress", s.index)))
    h, w = frames().shape[1:3]
    expected = [("begin", (1, 3, h, w))]
    for s in segs:  # nothing else is needed: no ground truth read, no latents, no features
        expected += [("update", s.index, (len(s), 3, h, w), s.index == 0, None, None, []), ("progress", s.index)]
    assert Recorder.calls == expected + [("finish",)]


class Counting:
    """A video source or an extractor that counts its calls."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __len__(self):
        return len(self.inner)

    @property
    def fps(self):
        return self.inner.fps

    def read(self, start, stop):
        self.calls += 1
        return self.inner.read(start, stop)

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)


def features(scale):
    """A stand-in extractor: L2-normalised 4x4 average-pooled colours, (n, 48)."""
    return lambda x: F.normalize(F.adaptive_avg_pool2d(x * scale, 4).flatten(1).double() - 0.3, dim=-1)


def test_each_input_is_computed_once_per_segment_and_only_when_needed():
    video, segs = ArrayVideo(frames()), segments_from_counts(COUNTS)
    dino, clip, gt = Counting(features(1.0)), Counting(features(2.0)), Counting(ArrayVideo(frames()))
    latents = Counting(lambda x, s: torch.ones(16, 1, 2, 2))
    everything = {"dino": dino, "clip_b32": clip}
    cfg = metrics_config({"include": ["subject_consistency", "subject_anchor", "flicker"], "plots": False})
    evaluate_video(video, segs, cfg, gt=gt, latents=latents, extractors=everything)
    assert (dino.calls, clip.calls, gt.calls, latents.calls) == (len(segs) + 1, 0, 0, 0)  # + the anchor frame
    cfg = metrics_config({"include": ["psnr", "ssim", "latent_consistency", "latent_anchor"], "plots": False})
    evaluate_video(video, segs, cfg, gt=gt, latents=latents, extractors=everything)
    assert (dino.calls, gt.calls, latents.calls) == (len(segs) + 1, len(segs) + 1, len(segs))  # + the size check


def test_each_metric_alone_gives_exactly_what_it_gives_among_all():
    """Shared inputs and families sharing state do not leak between metrics (a family may be asked for one
    of its members only)."""
    video, gt, segs = ArrayVideo(frames()), ArrayVideo(frames()[::-1].copy()), segments_from_counts(COUNTS)
    class Scorer:  # stands in for SyncNet: a function of the segment's frames and its span of the audio
        def score(self, x, audio, fps):
            return float(x.mean()), float(audio.sum())

    def windows(x):  # stands in for I3D: one feature per 4-frame window
        m = len(x) // 4
        return x[: 4 * m].unflatten(0, (m, 4)).mean(dim=(1, 3, 4)).double()

    extractors = {"dino": features(1.0), "clip_b32": features(2.0),
                  "aesthetic": lambda x: x.double().flatten(1).mean(dim=1), "syncnet": Scorer(), "i3d": windows,
                  "interpolator": lambda x: 0.25 * x[:-2] + 0.75 * x[2:]}
    audio = np.linspace(0, 1, 16000).astype(np.float32)

    def latents(x, s):
        return torch.randn(16, 1 + (len(x) - 1) // 4, 3, 3, generator=torch.Generator().manual_seed(s.index))

    def run(include):
        cfg = metrics_config({"include": include, "plots": False})
        return evaluate_video(video, segs, cfg, gt=gt, latents=latents, extractors=extractors, audio=audio)

    together = run(None)
    assert not together.unavailable and list(together.per_segment) == list(METRICS)
    for name in METRICS:
        alone = run([name])
        np.testing.assert_array_equal(alone.per_segment[name], together.per_segment[name], err_msg=name)
        if METRICS[name].per_frame:
            np.testing.assert_array_equal(alone.per_frame[name], together.per_frame[name], err_msg=name)
        np.testing.assert_array_equal(alone.video[name], together.video[name], err_msg=name)
        assert list(alone.per_segment) == [name]
