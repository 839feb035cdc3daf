"""The method itself: injection, error-recycling target, bidirectional errors, selective resampling."""

import math
from types import SimpleNamespace

import pytest
import torch

from svi.erft import (ImageErrorRequest, Injection, InjectionConfig, MemoryConfig, ReplayMemory, WindowImageError,
                      allowed_buckets, bidirectional_errors, draw_injection, erft_step, gate_on_memory, inject,
                      modulate_rows, recycle_target, sample_errors)
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
    nothing = 0.25 + 0.75 * 0.7 * 0.4 * 0.2  # clean coin, or all three draws false
    got = inj.clean("nothing_injected").float().mean().item()
    assert abs(got - nothing) < 4 * math.sqrt(nothing * (1 - nothing) / n)
    assert abs(inj.clean("coin").float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)  # official
    # the three draws are independent of each other
    both = (inj.vid & inj.img).float().mean().item()
    assert abs(both - 0.6 * 0.8 * 0.75) < 0.02


def test_disabled_injection_and_seeded_reproducibility():
    off = draw_injection(InjectionConfig(enabled=False), 100, torch.Generator().manual_seed(0))
    assert off.nothing_injected.all() and not off.coin.any()
    cfg = InjectionConfig()
    a = draw_injection(cfg, 50, torch.Generator().manual_seed(7))
    b = draw_injection(cfg, 50, torch.Generator().manual_seed(7))
    assert torch.equal(a.vid, b.vid) and torch.equal(a.noi, b.noi) and torch.equal(a.img, b.img)


def test_invalid_injection_config_is_rejected():
    with pytest.raises(ValueError, match="p_img"):
        InjectionConfig(p_img=1.5)
    with pytest.raises(ValueError, match="y_error_num"):
        InjectionConfig(y_error_num=0)
    with pytest.raises(ValueError, match="clean_flag"):
        InjectionConfig(clean_flag="empty")


def _memory_with(entries_vid: dict, entries_noi: dict) -> ReplayMemory:
    mem = ReplayMemory(MemoryConfig(num_grids=50, capacity=8))
    for bucket, values in entries_vid.items():
        for v in values:
            mem.vid.add(bucket, torch.full((16, 5, 4, 4), float(v)))
    for bucket, values in entries_noi.items():
        for v in values:
            mem.noi.add(bucket, torch.full((16, 5, 4, 4), float(v)))
    return mem


def _inj(vid, noi, img, coin=None) -> Injection:
    vid, noi, img = (torch.tensor(v, dtype=torch.bool) for v in (vid, noi, img))
    return Injection(vid=vid, noi=noi, img=img, coin=torch.zeros_like(vid) if coin is None else torch.tensor(coin))


def _request(memory, select, num_frames=3, like=(1, 16, 5, 4, 4), generator=None) -> ImageErrorRequest:
    x0 = torch.zeros(like)
    return ImageErrorRequest(x0=x0, y=torch.zeros(like[0], 20, *like[2:]), select=torch.tensor(select),
                             grid=torch.zeros(like[0], dtype=torch.long), num_frames=num_frames,
                             memory=memory.reader() if memory is not None else None,
                             velocity=lambda *a: pytest.fail("the window source runs no model"),
                             generator=generator or torch.Generator().manual_seed(0))


def test_each_bank_gates_its_own_injection():
    mem = _memory_with({3: [1.0]}, {})  # video bank has bucket 3; noise bank is empty
    window = WindowImageError()
    inj = gate_on_memory(_inj([True, True], [True, True], [True, True]), mem.reader(), torch.tensor([3, 4]),
                         window.ready(mem.reader()))
    assert inj.vid.tolist() == [True, False]  # bucket 4 is empty
    assert inj.noi.tolist() == [False, False]  # no noise errors at all (not tied to the video bank)
    assert inj.img.tolist() == [True, True]  # E_img may come from any bucket
    assert gate_on_memory(inj, None, torch.tensor([3, 4]), True).nothing_injected.all()
    assert not window.ready(_memory_with({}, {}).reader()) and not window.ready(None)


def test_clean_flag_is_the_coin_not_an_empty_bank():
    """Officially a sample is clean (its errors kept 1 time in 10) only when the clean coin fell. With
    `nothing_injected` every sample an empty bank blocked counts as clean too, which starves the banks
    while they fill (e.g. without E_img, p_img = 0)."""
    empty = _memory_with({}, {})
    cfg = InjectionConfig(p_img=0.0, p_clean=0.2)
    inj = draw_injection(cfg, 10_000, torch.Generator().manual_seed(0))
    gated = gate_on_memory(inj, empty.reader(), torch.zeros(10_000, dtype=torch.long), False)
    assert gated.nothing_injected.all()  # nothing can be injected yet
    assert gated.clean("nothing_injected").all()
    assert torch.equal(gated.clean("coin"), inj.coin) and 0.18 < gated.clean("coin").float().mean() < 0.22
    assert InjectionConfig().clean_flag == "coin"  # the official rule is the default


