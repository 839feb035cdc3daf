"""Motion smoothness (VBench's definition) with a TorchScript interpolator, and the weight-free blend proxy."""

import numpy as np
import pytest
import torch

from svi.metrics import ArrayVideo, evaluate_video, metrics_config, segments_from_counts
from svi.metrics.motion import TorchScriptInterpolator, blend_midpoints, smoothness_from_prediction

BOTH = metrics_config({"include": ["motion_smoothness", "motion_smoothness_blend", "flicker"],
                       "plots": False})


class Blend(torch.nn.Module):
    """A stand-in interpolator with AMT's calling convention: (img0, img1, embt) -> {"imgt_pred": ...}."""

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, embt: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"imgt_pred": img0 * (1 - embt) + img1 * embt}


@pytest.fixture
def interpolator(tmp_path):
    path = tmp_path / "blend.pt"
    torch.jit.script(Blend()).save(str(path))
    return path


def test_the_formula_on_hand_made_frames():
    frames = torch.zeros(5, 3, 2, 2)
    predicted = torch.zeros(3, 3, 2, 2)
    predicted[0] = 51 / 255  # t = 1 is predicted 51 grey levels off: (255 - 51) / 255 = 0.8
    m = smoothness_from_prediction(frames, predicted, start=0)
    assert torch.isnan(m[[0, 2, 4]]).all()  # even frames are inputs; the ends are never predicted
    assert m[1].item() == pytest.approx(0.8) and m[3].item() == 1.0
    shifted = smoothness_from_prediction(frames, predicted, start=1)  # video frames 1..5: odd are 1, 3, 5
    assert torch.isnan(shifted[[1, 3]]).all() and shifted[2].item() == 1.0


def test_blend_is_exact_on_linear_fades_and_zero_on_alternation():
    t = np.arange(12, dtype=np.float64)
    fade = np.repeat((t * 8)[:, None, None, None], 3, axis=-1) * np.ones((12, 8, 8, 3))
    r = evaluate_video(ArrayVideo(fade.astype(np.uint8)), segments_from_counts([12]), BOTH, extractors={})
    assert r.video["motion_smoothness_blend"] == 1.0 and "interpolator" in r.unavailable["motion_smoothness"]
    alternate = np.zeros((12, 8, 8, 3), np.uint8)
    alternate[1::2] = 255
    r = evaluate_video(ArrayVideo(alternate), segments_from_counts([12]), BOTH, extractors={})
    assert r.video["motion_smoothness_blend"] == 0.0 and r.video["flicker"] == 0.0


def test_a_torchscript_interpolator_gives_the_vbench_score(interpolator):
    rng = np.random.default_rng(0)
    video = (rng.integers(0, 128, (10, 20, 24, 3)) * 2).astype(np.uint8)  # even: exact midpoints; padded
    interp = TorchScriptInterpolator(str(interpolator), batch_size=3)
    frames = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(interp(frames), blend_midpoints(frames), atol=1e-6)
    r = evaluate_video(ArrayVideo(video), segments_from_counts([5, 5]), BOTH,
                       extractors={"interpolator": interp})
    assert r.unavailable == {}
    assert r.video["motion_smoothness"] == pytest.approx(r.video["motion_smoothness_blend"], abs=1e-9)
    f = r.per_frame["motion_smoothness"]
    assert np.isnan(f[[0, 2, 4, 5, 6, 8, 9]]).all() and np.isfinite(f[[1, 3, 7]]).all()  # odd interiors
    odd = [1, 3, 7]
    v = video.astype(float)
    expected = [1 - np.abs(v[t] - np.round((v[t - 1] + v[t + 1]) / 2)).mean() / 255 for t in odd]
    assert f[odd] == pytest.approx(expected, abs=1e-6)


def test_unavailable_without_a_model_file(tmp_path, monkeypatch):
    from svi.metrics import build_extractors
    from svi.metrics.learned import Unavailable

    monkeypatch.delenv("SVI_INTERPOLATOR", raising=False)
    with pytest.raises(Unavailable, match="metrics.extractors.interpolator"):
        TorchScriptInterpolator(None)
    (tmp_path / "x.pt").write_bytes(b"not a module")
    with pytest.raises(Unavailable, match="not a TorchScript module"):
        TorchScriptInterpolator(str(tmp_path / "x.pt"))
    made = build_extractors(metrics_config({"include": ["motion_smoothness"]}), ["motion_smoothness"])
    assert isinstance(made["interpolator"], Unavailable)
