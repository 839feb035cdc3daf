"""The GPU benchmark scripts at smoke size on the CPU: they run end to end and print their fields."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_full_size as gfs  # noqa: E402


def _run(*args: str, timeout: float = 600) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_forward_flops_formula():
    # Wan 2.1 14B on 81x480x832: 1.686 PFLOP; the attention-score term alone is 40 x 4 L^2 d
    flops = gfs.wan_forward_flops(gfs.MODELS["14b"][0], (16, 21, 60, 104), 512, 257)
    assert flops == pytest.approx(1.686e15, rel=1e-3)
    L, d = 21 * 30 * 52, 5120
    assert 40 * 4 * L * L * d / flops == pytest.approx(0.52, abs=0.01)
    assert gfs.latent_shape("5b", 121, 704, 1280) == (48, 31, 44, 80)
    five = gfs.wan_forward_flops(gfs.MODELS["5b"][0], (48, 31, 44, 80), 512, 0, per_token_timesteps=True)
    assert five == pytest.approx(0.521e15, rel=1e-2)


def test_selective_checkpointing_recomputes_every_nth_block():
    import torch

    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dit = WanTransformer3DModel(**{**gfs.MODELS["smoke"][0], "num_layers": 4})
    dit.enable_gradient_checkpointing()
    seen = []
    full = dit._gradient_checkpointing_func
    dit._gradient_checkpointing_func = lambda block, *a, **k: (seen.append(block), full(block, *a, **k))[1]
    gfs.selective_checkpointing(dit, 2)
    x = torch.randn(1, 36, 2, 4, 4, )
    text = torch.randn(1, 512, 4096, )
    img = torch.randn(1, 257, 1280, )
    dit.requires_grad_(True)
    dit(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text,
        encoder_hidden_states_image=img, return_dict=False)[0].float().sum().backward()
    assert [list(dit.blocks).index(b) for b in seen] == [0, 2]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smoke", "smoke_a14b", "smoke_5b"])
def test_gpu_full_size_smoke(model):
    out = _run("benchmarks/gpu_full_size.py", "--model", model, "--device", "cpu", "--frames", "17", "--height", "64",
               "--width", "64", "--steps", "1", "--warmup", "1", "--budget-gib", "0.01", "--capacity", "4",
               "--peak-tflops", "1", "--selective-checkpointing", "2", "--attention-backend", "native")
    assert "attention_backend=native compile=False checkpointing=every 2" in out
    assert "GFLOP" in out and "MFU" in out and "ERFT / plain" in out
    if model == "smoke_a14b":
        assert "[high-noise expert]" in out and "[low-noise expert]" in out and "2 experts" in out
    if model == "smoke_5b":
        assert "latent (48, 5, 4, 4)" in out


@pytest.mark.slow
def test_gpu_generate_smoke():
    out = _run("benchmarks/gpu_generate.py", "--smoke", "--steps", "2", "--warmup-steps", "1", "--modes", "none", "fp8")
    lines = out.splitlines()
    assert "ratio" in lines[-3] and "peak_rss_gib" in lines[-3]
    assert lines[-2].startswith("none") and lines[-1].startswith("fp8") and "error" not in out
