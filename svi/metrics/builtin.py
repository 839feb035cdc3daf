"""The metrics svi ships, registered in the order reports list them (definitions: docs/evaluate.md).

Each class turns the shared per-segment inputs into values; the formulas themselves are the pure
functions of svi/metrics/pixel.py, frechet.py and learned.py.
"""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from svi.metrics import learned, pixel
from svi.metrics.frechet import RandomConvFeatures, frechet_distance, gaussian_stats
from svi.metrics.registry import (EvalContext, FrameMetric, Metric, MetricInfo, SegmentInputs, finite_mean,
                                  register_metric, segment_means)
from svi.metrics.video import Segment, seams


# -- against ground truth ----------------------------------------------------------------------

@register_metric
class Psnr(Metric):
    """PSNR per frame; a segment's and the video's value come from their mean MSE rather than the mean of
    decibels, in which a few near-perfect (capped) frames would outweigh a bad one."""

    info = (MetricInfo("psnr", "dB", True, True, "gt",
                       "PSNR against the ground truth (segment: from the mean MSE; capped)"),)

    def begin(self, ctx: EvalContext) -> None:
        self.squared_error, self.count = 0.0, 0

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        if inputs.gt is None:
            return
        m = pixel.mse(inputs.frames[:len(inputs.gt)], inputs.gt)  # (m,)
        cap = ctx.cfg.psnr_cap_db
        ctx.per_frame["psnr"][segment.start:segment.start + len(m)] = pixel.psnr_from_mse(m, cap).numpy()
        ctx.per_segment["psnr"][segment.index] = float(pixel.psnr_from_mse(m.double().mean(), cap))
        self.squared_error += float(m.double().sum())
        self.count += len(m)

    def finish(self, ctx: EvalContext) -> None:
        if self.count:
            ctx.video["psnr"] = float(pixel.psnr_from_mse(self.squared_error / self.count, ctx.cfg.psnr_cap_db))


@register_metric
class Ssim(FrameMetric):
    info = (MetricInfo("ssim", "", True, True, "gt", "SSIM against the ground truth (Gaussian 11, sigma 1.5)"),)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor | None:
        if inputs.gt is None:
            return None
        return pixel.ssim(inputs.frames[:len(inputs.gt)], inputs.gt)


# -- colour, sharpness -------------------------------------------------------------------------

@register_metric
class ColourDeltaE(FrameMetric):
    info = (MetricInfo("colour_de", "ΔE76", False, True, None,
                       "mean CIELAB colour distance to the anchor frame"),)

    def begin(self, ctx: EvalContext) -> None:
        self.anchor_lab = pixel.mean_lab(ctx.anchor)[0]  # (3,)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return pixel.colour_delta_e(inputs.frames, self.anchor_lab)


@register_metric
class ColourHistogram(FrameMetric):
    info = (MetricInfo("colour_hist", "", False, True, None,
                       "Bhattacharyya distance of RGB histograms to the anchor frame"),)

    def begin(self, ctx: EvalContext) -> None:
        self.anchor_hist = pixel.colour_histogram(ctx.anchor, ctx.cfg.histogram_bins)[0]  # (bins^3,)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return pixel.bhattacharyya(pixel.colour_histogram(inputs.frames, ctx.cfg.histogram_bins), self.anchor_hist)


@register_metric
class Sharpness(FrameMetric):
    info = (MetricInfo("sharpness", "", True, True, None, "variance of the Laplacian of grey (0..255 units)"),)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return pixel.laplacian_variance(inputs.frames)


@register_metric
class HighFrequencyEnergy(FrameMetric):
    info = (MetricInfo("hf_energy", "", True, True, None,
                       "fraction of spectral energy above hf_cutoff cycles/px"),)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return pixel.high_frequency_energy(inputs.frames, ctx.cfg.hf_cutoff)


# -- time: flicker, seams ----------------------------------------------------------------------

