"""Streaming output and resume: an interrupted run, resumed, writes exactly the frames of an uninterrupted one."""

import json

import numpy as np
import pytest
import torch

from svi.generate import generate
from svi.sampling import ResumeError
from svi.sampling.media import read_mp4
from tests.sampling.conftest import SMALL, compose_generate

VARIANTS = {
    "shot_pixel": ["condition=shot"],
    "film_latent": ["condition=film", "handoff=latent", "num_frames=9", "save_latents=true"],
}


class Crash(Exception):
    pass


def _cfg(out, image, prompts, *extra):
    return compose_generate([*SMALL, f"image={image}", f"prompts={prompts}", "num_clips=2", f"out={out}", *extra])


def _frames(out):
    return read_mp4(out / "video.mp4")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted 2-clip runs, one per variant, computed once."""
    root = tmp_path_factory.mktemp("reference")
    from tests.sampling.conftest import write_image

    image, prompts = write_image(root / "image.png"), root / "prompts.txt"
    prompts.write_text("a red disc drifts to the right\na blue square spins\n")
    runs = {}
    for name, extra in VARIANTS.items():
        emitted = []
        summary = generate(_cfg(root / name, image, prompts, *extra), on_commit=lambda c, s: emitted.append(c.frames))
        runs[name] = (root / name, np.concatenate(emitted), summary)
    return image, prompts, runs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_uninterrupted_run_writes_video_segments_and_state(reference, variant):
    _, _, runs = reference
    out, emitted, summary = runs[variant]
    F = 9 if variant == "film_latent" else 5
    K = 5 if variant == "film_latent" else 1
    assert summary["clips_done"] == 2 and summary["frames"] == 2 * (F - K) + K
    video = _frames(out)
    assert video.shape == (2 * (F - K) + K, 32, 32, 3)
    segments = [out / "clips/clip_0000.mp4", out / "clips/clip_0001.mp4", out / "clips/clip_0001.tail.mp4"]
    assert np.array_equal(video, np.concatenate([read_mp4(p) for p in segments]))  # the last clip's K: its tail
    assert len(read_mp4(segments[-1])) == K
    assert np.abs(video.astype(int) - emitted).mean() < 12  # lossy H.264 of the emitted frames
    state = json.loads((out / "state/clip_0000.json").read_text())
    assert (state["clip"], state["cursor"], state["seed"], state["frames"]) == (0, 1, 0, F - K)
    assert json.loads((out / "state/clip_0001.json").read_text())["seed"] == 42  # base_seed + 42 i (preset=svi)
    carry = torch.load(out / "state/carry_0000.pt", weights_only=True)
    assert carry["motion"].shape == (K, 32, 32, 3) and carry["motion"].dtype == torch.uint8
    assert ("latents" in carry) == (variant == "film_latent")
    saved = sorted(p.name for p in (out / "latents").glob("*.pt")) if (out / "latents").is_dir() else []
    assert saved == (["clip_0000.pt", "clip_0001.pt"] if variant == "film_latent" else [])
    if saved:  # the clip's denoised latents: the last two latent frames are what the hand-off reused
        x0 = torch.load(out / "latents/clip_0000.pt", weights_only=True)
        assert x0.shape == (1, 16, 3, 4, 4) and torch.equal(x0[:, :, -2:], carry["latents"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clean_stop_then_resume_equals_uninterrupted(reference, tmp_path, variant):
    image, prompts, runs = reference
    out = tmp_path / "run"
    first = generate(_cfg(out, image, prompts, *VARIANTS[variant], "stop_after=1"))
    assert first["clips_done"] == 1 and not (out / "clips/clip_0001.mp4").exists()
    assert len(_frames(out)) == first["frames"]  # video.mp4 grows clip by clip
    resumed = generate(_cfg(out, image, prompts, *VARIANTS[variant], "resume=true"))
    assert resumed["clips_done"] == 2
    assert np.array_equal(_frames(out), _frames(runs[variant][0]))


def test_crash_after_clip_0_state_then_resume_equals_uninterrupted(reference, tmp_path):
    image, prompts, runs = reference
    out = tmp_path / "run"

    def crash(chunk, state_path):
        # The state of clip 0 is on disk; now die the way a kill during clip 1 would leave things.
        (out / "clips/clip_0001.tmp.mp4").write_bytes(b"half a segment")
        (out / "clips/clip_0001.mp4").write_bytes(b"segment renamed, state never written")
        (out / "state/carry_0001.pt.tmp").write_bytes(b"")
        (out / "video.tmp.mp4").write_bytes(b"half a concat")
        raise Crash

    with pytest.raises(Crash):
        generate(_cfg(out, image, prompts), on_commit=crash)
    with pytest.raises(FileExistsError, match="resume=true"):
        generate(_cfg(out, image, prompts))
    generate(_cfg(out, image, prompts, "resume=true"))
    assert np.array_equal(_frames(out), _frames(runs["shot_pixel"][0]))
    assert sorted(p.name for p in (out / "clips").iterdir()) == ["clip_0000.mp4", "clip_0001.mp4",
                                                                  "clip_0001.tail.mp4"]
    assert not list(out.glob("video.tmp*")) and not list((out / "state").glob("*.tmp"))
    done = generate(_cfg(out, image, prompts, "resume=true"))  # finished: nothing to do
    assert done["clips_done"] == 2


def test_resume_with_a_changed_config_is_a_clear_error(reference, tmp_path):
    image, prompts, _ = reference
    out = tmp_path / "run"
    generate(_cfg(out, image, prompts, "stop_after=1"))
    with pytest.raises(ResumeError, match=r"cfg: 5\.0 -> 3\.0"):
        generate(_cfg(out, image, prompts, "resume=true", "cfg=3.0"))
    with pytest.raises(ResumeError, match="handoff"):
        generate(_cfg(out, image, prompts, "resume=true", "handoff=latent"))
    with pytest.raises(ValueError, match="needs out=DIR"):
        generate(compose_generate([*SMALL, f"image={image}", f"prompts={prompts}", "resume=true"]))


def test_inputs_are_validated_before_the_backbone_loads(image_file, prompt_file, tmp_path, monkeypatch):
    # The real backbone cannot load here (no weights): each error below must come first.
    monkeypatch.delenv("SVI_WAN21_I2V_14B_DIR", raising=False)
    base = ["backbone=wan21_i2v_14b", "height=32", "width=32", f"out={tmp_path / 'o'}", "num_clips=1"]
    with pytest.raises(ValueError, match="1\\+4k"):
        generate(compose_generate([*base, f"image={image_file}", f"prompts={prompt_file}", "num_frames=6"]))
    with pytest.raises(FileNotFoundError, match="input image"):
        generate(compose_generate([*base, f"image={tmp_path / 'no.png'}", f"prompts={prompt_file}", "num_frames=5"]))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no prompts"):
        generate(compose_generate([*base, f"image={image_file}", f"prompts={tmp_path / 'empty.txt'}", "num_frames=5"]))
    with pytest.raises(FileNotFoundError, match="LoRA file"):
        generate(compose_generate([*base, f"image={image_file}", f"prompts={prompt_file}", "num_frames=5",
                                   f"lora.path={tmp_path / 'none.safetensors'}"]))
    with pytest.raises(Exception, match="SVI_WAN21_I2V_14B_DIR"):  # all inputs fine: now the weights
        generate(compose_generate([*base, f"image={image_file}", f"prompts={prompt_file}", "num_frames=5"]))
