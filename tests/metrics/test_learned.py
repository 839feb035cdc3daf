"""VBench-style learned metrics with tiny random extractors saved to disk and loaded through the real path,
checked against values computed by hand from the same weights."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from svi.metrics import ArrayVideo, build_extractors, evaluate_video, metrics_config, segments_from_counts
from svi.metrics.learned import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from tests.metrics.conftest import textured

LEARNED = ["subject_consistency", "subject_anchor", "background_consistency", "background_anchor", "aesthetic"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny DINO (ViTModel), DINOv2, CLIP-with-projection and a LAION head, saved as real checkpoints."""
    from transformers import (CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection, Dinov2Config,
                              Dinov2Model, ViTConfig, ViTModel)

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32)
    ViTModel(ViTConfig(patch_size=8, **small), add_pooling_layer=False).save_pretrained(root / "dino")
    Dinov2Model(Dinov2Config(patch_size=8, **small)).save_pretrained(root / "dinov2")
    clip = dict(small, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**clip)).save_pretrained(root / "clip_b32")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**clip)).save_pretrained(root / "clip_l14")
    CLIPVisionModel(CLIPVisionConfig(**clip)).save_pretrained(root / "clip_no_projection")
    head = torch.nn.Linear(16, 1)
    torch.save(head.state_dict(), root / "laion_head.pth")
    return root


def cfg_for(root, dino="dino", **over):
    return metrics_config({"include": LEARNED, "plots": False, "extractors": {
        "dino": str(root / dino), "clip_b32": str(root / "clip_b32"), "clip_l14": str(root / "clip_l14"),
        "laion_head": str(root / "laion_head.pth"), **over}})


def by_hand_dino(path, frames_u8):
    """DINO preprocessing written out: shorter side -> 32 bilinear (no antialias), ImageNet norm, CLS token."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    x = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(32, int(32 * w / h)), mode="bilinear", align_corners=False, antialias=False)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    kwargs = {"interpolate_pos_encoding": True} if model.config.model_type == "vit" else {}
    with torch.no_grad():
        f = model(pixel_values=x, **kwargs).last_hidden_state[:, 0].double()
    return (f / f.norm(dim=1, keepdim=True)).numpy()


def by_hand_clip(path, frames_u8):
    """CLIP preprocessing written out: shorter side -> 32 bicubic, centre crop 32, CLIP norm, image_embeds."""
    from transformers import CLIPVisionModelWithProjection

    model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
    x = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(32, int(32 * w / h)), mode="bicubic", align_corners=False, antialias=True)
    left = int(round((x.shape[-1] - 32) / 2))
    x = x[..., :, left:left + 32].clamp(0, 1)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        f = model(pixel_values=x).image_embeds.double()
    return (f / f.norm(dim=1, keepdim=True)).numpy()


def vbench_consistency(f):
    """The VBench formula with explicit loops: mean over t >= 2 of ½[max(0,cos(f_t-1,f_t)) + max(0,cos(f_1,f_t))]."""
    terms = []
    for t in range(1, len(f)):
        terms.append(0.5 * (max(0.0, float(f[t - 1] @ f[t])) + max(0.0, float(f[0] @ f[t]))))
    return terms


def video():
    """Three 4-frame segments of random, unrelated 40x56 frames (non-square: DINO interpolates positions)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (12, 40, 56, 3), dtype=np.uint8)


@pytest.mark.parametrize("dino", ["dino", "dinov2"])
def test_consistency_and_aesthetic_match_hand_computed_values(weights, dino):
    frames = video()
    cfg = cfg_for(weights, dino=dino)
    r = evaluate_video(ArrayVideo(frames), segments_from_counts([4, 4, 4]), cfg)
    assert not r.unavailable
    fd, fc = by_hand_dino(weights / dino, frames), by_hand_clip(weights / "clip_b32", frames)
    for name, f in (("subject", fd), ("background", fc)):
        per_seg = [vbench_consistency(f[4 * s:4 * s + 4]) for s in range(3)]
        assert r.per_segment[f"{name}_consistency"] == pytest.approx([np.mean(t) for t in per_seg], abs=1e-6)
        # Video score: frame-weighted over the in-segment terms (VBench-Long with segments as clips).
        assert r.video[f"{name}_consistency"] == pytest.approx(np.mean(sum(per_seg, [])), abs=1e-6)
        anchor = np.maximum(0, f @ f[0])
        assert r.per_frame[f"{name}_anchor"] == pytest.approx(anchor, abs=1e-6)
    head = torch.load(weights / "laion_head.pth", weights_only=True)
    fl = by_hand_clip(weights / "clip_l14", frames)
    expected = (fl @ head["weight"].double().numpy().T).ravel() / 10 + float(head["bias"]) / 10
    assert r.per_frame["aesthetic"] == pytest.approx(expected, abs=1e-6)
    assert r.video["aesthetic"] == pytest.approx(expected.mean(), abs=1e-6)


def test_identical_frames_are_perfectly_consistent(weights):
    frames = textured(n=8, h=32, w=32)
    r = evaluate_video(ArrayVideo(frames), segments_from_counts([4, 4]), cfg_for(weights))
    for name in ("subject_consistency", "background_consistency", "subject_anchor", "background_anchor"):
        assert r.video[name] == pytest.approx(1.0, abs=1e-9)


def test_missing_or_wrong_weights_are_unavailable_with_the_key_to_set(weights, tmp_path):
    cfg = metrics_config({"include": LEARNED, "plots": False})  # nothing configured
    r = evaluate_video(ArrayVideo(textured(n=8)), segments_from_counts([8]), cfg)
    assert set(r.unavailable) == set(LEARNED) and not r.per_segment
    assert "metrics.extractors.dino" in r.unavailable["subject_consistency"]
    assert "metrics.extractors.laion_head" in r.unavailable["aesthetic"]
    # A vision tower without its projection would get a random one: refused, not substituted.
    ex = build_extractors(cfg_for(weights, clip_b32=str(weights / "clip_no_projection")), ["background_consistency"])
    assert "visual_projection" in str(ex["clip_b32"]) or "projection" in str(ex["clip_b32"])
    ex = build_extractors(cfg_for(weights, dino=str(tmp_path / "nope")), ["subject_consistency"])
    assert "does not exist" in str(ex["dino"])
