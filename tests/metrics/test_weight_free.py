"""Weight-free metrics on synthetic videos with known answers: value and direction of each metric."""

import math

import numpy as np
import pytest
import torch

from svi.metrics import ArrayVideo, evaluate_video, fixed_segments, metrics_config, segments_from_counts
from svi.metrics import pixel
from svi.metrics.frechet import RandomConvFeatures, frechet_distance, gaussian_stats
from tests.metrics.conftest import blur, moving, shift_colour, textured

SEGS = [16, 16, 16]
WEIGHT_FREE = metrics_config({"include": ["psnr", "ssim", "colour_de", "colour_hist", "sharpness", "hf_energy",
                                          "flicker", "seam_ratio", "fd"], "plots": False})


def run(frames, gt=None, counts=SEGS, cfg=WEIGHT_FREE):
    return evaluate_video(ArrayVideo(frames), segments_from_counts(list(counts)), cfg,
                          gt=ArrayVideo(gt) if gt is not None else None, extractors={})


def test_identical_static_video_is_perfect_everywhere():
    frames = textured(n=48)
    r = run(frames, gt=frames)
    assert r.video["psnr"] == 60.0 and np.all(r.per_segment["psnr"] == 60.0)  # capped, not infinite
    assert r.video["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert r.video["colour_de"] == 0.0 and r.video["colour_hist"] == 0.0
    assert r.video["flicker"] == 1.0 and r.video["seam_ratio"] == 1.0
    assert np.all(r.per_segment["fd"] == 0.0)  # every segment has the first one's distribution
    assert r.unavailable == {}


def test_psnr_of_a_known_offset_and_ssim_direction():
    gt = np.full((48, 32, 32, 3), 128, np.uint8)
    x = gt + np.uint8(25)
    r = run(x, gt=gt)
    assert r.video["psnr"] == pytest.approx(20 * math.log10(255 / 25), abs=1e-6)  # 20.17 dB
    assert np.allclose(r.per_frame["psnr"], 20 * math.log10(255 / 25))
    tex = textured(n=48)
    assert run(blur(tex, 1.5), gt=tex).video["ssim"] < run(blur(tex, 0.7), gt=tex).video["ssim"] < 1.0


def test_blur_lowers_sharpness_and_high_frequency_energy():
    tex = textured(n=48)
    sharp, soft = run(tex), run(blur(tex, 1.5))
    assert soft.video["sharpness"] < 0.5 * sharp.video["sharpness"]
    assert soft.video["hf_energy"] < 0.5 * sharp.video["hf_energy"]
    # White noise: the fraction of the spectrum's area beyond 0.25 cycles/px is 1 - pi/16.
    noise = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    hf = pixel.high_frequency_energy(pixel.to_float(noise), 0.25).mean().item()
    assert hf == pytest.approx(1 - math.pi / 16, abs=0.02)


def test_lab_reference_colours_and_colour_drift_to_the_anchor():
    white = pixel.rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    grey = pixel.rgb_to_lab(torch.full((1, 3, 1, 1), 128 / 255)).flatten()
    assert torch.allclose(white, torch.tensor([100.0, 0, 0]), atol=1e-3)
    assert grey[0].item() == pytest.approx(53.585, abs=1e-2) and abs(grey[1]) < 1e-3 and abs(grey[2]) < 1e-3
    # A flat grey video whose last two segments turn black: ΔE = L*(grey) = 53.585 there, 0 before.
    frames = np.full((48, 16, 16, 3), 128, np.uint8)
    frames[16:] = 0
    r = run(frames, cfg=metrics_config({"include": ["colour_de", "colour_hist"], "plots": False}))
    assert r.per_segment["colour_de"] == pytest.approx([0.0, 53.585, 53.585], abs=1e-2)
    assert r.per_segment["colour_hist"] == pytest.approx([0.0, 1.0, 1.0])  # disjoint histograms
    # A growing colour cast moves colour drift monotonically, and only colour.
    tex = textured(n=48)
    cast = np.concatenate([shift_colour(tex[:16], (8 * s, 0, -8 * s)) for s in range(3)])
    c = run(cast)
    assert c.per_segment["colour_de"][0] == 0 and np.all(np.diff(c.per_segment["colour_de"]) > 2)
    assert c.per_segment["sharpness"] == pytest.approx(run(tex).per_segment["sharpness"], rel=0.05)


def test_flicker_is_the_vbench_formula():
    frames = np.full((48, 16, 16, 3), 100, np.uint8)
    frames[1::2] = 110  # every pair differs by 10 grey levels
    r = run(frames)
    assert r.video["flicker"] == pytest.approx(1 - 10 / 255)
    assert r.per_segment["flicker"] == pytest.approx([1 - 10 / 255] * 3)
    assert math.isnan(r.per_frame["flicker"][0])


def test_seam_ratio_finds_an_injected_jump_at_clip_boundaries():
    smooth = moving(48, noise=0.0)
    assert run(smooth).video["seam_ratio"] == pytest.approx(1.0, abs=0.15)
    jumpy = moving(48, noise=0.0, positions=[t + 6 * (t // 16) for t in range(48)])  # each clip starts 7 px on
    r = run(jumpy)
    assert r.video["seam_ratio"] > 3
    assert math.isnan(r.per_segment["seam_ratio"][0]) and np.all(r.per_segment["seam_ratio"][1:] > 3)
    # Within-clip flicker does not see the seams; the video-level (VBench, all pairs) value does.
    assert r.per_segment["flicker"] == pytest.approx(run(smooth).per_segment["flicker"], abs=5e-3)
    assert r.video["flicker"] < run(smooth).video["flicker"]


def test_frechet_distance_closed_form_and_growth_under_drift():
    # Diagonal Gaussians: FD = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2.
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])).double(), torch.diag(torch.tensor([4.0, 4.0, 1.0])).double()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(5 + (1 + 0 + 4), abs=1e-9)
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]  # invariant to a rotation of both
    assert frechet_distance(rot @ mu1, rot @ s1 @ rot.T, rot @ mu2, rot @ s2 @ rot.T) == pytest.approx(10, abs=1e-8)
    x = torch.randn(200, 3, dtype=torch.float64)
    assert frechet_distance(*gaussian_stats(x), *gaussian_stats(x)) == pytest.approx(0, abs=1e-9)
    # Features are deterministic across instances (fixed seed) and FD grows with blur.
    f = pixel.to_float(textured(n=2))
    assert torch.equal(RandomConvFeatures()(f), RandomConvFeatures()(f))
    tex = moving(48)
    drift = np.concatenate([blur(tex[16 * s:16 * (s + 1)], 1.0 * s) for s in range(3)])
    fd = run(drift).per_segment["fd"]
    assert fd[0] == 0 and fd[1] > 0 and fd[2] > fd[1]
    assert run(tex).per_segment["fd"][2] < 0.2 * fd[2]


