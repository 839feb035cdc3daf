"""The method itself: injection, error-recycling target, bidirectional errors, selective resampling."""

import math
from types import SimpleNamespace

import pytest
import torch

from svi.erft import (Injection, InjectionConfig, bidirectional_errors, draw_injection, erft_step, gate_on_memory,
                      img_buckets, inject, recycle_target, rollout_image_error, sample_errors, self_image_error)
from svi.erft.memory import ReplayMemory
from svi.flow import add_noise

SHAPE = (2, 16, 5, 4, 4)


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    y = torch.randn(2, 20, 5, 4, 4, generator=g)
    return x0, noise, y


def test_errors_are_zero_when_prediction_equals_target():
    x0, noise, y = _tensors()
    sigma = torch.tensor([0.3, 0.8])
    zero = torch.zeros(SHAPE)
    e_img = torch.zeros(2, 16, 3, 4, 4)
    perfect = lambda x_s, y_t: recycle_target(noise, x0)  # noqa: E731
    res = erft_step(perfect, x0, noise, y, sigma, zero, zero, e_img)
    assert torch.all(res.loss == 0)
    assert torch.all(res.e_vid == 0) and torch.all(res.e_noi == 0)


def test_bidirectional_errors_match_one_step_integration():
    g = torch.Generator().manual_seed(1)
    v_hat, v_rcy, x_s = (torch.randn(SHAPE, generator=g) for _ in range(3))
    sigma = torch.tensor([0.25, 0.9])
    s = sigma.view(-1, 1, 1, 1, 1)
    e_vid, e_noi = bidirectional_errors(v_hat, v_rcy, sigma)
    # Integrate to each end with the prediction and with the target; the errors are the differences.
    assert torch.allclose(e_vid, (x_s - s * v_hat) - (x_s - s * v_rcy), atol=1e-6)
    assert torch.allclose(e_noi, (x_s + (1 - s) * v_hat) - (x_s + (1 - s) * v_rcy), atol=1e-6)
    assert torch.allclose(e_vid, -s * (v_hat - v_rcy)) and torch.allclose(e_noi, (1 - s) * (v_hat - v_rcy))


def test_recycle_target_points_to_the_clean_latent():
    x0, noise, y = _tensors()
    g = torch.Generator().manual_seed(2)
    e_vid, e_noi = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    e_img = torch.randn(2, 16, 3, 4, 4, generator=g)
    sigma = torch.tensor([0.4, 0.7])
    seen = {}

    def spy(x_s, y_t):
        seen["x_s"], seen["y"] = x_s, y_t
        return torch.zeros_like(x_s)

    res = erft_step(spy, x0, noise, y, sigma, e_vid, e_noi, e_img)
    # The model input uses the corrupted latent and noise ...
    assert torch.allclose(seen["x_s"], add_noise(x0 + e_vid, noise + e_noi, sigma), atol=1e-6)
    # ... but the target is X~_noi - X_vid (clean), so with v̂ = 0 the loss is |noise + E_noi - x0|^2.
    expected = (noise + e_noi - x0).pow(2).flatten(1).mean(1)
    assert torch.allclose(res.loss, expected, atol=1e-5)
    # E_img lands on condition-latent channels 4: of the first y_error_num latent frames only.
    assert torch.allclose(seen["y"][:, 4:, :3], y[:, 4:, :3] + e_img)
    assert torch.equal(seen["y"][:, :4], y[:, :4])  # mask untouched
    assert torch.equal(seen["y"][:, 4:, 3:], y[:, 4:, 3:])


def test_inject_does_not_modify_inputs_in_place():
    x0, noise, y = _tensors()
    y0 = y.clone()
    inject(x0, noise, y, torch.ones(SHAPE), torch.ones(SHAPE), torch.ones(2, 16, 1, 4, 4))
    assert torch.equal(y, y0)


def test_injection_frequencies_match_probabilities():
    cfg = InjectionConfig(p_noi=0.3, p_vid=0.6, p_img=0.8, p_clean=0.25)
    n = 40_000
    inj = draw_injection(cfg, n, torch.Generator().manual_seed(0))
    for name, p in (("noi", 0.3), ("vid", 0.6), ("img", 0.8)):
        expected = p * (1 - 0.25)  # independent draw, switched off by the clean coin
        tol = 4 * math.sqrt(expected * (1 - expected) / n)
        assert abs(getattr(inj, name).float().mean().item() - expected) < tol, name
    clean = 0.25 + 0.75 * 0.7 * 0.4 * 0.2  # clean coin, or all three draws false
    assert abs(inj.clean.float().mean().item() - clean) < 4 * math.sqrt(clean * (1 - clean) / n)
    # the three draws are independent of each other
    both = (inj.vid & inj.img).float().mean().item()
    assert abs(both - 0.6 * 0.8 * 0.75) < 0.02


