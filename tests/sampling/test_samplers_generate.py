"""svi-generate with sampler=fifo|miga: exact length, streaming, resume (also after kill -9), the
text-to-video backbones, and the checks that run before any weights are loaded."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from svi.backbones import build_tiny_wan, save_stack
from svi.generate import generate
from svi.sampling.media import read_mp4
from tests.sampling.conftest import compose_generate, tiny_backbone_cfg

REPO = Path(__file__).resolve().parents[2]
GEOMETRY = ["num_frames=9", "height=32", "width=32", "progress=false", "flow.shift=3.0"]
SAMPLERS = {
    "fifo": ["sampler=fifo", "sampler.partitions=2", "sampler.chunk_latents=2"],
    "miga": ["sampler=miga", "flow.num_inference_steps=6", "sampler.group=1", "sampler.memory=1",
             "sampler.stride=1", "sampler.stage2_steps=2", "sampler.judge_level=1",
             "sampler.reference_groups=1", "sampler.reflect_threshold=0.0", "sampler.stage2_block=4",
             "sampler.stage2_overlap=1", "sampler.chunk_latents=2"],
}


def _cfg(out, image, prompts, *extra, backbone="backbone=tiny"):
    image_arg = f"image={image}" if image is not None else "image=null"
    return compose_generate([backbone, *GEOMETRY, image_arg, f"prompts={prompts}", f"out={out}", *extra])


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_exact_length_streamed_then_resumed_equals_uninterrupted(name, image_file, prompt_file, tmp_path):
    knobs = [*SAMPLERS[name], "num_frames_total=23"]
    whole = generate(_cfg(tmp_path / "whole", image_file, prompt_file, *knobs))
    assert whole["frames"] == 23 and whole["clips_done"] == whole["clips_total"] == 4  # 7 latents, 2 a chunk
    video = read_mp4(tmp_path / "whole/video.mp4")
    assert video.shape == (23, 32, 32, 3)
    seg = [len(read_mp4(tmp_path / f"whole/clips/clip_{k:04d}.mp4")) for k in range(4)]
    assert seg == [5, 8, 8, 2]  # 1 + 4, 8, 8, and the last chunk cut from 4 to 2 frames
    first = generate(_cfg(tmp_path / "split", image_file, prompt_file, *knobs, "stop_after=2"))
    assert first["clips_done"] == 2 and len(read_mp4(tmp_path / "split/video.mp4")) == 13
    generate(_cfg(tmp_path / "split", image_file, prompt_file, *knobs, "resume=true"))
    assert np.array_equal(read_mp4(tmp_path / "split/video.mp4"), video)


def test_the_clip_sampler_takes_the_same_length_knob(image_file, prompt_file, tmp_path):
    summary = generate(_cfg(tmp_path / "svi", image_file, prompt_file, "num_frames_total=20",
                            "flow.num_inference_steps=2"))
    assert summary["clips_total"] == 3 and summary["frames"] == 20  # 1 + 3 x 8 = 25 frames, cut to 20
    assert read_mp4(tmp_path / "svi/video.mp4").shape[0] == 20
    with pytest.raises(ValueError, match="either num_clips=2 or num_frames_total=20"):
        generate(_cfg(tmp_path / "both", image_file, prompt_file, "num_frames_total=20", "num_clips=2"))


def _t2v_stack():
    base = {k: v for k, v in tiny_backbone_cfg().items() if k != "_target_"}
    return build_tiny_wan(**{**base, "components": ["transformer", "vae", "text_encoder"],
                             "dims": None, "transformer": {**base["transformer"], "in_channels": 16,
                                                          "image_dim": None, "added_kv_proj_dim": None}})


def test_text_to_video_backbone_from_a_local_directory(prompt_file, tmp_path, monkeypatch):
    """The T2V twin saved in the diffusers layout and read by `backbone=wan21_t2v_1_3b` (the real path)."""
    save_stack(_t2v_stack(), tmp_path / "t2v")
    monkeypatch.setenv("SVI_WAN21_T2V_1_3B_DIR", str(tmp_path / "t2v"))
    backbone = ["backbone=wan21_t2v_1_3b", "backbone.dtype=float32", "backbone.dims.text_dim=32"]
    for name in SAMPLERS:
        out = tmp_path / name
        summary = generate(_cfg(out, None, prompt_file, *backbone, *SAMPLERS[name], "num_frames_total=13",
                                backbone=backbone[0]))
        assert summary["frames"] == 13 and read_mp4(out / "video.mp4").shape == (13, 32, 32, 3)
    with pytest.raises(ValueError, match="needs an image-to-video backbone"):
        generate(_cfg(tmp_path / "svi", None, prompt_file, *backbone, "num_clips=1", backbone=backbone[0]))
    with pytest.raises(ValueError, match="needs image=PATH"):
        generate(_cfg(tmp_path / "i2v", None, prompt_file, "sampler=fifo", "num_clips=1"))


def test_bad_sampler_settings_fail_before_the_weights_load(image_file, prompt_file, tmp_path, monkeypatch):
    monkeypatch.delenv("SVI_WAN21_I2V_14B_DIR", raising=False)
    real = ["backbone=wan21_i2v_14b", "height=32", "width=32", "num_clips=1", f"image={image_file}",
            f"prompts={prompt_file}", f"out={tmp_path / 'o'}"]
    with pytest.raises(ValueError, match=r"sampler.group \(L_zig\)=30 does not fit"):
        generate(compose_generate([*real, "sampler=miga", "sampler.group=30"]))
    with pytest.raises(ValueError, match="sampler.window must be >= 2"):
        generate(compose_generate([*real, "sampler=fifo", "num_frames=1"]))
    with pytest.raises(Exception, match="Could not override 'sampler.partition'"):
        compose_generate([*real, "sampler=fifo", "sampler.partition=2"])  # typed: a misspelt knob
    with pytest.raises(Exception, match="SVI_WAN21_I2V_14B_DIR"):  # valid settings: now the weights
        generate(compose_generate([*real, "sampler=miga"]))


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_frames(image_file, prompt_file, tmp_path):
    """A real kill -9 of `svi-generate sampler=fifo` after its first chunk, then resume=true."""
    args = ["backbone=tiny", *GEOMETRY, *SAMPLERS["fifo"], "num_frames_total=37", f"image={image_file}",
            f"prompts={prompt_file}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}  # this checkout's svi
    cmd = [sys.executable, "-m", "svi.generate", *args]
    subprocess.run([*cmd, f"out={tmp_path / 'whole'}"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, f"out={out}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "state/clip_0000.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "state/clip_0000.json").exists() and not (out / "state/clip_0004.json").exists()
    subprocess.run([*cmd, f"out={out}", "resume=true"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=300)
    killed, whole = read_mp4(out / "video.mp4"), read_mp4(tmp_path / "whole/video.mp4")
    assert killed.shape == whole.shape == (37, 32, 32, 3)
    assert (killed == whole).all()