@register_metric
class Flicker(Metric):
    """A segment scores the frame pairs inside it (so a seam does not count against the clip after it);
    the video scores all pairs, seams included, as VBench does."""

    info = (MetricInfo("flicker", "", True, True, None,
                       "VBench temporal flickering 1 - mean|F_t - F_t-1| (within segments)"),)

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        f = pixel.flicker_from_difference(inputs.diffs).numpy()  # (n,); f[0] pairs with the previous segment
        ctx.per_frame["flicker"][segment.start:segment.stop] = f
        ctx.per_segment["flicker"][segment.index] = np.nanmean(f[1:]) if len(f) > 1 else np.nan

    def finish(self, ctx: EvalContext) -> None:
        ctx.video["flicker"] = float(np.nanmean(ctx.per_frame["flicker"])) if ctx.num_frames > 1 else math.nan


@register_metric
class SeamRatio(Metric):
    """Segment s (s >= 1): the frame difference across the seam into s over the mean difference within
    segments s - 1 and s. The video: `pixel.seam_ratio` over all seams. Segment 0 has no seam (NaN)."""

    info = (MetricInfo("seam_ratio", "", False, False, None,
                       "mean|ΔF| at clip starts / mean|ΔF| elsewhere (1 = no jump)"),)

    def begin(self, ctx: EvalContext) -> None:
        self.diffs = np.full(ctx.num_frames, np.nan)  # (num_frames,) mean |F_t - F_{t-1}|

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        self.diffs[segment.start:segment.stop] = inputs.diffs.numpy()

    def finish(self, ctx: EvalContext) -> None:
        d, values = self.diffs, ctx.per_segment["seam_ratio"]
        for s_prev, s_cur in zip(ctx.segments[:-1], ctx.segments[1:]):
            local = np.r_[d[s_prev.start + 1:s_prev.stop], d[s_cur.start + 1:s_cur.stop]]
            base = np.nanmean(local) if np.isfinite(local).any() else np.nan
            values[s_cur.index] = d[s_cur.start] / base if base and base > 0 else np.nan
        ctx.video["seam_ratio"] = pixel.seam_ratio(d, seams(ctx.segments))


# -- distribution drift ------------------------------------------------------------------------

@register_metric
class FrechetDrift(Metric):
    """Each segment's Gaussian of fixed random-conv features against the first segment's; the video's
    value is the mean over the later segments (the first is 0 by construction)."""

    info = (MetricInfo("fd", "", False, False, None,
                       "Fréchet distance of the segment's random-conv features to the first segment's"),)

    def begin(self, ctx: EvalContext) -> None:
        f = ctx.cfg.frechet
        self.net = RandomConvFeatures(f.dim, f.size, f.seed)
        self.stats: list[tuple[Tensor, Tensor]] = []  # per segment: mean (dim,), covariance (dim, dim)

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        self.stats.append(gaussian_stats(self.net(inputs.frames)))

    def finish(self, ctx: EvalContext) -> None:
        mu0, s0 = self.stats[0]
        values = np.array([frechet_distance(mu, cov, mu0, s0) for mu, cov in self.stats])
        ctx.per_segment["fd"] = values
        ctx.video["fd"] = float(np.mean(values[1:])) if len(values) > 1 else math.nan


# -- similarity of latent frames and of learned features ---------------------------------------