def test_disabled_injection_and_seeded_reproducibility():
    off = draw_injection(InjectionConfig(enabled=False), 100, torch.Generator().manual_seed(0))
    assert off.clean.all()
    cfg = InjectionConfig()
    a = draw_injection(cfg, 50, torch.Generator().manual_seed(7))
    b = draw_injection(cfg, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a.vid, b.vid) and torch.equal(a.noi, b.noi) and torch.equal(a.img, b.img)


def test_invalid_injection_config_is_rejected():
    with pytest.raises(ValueError, match="p_img"):
        InjectionConfig(p_img=1.5)
    with pytest.raises(ValueError, match="y_error_num"):
        InjectionConfig(y_error_num=0)


def _memory_with(entries_vid: dict, entries_noi: dict):
    mem = ReplayMemory(num_buckets=50, capacity=8)
    for bucket, values in entries_vid.items():
        for v in values:
            mem.vid.add(bucket, torch.full((16, 5, 4, 4), float(v)))
    for bucket, values in entries_noi.items():
        for v in values:
            mem.noi.add(bucket, torch.full((16, 5, 4, 4), float(v)))
    return mem


def test_each_bank_gates_its_own_injection():
    mem = _memory_with({3: [1.0]}, {})  # video bank has bucket 3; noise bank is empty
    every = torch.ones(2, dtype=torch.bool)
    inj = gate_on_memory(Injection(vid=every, noi=every.clone(), img=every.clone()), mem, torch.tensor([3, 4]))
    assert inj.vid.tolist() == [True, False]  # bucket 4 is empty
    assert inj.noi.tolist() == [False, False]  # no noise errors at all (not tied to the video bank)
    assert inj.img.tolist() == [True, True]  # E_img may come from any bucket
    assert gate_on_memory(inj, None, torch.tensor([3, 4])).clean.all()


def test_selective_resampling_uses_the_right_buckets():
    mem = _memory_with({3: [3.0], 7: [7.0]}, {3: [-3.0], 7: [-7.0]})
    every = torch.ones(2, dtype=torch.bool)
    inj = Injection(vid=every, noi=every.clone(), img=torch.tensor([False, False]))
    like = torch.zeros(SHAPE)
    e_vid, e_noi, e_img = sample_errors(mem, torch.tensor([7, 3]), inj, like, InjectionConfig(),
                                        torch.Generator().manual_seed(0))
    assert torch.all(e_vid[0] == 7) and torch.all(e_vid[1] == 3)
    assert torch.all(e_noi[0] == -7) and torch.all(e_noi[1] == -3)
    assert e_img.shape == (2, 16, 3, 4, 4) and torch.all(e_img == 0)