def test_latent_self_similarity_from_a_latent_source():
    frames = textured(n=32)
    segs = segments_from_counts([16, 16])
    z = torch.randn(16, 4, 6, 6)

    def same(x, s):  # identical latent frames: consistency exactly 1
        return z[:, :1].repeat(1, 4, 1, 1)

    cfg = metrics_config({"include": ["latent_consistency", "latent_anchor"], "plots": False})
    r = evaluate_video(ArrayVideo(frames), segs, cfg, latents=same, extractors={})
    assert r.video["latent_consistency"] == pytest.approx(1.0) and r.video["latent_anchor"] == pytest.approx(1.0)
    r = evaluate_video(ArrayVideo(frames), segs, cfg, latents=lambda x, s: torch.randn(16, 4, 6, 6), extractors={})
    assert r.video["latent_consistency"] < 0.5  # independent random latents: cosines near 0
    r = evaluate_video(ArrayVideo(frames), segs, cfg, extractors={})
    assert set(r.unavailable) == {"latent_consistency", "latent_anchor"}
    assert "backbone=" in r.unavailable["latent_consistency"]


def test_latents_from_the_tiny_vae(tiny_stack):
    from svi.metrics import VaeLatents

    frames = textured(n=34, h=32, w=32)
    cfg = metrics_config({"include": ["latent_consistency"], "plots": False})
    r = evaluate_video(ArrayVideo(frames), segments_from_counts([17, 17]), cfg, latents=VaeLatents(tiny_stack),
                       extractors={})
    assert r.video["latent_consistency"] == pytest.approx(1.0, abs=0.05)  # a static video: near-identical latents


def test_missing_ground_truth_is_reported_not_guessed():
    r = run(textured(n=48), gt=None)
    assert "psnr" not in r.per_segment and "gt=" in r.unavailable["psnr"]


def test_fixed_segments_and_length_checks():
    assert [(s.start, s.stop) for s in fixed_segments(50, 16)] == [(0, 16), (16, 32), (32, 50)]
    assert [(s.start, s.stop) for s in fixed_segments(60, 16)] == [(0, 16), (16, 32), (32, 48), (48, 60)]
    with pytest.raises(ValueError, match="segments cover"):
        run(textured(n=10), counts=[16])
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_config({"include": ["psnrr"]}) and run(textured(n=48), cfg={"include": ["psnrr"]})