@register_metric
class LatentSimilarity(Metric):
    """The VBench consistency formula and the anchor similarity on VAE latent frames, with the channel
    cosine averaged over positions as the similarity (MIGA-style self-similarity). The anchor is the
    first latent frame of the first segment that has latents."""

    info = (MetricInfo("latent_consistency", "", True, False, "latents", "VBench consistency formula on VAE latent "
                       "frames (channel cosine, averaged over positions): MIGA-style self-similarity"),
            MetricInfo("latent_anchor", "", True, False, "latents",
                       "channel cosine of latent frames to the first latent frame"))

    def begin(self, ctx: EvalContext) -> None:
        self.anchor: Tensor | None = None  # (C, h, w)
        self.total, self.count = 0.0, 0  # consistency terms over the whole video

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        if inputs.latents is None:
            return
        z = inputs.latents.permute(1, 0, 2, 3)  # (T, C, h, w)
        if self.anchor is None:
            self.anchor = z[0]
        if "latent_consistency" in self.names and z.shape[0] > 1:
            prev = pixel.latent_frame_similarity(z[1:], z[:-1]).clamp_min(0)  # (T - 1,)
            first = pixel.latent_frame_similarity(z[1:], z[:1]).clamp_min(0)
            terms = (0.5 * (prev + first)).double().numpy()
            ctx.per_segment["latent_consistency"][segment.index] = terms.mean()
            self.total += float(terms.sum())
            self.count += len(terms)
        if "latent_anchor" in self.names:
            sims = pixel.latent_frame_similarity(z, self.anchor.unsqueeze(0)).clamp_min(0)  # (T,)
            ctx.per_segment["latent_anchor"][segment.index] = float(sims.double().mean())

    def finish(self, ctx: EvalContext) -> None:
        if "latent_consistency" in self.names:
            ctx.video["latent_consistency"] = self.total / self.count if self.count else math.nan  # frame-weighted
        if "latent_anchor" in self.names:
            ctx.video["latent_anchor"] = finite_mean(ctx.per_segment["latent_anchor"])


class FeatureSimilarity(Metric):
    """VBench consistency inside each segment and the long-range similarity to the anchor frame, on the
    features of one extractor (learned.py has the formulas). `info` is (the consistency metric, the anchor
    metric), both needing that extractor.

    Consistency: per frame the term s_t (t >= 2 within the segment), per segment the mean of its terms,
    per video the mean of all terms (frame-weighted, as VBench-Long). Anchor: max(0, cos) to the anchor
    frame per frame, averaged like any per-frame series."""

    def __init__(self, names):
        super().__init__(names)
        self.consistency, self.anchor_name = (info.name for info in self.info)
        self.extractor = self.info[0].needs

    def begin(self, ctx: EvalContext) -> None:
        self.anchor = ctx.extractors[self.extractor](ctx.anchor)[0]  # (d,)
        self.total, self.count = 0.0, 0

    def update(self, segment: Segment, inputs: SegmentInputs, ctx: EvalContext) -> None:
        f = inputs.features[self.extractor]  # (n, d) L2-normalised
        a, b = segment.start, segment.stop
        if self.consistency in self.names and len(f) > 1:
            terms = learned.consistency_terms(f).numpy()  # (n - 1,)
            ctx.per_frame[self.consistency][a + 1:b] = terms
            ctx.per_segment[self.consistency][segment.index] = terms.mean()
            self.total += float(terms.sum())
            self.count += len(terms)
        if self.anchor_name in self.names:
            ctx.per_frame[self.anchor_name][a:b] = learned.anchor_similarity(f, self.anchor).numpy()

    def finish(self, ctx: EvalContext) -> None:
        if self.consistency in self.names:
            ctx.video[self.consistency] = self.total / self.count if self.count else math.nan
        if self.anchor_name in self.names:
            series = ctx.per_frame[self.anchor_name]
            ctx.per_segment[self.anchor_name] = segment_means(series, ctx.segments)
            ctx.video[self.anchor_name] = finite_mean(series)


@register_metric
class SubjectSimilarity(FeatureSimilarity):
    info = (MetricInfo("subject_consistency", "", True, True, "dino",
                       "VBench subject consistency (DINO), in-segment"),
            MetricInfo("subject_anchor", "", True, True, "dino",
                       "max(0, cos) of DINO features to the anchor frame"))


@register_metric
class BackgroundSimilarity(FeatureSimilarity):
    info = (MetricInfo("background_consistency", "", True, True, "clip_b32",
                       "VBench background consistency (CLIP B/32), in-segment"),
            MetricInfo("background_anchor", "", True, True, "clip_b32",
                       "max(0, cos) of CLIP B/32 features to the anchor frame"))


@register_metric
class Aesthetic(FrameMetric):
    info = (MetricInfo("aesthetic", "", True, True, "aesthetic", "LAION aesthetic head on CLIP ViT-L/14, / 10"),)

    def measure(self, inputs: SegmentInputs, ctx: EvalContext) -> Tensor:
        return inputs.features["aesthetic"]