def test_image_error_comes_from_all_buckets_as_a_temporal_window():
    mem = ReplayMemory(num_buckets=50, capacity=8)
    ramp = torch.arange(5.0).view(1, 5, 1, 1).expand(16, 5, 4, 4)  # latent frame k holds value k
    mem.vid.add(0, ramp)
    mem.vid.add(49, ramp + 100)
    inj = Injection(vid=torch.zeros(1, dtype=torch.bool), noi=torch.zeros(1, dtype=torch.bool),
                    img=torch.ones(1, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    starts, sources = set(), set()
    for _ in range(200):
        _, _, e_img = sample_errors(mem, torch.tensor([20]), inj, torch.zeros(1, 16, 5, 4, 4),
                                    InjectionConfig(y_error_num=3), g)
        frames = e_img[0, 0, :, 0, 0]
        assert torch.equal(frames - frames[0], torch.tensor([0.0, 1.0, 2.0]))  # consecutive frames
        starts.add(int(frames[0]) % 100)
        sources.add(int(frames[0]) // 100)
    assert starts == {0, 1, 2}  # every window position of a 5-frame error
    assert sources == {0, 1}  # bucket 20 is empty, yet both stored buckets are used


def test_image_error_can_be_restricted_to_low_noise_buckets():
    from svi.flow import inference_sigmas

    sigmas = inference_sigmas(50, 3.0)  # descending: bucket 0 is the noisiest
    cfg = InjectionConfig(img_max_sigma=0.5)
    allowed = img_buckets(cfg, sigmas)
    assert allowed.tolist() == [n for n in range(50) if sigmas[n] <= 0.5] and 0 < len(allowed) < 50
    assert img_buckets(InjectionConfig(), sigmas) is None  # 1.0: every bucket (official)
    mem = _memory_with({0: [1.0], 49: [49.0]}, {})  # a high-noise and a low-noise error
    inj = Injection(vid=torch.zeros(1, dtype=torch.bool), noi=torch.zeros(1, dtype=torch.bool),
                    img=torch.ones(1, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    drawn = {int(sample_errors(mem, torch.tensor([0]), inj, torch.zeros(1, 16, 5, 4, 4), cfg, g, allowed)[2][0, 0, 0, 0, 0])
             for _ in range(50)}
    assert drawn == {49}
    only_high = _memory_with({0: [1.0]}, {})  # nothing in the allowed buckets: E_img is gated off
    assert not gate_on_memory(inj, only_high, torch.tensor([0]), allowed).img.any()
    with pytest.raises(ValueError, match="img_max_sigma"):
        InjectionConfig(img_max_sigma=0.0)


def test_image_error_scale_and_map():
    mem = _memory_with({0: [2.0]}, {})
    inj = Injection(vid=torch.ones(1, dtype=torch.bool), noi=torch.zeros(1, dtype=torch.bool),
                    img=torch.ones(1, dtype=torch.bool))
    like, grid = torch.zeros(1, 16, 5, 4, 4), torch.tensor([0])
    e_vid, _, e_img = sample_errors(mem, grid, inj, like, InjectionConfig(img_scale=0.25), torch.Generator())
    assert torch.all(e_img == 0.5) and torch.all(e_vid == 2.0)  # only E_img is scaled
    # img_map replaces the random window: its first y_error_num frames are the image error
    mapped = lambda e: torch.stack([e[:, -1] * 10, e[:, 0]], dim=1)  # noqa: E731
    cfg = InjectionConfig(y_error_num=1)
    e_img = sample_errors(mem, grid, inj, like, cfg, torch.Generator(), img_map=mapped)[2]
    assert e_img.shape == (1, 16, 1, 4, 4) and torch.all(e_img == 20.0)
    with pytest.raises(ValueError, match="img_scale"):
        InjectionConfig(img_scale=-1.0)


def test_self_image_error_is_the_models_own_current_error_on_the_sample():
    """img_source=self: E_img is this sample's own one-step clean-end error, through the image-error map."""
    from svi.flow import inference_sigmas

    x0, _, y = _tensors(3)
    sigmas = inference_sigmas(50, 3.0)
    seen = []
    bias = torch.linspace(-0.2, 0.2, 5).view(1, 1, 5, 1, 1)  # a different error in every latent frame

    def oracle(x_s, y_in, t):  # knows the clean latent: predicts it exactly, up to `bias`
        seen.append((y_in.clone(), t.clone()))
        s = (t / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_s - (x0 + bias)) / s

    last_two = lambda e: e[:, -2:].flip(1)  # noqa: E731  (stands in for the last-frames map)
    cfg = InjectionConfig(y_error_num=2, img_max_sigma=0.5, img_scale=0.5)
    select = torch.tensor([True, False])
    e_img = self_image_error(oracle, x0, y, select, cfg, sigmas, last_two, torch.Generator().manual_seed(0))
    assert e_img.shape == (2, 16, 2, 4, 4)
    want = 0.5 * bias[0, :, [4, 3]].expand(16, 2, 4, 4)  # mapped, then img_scale
    assert torch.allclose(e_img[0], want, atol=1e-5)
    assert torch.all(e_img[1] == 0)  # not selected
    y_in, t = seen[0]
    assert torch.equal(y_in, y)  # the sample's own condition
    assert torch.all(t / 1000.0 <= 0.5 + 1e-6)  # noise level from the allowed E_img buckets
    # the bank is not needed for E_img (it is not drawn from there)
    mem = _memory_with({}, {})
    inj = Injection(vid=torch.zeros(1, dtype=torch.bool), noi=torch.zeros(1, dtype=torch.bool),
                    img=torch.ones(1, dtype=torch.bool))
    assert gate_on_memory(inj, mem, torch.tensor([0]), img_needs_memory=False).img.all()
    assert not gate_on_memory(inj, mem, torch.tensor([0])).img.any()
    # and sample_errors leaves E_img to self_image_error
    full = _memory_with({0: [1.0]}, {})
    assert torch.all(sample_errors(full, torch.tensor([0]), inj, torch.zeros(1, 16, 5, 4, 4),
                                   InjectionConfig(img_source="self"), torch.Generator())[2] == 0)


def test_rollout_image_error_is_the_error_of_the_clip_the_model_samples():
    """img_source=rollout: the sampler's whole trajectory from noise; the generated clip's error, mapped."""
    from svi.flow import inference_sigmas

    x0, _, y = _tensors(4)
    sigmas = inference_sigmas(6, 3.0)
    seen = []
    bias = torch.linspace(-0.3, 0.3, 5).view(1, 1, 5, 1, 1)

    def oracle(x_s, y_in, t):  # predicts x0 + bias at every step: Euler then lands exactly on x0 + bias
        seen.append((y_in.clone(), t.clone()))
        s = (t / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_s - (x0 + bias)) / s

    last_two = lambda e: e[:, -2:].flip(1)  # noqa: E731
    cfg = InjectionConfig(img_source="rollout", y_error_num=2, img_scale=2.0)
    select = torch.tensor([False, True])
    e_img = rollout_image_error(oracle, x0, y, select, cfg, sigmas, last_two, torch.Generator().manual_seed(0))
    assert e_img.shape == (2, 16, 2, 4, 4)
    assert torch.all(e_img[0] == 0)  # not selected
    assert torch.allclose(e_img[1], 2.0 * bias[0, :, [4, 3]].expand(16, 2, 4, 4), atol=1e-4)
    assert len(seen) == 6  # one forward per sampling step, on the sample's own clean condition
    assert all(torch.equal(y_in, y) for y_in, _ in seen)
    assert torch.allclose(torch.stack([t[0] for _, t in seen]), sigmas * 1000.0)  # the sampler's schedule
    with pytest.raises(ValueError, match="img_rollout_steps"):
        InjectionConfig(img_rollout_steps=-1)
    # nothing selected: no forward at all
    seen.clear()
    assert torch.all(rollout_image_error(oracle, x0, y, torch.zeros(2, dtype=torch.bool), cfg, sigmas,
                                         last_two) == 0) and not seen


def test_error_modulation_scales_within_range():
    mem = _memory_with({0: [1.0]}, {})
    inj = Injection(vid=torch.ones(1, dtype=torch.bool), noi=torch.zeros(1, dtype=torch.bool),
                    img=torch.zeros(1, dtype=torch.bool))
    g = torch.Generator().manual_seed(0)
    scales = [sample_errors(mem, torch.tensor([0]), inj, torch.zeros(1, 16, 5, 4, 4),
                            InjectionConfig(error_modulate_factor=0.5), g)[0][0, 0, 0, 0, 0].item()
              for _ in range(100)]
    assert 0.5 <= min(scales) < 0.7 and 1.3 < max(scales) <= 1.5


def test_callback_stores_clean_errors_with_the_configured_probability():
    from svi.callbacks.error_replay import ErrorReplayCallback

    cb = ErrorReplayCallback(num_grids=50, capacity=100_000, warmup_steps=0, clean_buffer_update_prob=0.1,
                             replacement="fifo")
    logged = {}
    module = SimpleNamespace(log=lambda k, v, **kw: logged.__setitem__(k, v))
    trainer = SimpleNamespace(world_size=1, global_rank=0)
    cb.setup(trainer, module, "fit")
    n_clean = n_dirty = 0
    for step in range(40):
        clean = (torch.arange(50) % 2).long()  # half the samples are clean
        out = {"erft": {"e_vid": torch.randn(50, 1, 1, 1, 1), "e_noi": torch.randn(50, 1, 1, 1, 1),
                        "grid": torch.zeros(50, dtype=torch.long), "clean": clean}}
        cb.on_train_batch_end(trainer, module, out, None, step)
        n_clean += 25
        n_dirty += 25
    stored = len(cb.memory.vid)
    expected = n_dirty + 0.1 * n_clean
    assert abs(stored - expected) < 4 * math.sqrt(n_clean * 0.1 * 0.9)
    assert stored > n_dirty  # some clean ones were kept too
    assert logged["erft/bank/stored"] == stored