def test_selective_resampling_uses_the_right_buckets():
    mem = _memory_with({3: [3.0], 7: [7.0]}, {3: [-3.0], 7: [-7.0]})
    inj = _inj([True, True], [True, True], [False, False])
    e_vid, e_noi = sample_errors(mem.reader(), torch.tensor([7, 3]), inj, torch.zeros(SHAPE), InjectionConfig(),
                                 torch.Generator().manual_seed(0))
    assert torch.all(e_vid[0] == 7) and torch.all(e_vid[1] == 3)
    assert torch.all(e_noi[0] == -7) and torch.all(e_noi[1] == -3)


def test_image_error_comes_from_all_buckets_as_a_temporal_window():
    mem = _memory_with({}, {})
    ramp = torch.arange(5.0).view(1, 5, 1, 1).expand(16, 5, 4, 4)  # latent frame k holds value k
    mem.vid.add(0, ramp)
    mem.vid.add(49, ramp + 100)
    window, g = WindowImageError(), torch.Generator().manual_seed(0)
    starts, sources = set(), set()
    for _ in range(200):
        e_img = window(_request(mem, [True], num_frames=3, generator=g))
        frames = e_img[0, 0, :, 0, 0]
        assert torch.equal(frames - frames[0], torch.tensor([0.0, 1.0, 2.0]))  # consecutive frames
        starts.add(int(frames[0]) % 100)
        sources.add(int(frames[0]) // 100)
    assert starts == {0, 1, 2}  # every window position of a 5-frame error
    assert sources == {0, 1}  # the sample's bucket is empty, yet both stored buckets are used
    assert torch.all(window(_request(mem, [False])) == 0)  # not selected: zero


def test_last_window_option_takes_the_last_frames():
    """`window: last` is the official `use_last_y_error`: the last y_error_num latent frames, always."""
    mem = _memory_with({}, {})
    mem.vid.add(5, torch.arange(5.0).view(1, 5, 1, 1).expand(16, 5, 4, 4))
    last = WindowImageError(window="last")
    for _ in range(20):
        assert last(_request(mem, [True], num_frames=2))[0, 0, :, 0, 0].tolist() == [3.0, 4.0]
    assert last(_request(mem, [True], num_frames=1))[0, 0, :, 0, 0].tolist() == [4.0]
    with pytest.raises(ValueError, match="img_source.window"):
        WindowImageError(window="first")


def test_image_error_can_be_restricted_to_low_noise_buckets():
    from svi.flow import inference_sigmas

    sigmas = inference_sigmas(50, 3.0)  # descending: bucket 0 is the noisiest
    allowed = allowed_buckets(sigmas, 0.5)
    assert allowed.tolist() == [n for n in range(50) if sigmas[n] <= 0.5] and 0 < len(allowed) < 50
    assert allowed_buckets(sigmas, 1.0) is None  # 1.0: every bucket (official)
    low = WindowImageError(max_sigma=0.5)
    low.bind(None, None, None, sigmas)
    mem = _memory_with({0: [1.0], 49: [49.0]}, {})  # a high-noise and a low-noise error
    g = torch.Generator().manual_seed(0)
    drawn = {int(low(_request(mem, [True], generator=g))[0, 0, 0, 0, 0]) for _ in range(50)}
    assert drawn == {49}
    assert not low.ready(_memory_with({0: [1.0]}, {}).reader())  # nothing in the allowed buckets: gated off
    with pytest.raises(ValueError, match="max_sigma"):
        WindowImageError(max_sigma=0.0)


def test_image_error_scale():
    mem = _memory_with({0: [2.0]}, {})
    assert torch.all(WindowImageError(scale=0.25)(_request(mem, [True])) == 0.5)
    with pytest.raises(ValueError, match="scale"):
        WindowImageError(scale=-1.0)


def test_error_modulation_scales_within_range():
    mem = _memory_with({0: [1.0]}, {})
    inj = _inj([True], [False], [False])
    g = torch.Generator().manual_seed(0)
    scales = [sample_errors(mem.reader(), torch.tensor([0]), inj, torch.zeros(1, 16, 5, 4, 4),
                            InjectionConfig(error_modulate_factor=0.5), g)[0][0, 0, 0, 0, 0].item()
              for _ in range(100)]
    assert 0.5 <= min(scales) < 0.7 and 1.3 < max(scales) <= 1.5
    e_img = torch.ones(2, 16, 3, 4, 4)
    out = modulate_rows(e_img, torch.tensor([True, False]), 0.5, g)
    assert torch.all(out[1] == 1) and 0.5 <= float(out[0, 0, 0, 0, 0]) <= 1.5  # only selected rows
    assert modulate_rows(e_img, torch.tensor([True, True]), 0.0, g) is e_img  # f = 0: untouched, no draw


def test_callback_stores_clean_errors_with_the_configured_probability():
    from svi.callbacks.error_replay import ErrorReplayCallback

    cb = ErrorReplayCallback(memory={"num_grids": 50, "capacity": 100_000, "warmup_steps": 0, "replacement": "fifo"},
                             clean_buffer_update_prob=0.1)
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
