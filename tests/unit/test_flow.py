import numpy as np
import pytest
import torch

from svi import flow


def test_shift_matches_formula_and_keeps_endpoints():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    out = flow.shift_sigmas(s, 5.0)
    assert torch.allclose(out, 5 * s / (1 + 4 * s))
    assert out[0] == 0 and out[-1] == 1
    assert torch.all(out >= s)  # shift > 1 moves every step towards noise


def test_training_grid_is_the_official_1000_step_shifted_grid():
    sig = flow.training_sigmas(1000, 5.0)
    assert sig.shape == (1000,)
    assert sig[0] == pytest.approx(1.0)
    assert sig[-1] == pytest.approx(5 * 0.001 / (1 + 4 * 0.001), rel=1e-5)  # sigma 0 itself is excluded
    assert torch.all(sig[:-1] > sig[1:])
    assert (sig > 0.5).float().mean().item() == pytest.approx(0.833, abs=0.01)


def test_inference_sigmas_match_diffusers_scheduler_exactly():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(sigmas=np.linspace(1, 0, 51)[:-1].tolist())
    ours = flow.inference_sigmas(50, 5.0)
    assert torch.allclose(sched.sigmas[:-1].float(), ours, atol=1e-6)
    assert torch.allclose(sched.timesteps.float(), flow.to_timesteps(ours), atol=1e-3)


def test_euler_step_matches_scheduler_step():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=5.0)
    sched.set_timesteps(sigmas=np.linspace(1, 0, 4)[:-1].tolist())
    x, v = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 16, 2, 4, 4)
    expected = sched.step(v, sched.timesteps[0], x, return_dict=False)[0]
    s = sched.sigmas
    assert torch.allclose(flow.euler_step(x, v, s[:1], s[1:2]), expected, atol=1e-6)


def test_add_noise_and_one_step_predictions_invert():
    x0, noise = torch.randn(3, 16, 2, 4, 4), torch.randn(3, 16, 2, 4, 4)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    x = flow.add_noise(x0, noise, sigma)
    v = flow.velocity(x0, noise)
    assert torch.allclose(flow.predict_x0(x, v, sigma), x0, atol=1e-6)
    assert torch.allclose(flow.predict_noise(x, v, sigma), noise, atol=1e-6)


def test_per_frame_sigmas_broadcast_over_frames():
    x0, noise = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    x = flow.add_noise(x0, noise, torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.allclose(x[0, 0, :, 0, 0], torch.tensor([0.0, 0.5, 1.0]))


def test_grid_index_equals_direct_nearest_of_50():
    grid = flow.to_timesteps(flow.inference_sigmas(50, 5.0))
    t = flow.to_timesteps(flow.training_sigmas(1000, 5.0))
    idx = flow.nearest_grid_index(t, grid)
    for i in range(0, 1000, 7):  # direct computation, one by one
        direct = min(range(50), key=lambda k: abs(float(t[i]) - float(grid[k])))
        assert idx[i] == direct
    assert idx.min() == 0 and idx.max() == 49
    assert torch.equal(flow.nearest_grid_index(grid, grid), torch.arange(50))


def test_svi_bell_weights():
    sig = flow.training_sigmas()
    w = flow.loss_weights("svi_bell", sig)
    t = flow.to_timesteps(sig)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert w.min().item() == pytest.approx(0.0, abs=1e-6)
    assert abs(float(t[w.argmax()]) - 500) < 5  # peak at t = 500
    assert torch.equal(flow.loss_weights("none", sig), torch.ones(1000))
    with pytest.raises(ValueError, match="svi_bell"):
        flow.loss_weights("cosmap", sig)


def test_frame_to_token_timesteps_orders_tokens_by_frame():
    t = torch.tensor([[10.0, 20.0]])
    tok = flow.frame_to_token_timesteps(t, latent_height=4, latent_width=6)  # 2x3 tokens per frame
    assert tok.tolist() == [[10.0] * 6 + [20.0] * 6]
