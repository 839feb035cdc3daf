"""The evaluation loop: one pass over a video, segment by segment, every requested metric at once.

`evaluate_video` returns a `Report` (per-frame series, per-segment values, one value per video, and
the reason each unavailable metric is missing); `Report.summary()` adds the drift summaries. Nothing
here writes files (svi/metrics/report.py does) or knows about Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from svi.metrics import learned, pixel
from svi.metrics.config import MetricsConfig, metrics_config
from svi.metrics.drift import summarise
from svi.metrics.frechet import RandomConvFeatures, frechet_distance, gaussian_stats
from svi.metrics.video import Segment, VideoSource, seams


@dataclass(frozen=True)
class MetricInfo:
    name: str
    unit: str
    higher_is_better: bool | None  # None: no better direction (drift reports the raw change)
    per_frame: bool  # has a per-frame series (else per segment only)
    needs: str | None  # None (always available) | "gt" | "latents" | an extractor name
    description: str


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("psnr", "dB", True, True, "gt", "PSNR against the ground truth (segment: from the mean MSE; capped)"),
    MetricInfo("ssim", "", True, True, "gt", "SSIM against the ground truth (Gaussian 11, sigma 1.5)"),
    MetricInfo("colour_de", "ΔE76", False, True, None, "mean CIELAB colour distance to the anchor frame"),
    MetricInfo("colour_hist", "", False, True, None, "Bhattacharyya distance of RGB histograms to the anchor frame"),
    MetricInfo("sharpness", "", True, True, None, "variance of the Laplacian of grey (0..255 units)"),
    MetricInfo("hf_energy", "", True, True, None, "fraction of spectral energy above hf_cutoff cycles/px"),
    MetricInfo("flicker", "", True, True, None, "VBench temporal flickering 1 - mean|F_t - F_t-1| (within segments)"),
    MetricInfo("seam_ratio", "", False, False, None, "mean|ΔF| at clip starts / mean|ΔF| elsewhere (1 = no jump)"),
    MetricInfo("fd", "", False, False, None, "Fréchet distance of the segment's random-conv features to the first segment's"),
    MetricInfo("latent_consistency", "", True, False, "latents", "VBench consistency formula on VAE latent frames "
               "(channel cosine, averaged over positions): MIGA-style self-similarity"),
    MetricInfo("latent_anchor", "", True, False, "latents", "channel cosine of latent frames to the first latent frame"),
    MetricInfo("subject_consistency", "", True, True, "dino", "VBench subject consistency (DINO), in-segment"),
    MetricInfo("subject_anchor", "", True, True, "dino", "max(0, cos) of DINO features to the anchor frame"),
    MetricInfo("background_consistency", "", True, True, "clip_b32", "VBench background consistency (CLIP B/32), in-segment"),
    MetricInfo("background_anchor", "", True, True, "clip_b32", "max(0, cos) of CLIP B/32 features to the anchor frame"),
    MetricInfo("aesthetic", "", True, True, "aesthetic", "LAION aesthetic head on CLIP ViT-L/14, / 10"),
]}
WEIGHT_FREE = [m.name for m in METRICS.values() if m.needs in (None, "gt")]


# -- latent sources ----------------------------------------------------------------------------

class VaeLatents:
    """Latents of each segment from a backbone's VAE: the first 1+4k frames of the segment are encoded."""

    def __init__(self, stack):
        self.stack = stack

    def __call__(self, frames: Tensor, segment: Segment) -> Tensor | None:
        n = 1 + 4 * ((frames.shape[0] - 1) // 4)
        video = (frames[:n] * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, n, H, W) in [-1, 1]
        return self.stack.encode_video(video)[0].float().cpu()  # (16, T, h, w)


class SavedLatents:
    """Latents a run saved per clip: `<dir>/clip_NNNN.pt` holding a (16, T, h, w) or (1, 16, T, h, w) tensor."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def __call__(self, frames: Tensor, segment: Segment) -> Tensor | None:
        path = self.folder / f"clip_{segment.index:04d}.pt"
        if not path.is_file():
            return None
        z = torch.load(path, map_location="cpu", weights_only=True)
        return (z[0] if z.ndim == 5 else z).float()


# -- the report --------------------------------------------------------------------------------

@dataclass
class Report:
    fps: float
    height: int
    width: int
    segments: list[Segment]
    segment_source: str
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (num_frames,)
    per_segment: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (num_segments,)
    video: dict[str, float] = field(default_factory=dict)  # name -> one value
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why / what to configure

    @property
    def num_frames(self) -> int:
        return self.segments[-1].stop if self.segments else 0

    @property
    def seam_frames(self) -> list[int]:
        return seams(self.segments)

    def drift(self, cfg: MetricsConfig) -> dict[str, dict]:
        return {name: summarise(values, self.segments, self.fps, METRICS[name].higher_is_better,
                                per_frame=self.per_frame.get(name), start_end_frac=cfg.start_end_frac,
                                table_seconds=cfg.table_seconds)
                for name, values in self.per_segment.items()}

    def summary(self, cfg: MetricsConfig) -> dict[str, float | None]:
        """Flat `/`-named numbers for tables and loggers: `psnr`, `psnr/first_last`, `psnr/at_50s`, ..."""
        out: dict[str, float | None] = {}
        for name, drift in self.drift(cfg).items():
            out[name] = _num(self.video.get(name))
            for k, v in drift.items():
                if isinstance(v, (int, float)) or v is None:
                    out[f"{name}/{k}"] = _num(v)
        return out


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


# -- the loop ----------------------------------------------------------------------------------

def _requested(cfg: MetricsConfig) -> list[str]:
    names = list(cfg.include) if cfg.include else list(METRICS)
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in metrics.include; known: {sorted(METRICS)}")
    return names


def build_extractors(cfg: MetricsConfig, names: Sequence[str], device: str = "cpu") -> dict[str, object]:
    """The learned extractors the requested metrics need: an object, or the `Unavailable` explaining why not."""
    paths = cfg.extractors
    makers: dict[str, Callable[[], object]] = {
        "dino": lambda: learned.DinoFeatures(paths.dino, device=device, batch_size=cfg.batch_size),
        "clip_b32": lambda: learned.ClipFeatures(paths.clip_b32, key="clip_b32", device=device,
                                                 batch_size=cfg.batch_size),
        "aesthetic": lambda: learned.LaionAesthetic(paths.clip_l14, paths.laion_head, device=device,
                                                    batch_size=cfg.batch_size),
    }
    out = {}
    for need in sorted({METRICS[n].needs for n in names} & set(makers)):
        try:
            out[need] = makers[need]()
        except learned.Unavailable as err:
            out[need] = err
    return out


def evaluate_video(video: VideoSource, segments: Sequence[Segment], cfg: MetricsConfig | Mapping | None = None,
                   gt: VideoSource | None = None, latents: Callable[[Tensor, Segment], Tensor | None] | None = None,
                   extractors: Mapping[str, object] | None = None, segment_source: str = "clips",
                   progress: Callable | None = None) -> Report:
    """Measure every requested metric of `video` in one streaming pass over `segments`."""
    cfg = metrics_config(cfg)
    names = _requested(cfg)
    segments = list(segments)
    if not segments or segments[-1].stop > len(video):
        raise ValueError(f"segments cover {segments[-1].stop if segments else 0} frames; the video has {len(video)}")
    first = video.read(cfg.anchor_frame, cfg.anchor_frame + 1)
    if not len(first):
        raise ValueError(f"metrics.anchor_frame={cfg.anchor_frame} is outside the {len(video)}-frame video")
    height, width = first.shape[1:3]
    report = Report(video.fps, height, width, segments, segment_source)
    T, S = segments[-1].stop, len(segments)

    # What can run here: everything else is reported with the reason.
    extractors = dict(extractors) if extractors is not None else build_extractors(cfg, names)
    for n in names:
        need = METRICS[n].needs
        if need == "gt" and gt is None:
            report.unavailable[n] = "needs a ground-truth video: gt=VIDEO (or gt=scenes.jsonl gt_index=I for the toy world)"
        elif need == "latents" and latents is None:
            report.unavailable[n] = ("needs latents: pass backbone=NAME (its VAE encodes the frames) or save them "
                                     "as DIR/latents/clip_NNNN.pt")
        elif need in ("dino", "clip_b32", "aesthetic"):
            ex = extractors.get(need)
            if ex is None or isinstance(ex, Exception):
                report.unavailable[n] = str(ex) if ex is not None else f"no extractor '{need}' given"
    if gt is not None and any(METRICS[n].needs == "gt" for n in names if n not in report.unavailable):
        gshape = tuple(gt.read(0, 1).shape[1:3])
        if gshape != (height, width):
            raise ValueError(f"ground truth is {gshape[0]}x{gshape[1]} but the video is {height}x{width}")
    todo = [n for n in names if n not in report.unavailable]
    want = set(todo)

    anchor = pixel.to_float(first)
    anchor_lab = pixel.mean_lab(anchor)[0]
    anchor_hist = pixel.colour_histogram(anchor, cfg.histogram_bins)[0]
    frame = {n: np.full(T, np.nan) for n in todo if METRICS[n].per_frame}
    seg = {n: np.full(S, np.nan) for n in todo}
    diffs = np.full(T, np.nan)
    fd_net = RandomConvFeatures(cfg.frechet.dim, cfg.frechet.size, cfg.frechet.seed) if "fd" in want else None
    fd_stats, mse_sum, mse_count = [], 0.0, 0
    feats_anchor: dict[str, Tensor] = {}
    consistency_sums = {n: [0.0, 0] for n in ("subject_consistency", "background_consistency", "latent_consistency")}
    latent_anchor = None
    previous = None

    for s in segments:
        x = pixel.to_float(video.read(s.start, s.stop))  # (n, 3, H, W)
        a, b = s.start, s.stop
        d = pixel.frame_differences(x, previous).numpy()
        diffs[a:b] = d
        if "colour_de" in want:
            frame["colour_de"][a:b] = pixel.colour_delta_e(x, anchor_lab).numpy()
        if "colour_hist" in want:
            frame["colour_hist"][a:b] = pixel.bhattacharyya(pixel.colour_histogram(x, cfg.histogram_bins),
                                                            anchor_hist).numpy()
        if "sharpness" in want:
            frame["sharpness"][a:b] = pixel.laplacian_variance(x).numpy()
        if "hf_energy" in want:
            frame["hf_energy"][a:b] = pixel.high_frequency_energy(x, cfg.hf_cutoff).numpy()
        if "flicker" in want:
            f = pixel.flicker_from_difference(torch.from_numpy(d)).numpy()
            frame["flicker"][a:b] = f
            seg["flicker"][s.index] = np.nanmean(f[1:]) if len(f) > 1 else np.nan  # pairs inside the segment
        if want & {"psnr", "ssim"}:
            g = gt.read(a, b)
            n = len(g)
            if n:
                y = pixel.to_float(g)
                m = pixel.mse(x[:n], y)
                if "psnr" in want:
                    frame["psnr"][a:a + n] = pixel.psnr_from_mse(m, cfg.psnr_cap_db).numpy()
                    seg["psnr"][s.index] = float(pixel.psnr_from_mse(m.double().mean(), cfg.psnr_cap_db))
                    mse_sum, mse_count = mse_sum + float(m.double().sum()), mse_count + n
                if "ssim" in want:
                    frame["ssim"][a:a + n] = pixel.ssim(x[:n], y).numpy()
        if fd_net is not None:
            fd_stats.append(gaussian_stats(fd_net(x)))
        for key, cons, anc in (("dino", "subject_consistency", "subject_anchor"),
                               ("clip_b32", "background_consistency", "background_anchor")):
            if cons in want or anc in want:
                f = extractors[key](x)  # (n, d) normalised
                if key not in feats_anchor:
                    feats_anchor[key] = extractors[key](anchor)[0]
                if cons in want and len(f) > 1:
                    terms = learned.consistency_terms(f).numpy()
                    frame[cons][a + 1:b] = terms
                    seg[cons][s.index] = terms.mean()
                    consistency_sums[cons][0] += float(terms.sum())
                    consistency_sums[cons][1] += len(terms)
                if anc in want:
                    frame[anc][a:b] = learned.anchor_similarity(f, feats_anchor[key]).numpy()
        if "aesthetic" in want:
            frame["aesthetic"][a:b] = extractors["aesthetic"](x).numpy()
        if want & {"latent_consistency", "latent_anchor"}:
            z = latents(x, s)
            if z is not None:
                zf = z.permute(1, 0, 2, 3)  # (T, C, h, w)
                if latent_anchor is None:
                    latent_anchor = zf[0]
                if "latent_consistency" in want and zf.shape[0] > 1:
                    prev = pixel.latent_frame_similarity(zf[1:], zf[:-1]).clamp_min(0)
                    firstsim = pixel.latent_frame_similarity(zf[1:], zf[:1]).clamp_min(0)
                    terms = (0.5 * (prev + firstsim)).double().numpy()
                    seg["latent_consistency"][s.index] = terms.mean()
                    consistency_sums["latent_consistency"][0] += float(terms.sum())
                    consistency_sums["latent_consistency"][1] += len(terms)
                if "latent_anchor" in want:
                    sims = pixel.latent_frame_similarity(zf, latent_anchor.unsqueeze(0)).clamp_min(0)
                    seg["latent_anchor"][s.index] = float(sims.double().mean())
        previous = x[-1]
        if progress is not None:
            progress(s)

    # Per-segment means of per-frame series (metrics with their own segment rule are already set).
    for n in frame:
        if n in ("flicker", "psnr") or n in consistency_sums:
            continue
        seg[n] = np.array([np.nanmean(frame[n][s.start:s.stop]) if np.isfinite(frame[n][s.start:s.stop]).any()
                           else np.nan for s in segments])
    seam_list = seams(segments)
    if "seam_ratio" in want:
        seg["seam_ratio"][0] = np.nan
        for s_prev, s_cur in zip(segments[:-1], segments[1:]):
            local = np.r_[diffs[s_prev.start + 1:s_prev.stop], diffs[s_cur.start + 1:s_cur.stop]]
            base = np.nanmean(local) if np.isfinite(local).any() else np.nan
            seg["seam_ratio"][s_cur.index] = diffs[s_cur.start] / base if base and base > 0 else np.nan
        report.video["seam_ratio"] = pixel.seam_ratio(diffs, seam_list)
    if fd_net is not None:
        mu0, s0 = fd_stats[0]
        seg["fd"] = np.array([frechet_distance(mu, cov, mu0, s0) for mu, cov in fd_stats])
        report.video["fd"] = float(np.mean(seg["fd"][1:])) if S > 1 else math.nan
    if "psnr" in want and mse_count:
        report.video["psnr"] = float(pixel.psnr_from_mse(mse_sum / mse_count, cfg.psnr_cap_db))
    for n, (total, count) in consistency_sums.items():
        if n in want:
            report.video[n] = total / count if count else math.nan  # frame-weighted, as VBench
    if "latent_anchor" in want:
        report.video["latent_anchor"] = float(np.nanmean(seg["latent_anchor"])) \
            if np.isfinite(seg["latent_anchor"]).any() else math.nan
    if "flicker" in want:
        report.video["flicker"] = float(np.nanmean(frame["flicker"])) if T > 1 else math.nan  # all pairs (VBench)
    for n in frame:
        report.video.setdefault(n, float(np.nanmean(frame[n])) if np.isfinite(frame[n]).any() else math.nan)
    report.per_frame = frame
    report.per_segment = {n: seg[n] for n in todo}
    return report
