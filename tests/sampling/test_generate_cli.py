"""The svi-generate command contract, run as a user would (subprocess) on the tiny backbone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from svi.sampling.media import read_mp4
from tests.sampling.conftest import make_tiny_stack

FAST = ["backbone=tiny", "flow.num_inference_steps=2", "num_frames=5", "height=32", "width=32", "progress=false"]


def _svi_generate(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("svi-generate")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "svi.generate"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_generate_stop_and_resume_from_the_command_line(image_file, prompt_file, tmp_path):
    out = tmp_path / "out"
    common = [*FAST, f"image={image_file}", f"prompts={prompt_file}", "num_clips=2", f"out={out}"]
    _svi_generate(*common, "stop_after=1", cwd=tmp_path)
    assert read_mp4(out / "video.mp4").shape == (4, 32, 32, 3)  # clip 0 without its hand-off frame
    assert json.loads((out / "state/clip_0000.json").read_text())["cursor"] == 1
    _svi_generate(*common, "resume=true", cwd=tmp_path)
    assert read_mp4(out / "video.mp4").shape == (9, 32, 32, 3)  # + all 5 frames of the last clip
    assert (out / "clips/clip_0001.mp4").exists() and (out / "state/clip_0001.json").exists()


def _official_lora(path: Path) -> Path:
    transformer = make_tiny_stack(["transformer"]).transformer
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i, block in enumerate(transformer.blocks):
        for name, layer in (("self_attn.q", block.attn1.to_q), ("cross_attn.o", block.attn2.to_out[0]),
                            ("ffn.0", block.ffn.net[0].proj)):
            sd[f"pipe.dit.blocks.{i}.{name}.lora_A.default.weight"] = torch.randn(4, layer.in_features, generator=g)
            sd[f"pipe.dit.blocks.{i}.{name}.lora_B.default.weight"] = torch.randn(layer.out_features, 4, generator=g)
    sd["dwpose_embedding.0.weight"] = torch.zeros(2)
    save_file(sd, str(path))
    return path


@pytest.mark.slow
def test_lora_sampler_handoff_and_condition_switches(image_file, prompt_file, tmp_path):
    lora = _official_lora(tmp_path / "svi-film.safetensors")
    common = [*FAST, f"image={image_file}", f"prompts={prompt_file}", "num_clips=2"]
    _svi_generate(*common, f"out={tmp_path / 'film'}", "condition=film", "num_frames=9", "handoff=latent",
                  f"lora.path={lora}", cwd=tmp_path)
    film = read_mp4(tmp_path / "film/video.mp4")
    assert film.shape == (2 * (9 - 5) + 5, 32, 32, 3)
    carry = torch.load(tmp_path / "film/state/carry_0001.pt", weights_only=True)
    assert carry["motion"].shape[0] == 5 and carry["latents"].shape[2] == 2  # K = 5 -> T_K = 2 latent frames

    base = _svi_generate(*common, f"out={tmp_path / 'base'}", "sampler=base", f"lora.path={lora}", cwd=tmp_path)
    assert "lora.path is ignored" in base.stderr
    _svi_generate(*common, f"out={tmp_path / 'svi'}", f"lora.path={lora}", cwd=tmp_path)
    with_lora, without = read_mp4(tmp_path / "svi/video.mp4"), read_mp4(tmp_path / "base/video.mp4")
    assert with_lora.shape == without.shape == (9, 32, 32, 3)
    assert (with_lora.astype(int) - without).__abs__().mean() > 1  # the LoRA changed the frames
    config = json.loads((tmp_path / "svi/state/config.json").read_text())["config"]
    assert config["lora"]["sha256"] and config["sampler"]["name"] == "svi"


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(image_file, prompt_file, tmp_path):
    import signal
    import time

    common = [*FAST, "flow.num_inference_steps=8", f"image={image_file}", f"prompts={prompt_file}", "num_clips=3"]
    _svi_generate(*common, f"out={tmp_path / 'whole'}", cwd=tmp_path)

    out = tmp_path / "killed"
    script = Path(sys.executable).with_name("svi-generate")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "svi.generate"]
    proc = subprocess.Popen([*cmd, *common, f"out={out}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "state/clip_0000.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind: mid clip 1 (or wherever it got to)
    proc.wait()
    assert (out / "state/clip_0000.json").exists() and not (out / "state/clip_0002.json").exists()
    _svi_generate(*common, f"out={out}", "resume=true", cwd=tmp_path)
    killed, whole = read_mp4(out / "video.mp4"), read_mp4(tmp_path / "whole/video.mp4")
    assert killed.shape == whole.shape == (3 * 4 + 1, 32, 32, 3)
    assert (killed == whole).all()
