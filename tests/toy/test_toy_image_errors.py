"""The toy package's image-error sources (img_source=toy_*), behind the same interface as the paper's window."""

from types import SimpleNamespace

import pytest
import torch

from svi.conditions import Condition
from svi.erft import ImageErrorRequest, MemoryConfig, ReplayMemory
from svi.flow import FlowConfig, inference_sigmas
from svi.toy.clips import TEST, toy_videos
from svi.erft.image_error import WindowImageError
from svi.toy.image_errors import (LastFramesImageError, MotionFramesImageError, RolloutImageError, SelfImageError,
                                  last_frames_map)

SHAPE = (2, 16, 5, 4, 4)


def _tensors(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(2, 20, 5, 4, 4, generator=g)


def _request(x0, y, select, velocity, num_frames=2, memory=None, seed=0) -> ImageErrorRequest:
    return ImageErrorRequest(x0=x0, y=y, select=torch.tensor(select), grid=torch.zeros(len(select), dtype=torch.long),
                             num_frames=num_frames, memory=memory, velocity=velocity,
                             generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("K", [1, 5])
def test_last_frames_map_is_the_condition_error_a_clip_error_causes(toy_stack, K):
    """A clip error, mapped, equals the change it makes to the next clip's condition latent."""
    videos = toy_videos(2, 9, seed=5, split=TEST) * 0.5  # away from the clamp at +-1
    z = toy_stack.encode_video(videos)  # (2, 64, 3, 8, 8)
    e = 0.05 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    condition = Condition(name="c", num_motion_frames=K, ref_pad_num=-1 if K == 1 else 0)
    ref = videos[:, :, 0]
    y_clean = condition.build_y(toy_stack, toy_stack.decode_latents(z)[:, :, -K:], ref, 9)
    y_err = condition.build_y(toy_stack, toy_stack.decode_latents(z + e)[:, :, -K:], ref, 9)
    to_condition = last_frames_map(toy_stack, K, "toy_last_frames")
    for i in range(2):
        got = to_condition(e[i])
        assert got.shape == z.shape[1:]
        assert torch.allclose(got, (y_err - y_clean)[i, 4:], atol=1e-4)
    # K = 1: only latent frame 0 (the motion frame, repeated 4x in Wan's layout) carries error, the same in
    # each of its four 16-channel blocks, which a random window of the stored error is not
    if K == 1:
        got = to_condition(e[0])
        assert got[:, 1:].abs().max() < 1e-5
        blocks = got[:, 0].reshape(4, 16, 8, 8) * torch.tensor(toy_stack.vae.config.latents_std).view(4, 16, 1, 1)
        assert torch.allclose(blocks[0], blocks[3], atol=1e-5) and blocks[0].abs().max() > 1e-3


def test_toy_sources_need_a_linear_autoencoder(tiny_stack):
    """The Wan VAE is not linear: every toy source refuses it when bound, naming the fix."""
    stack = SimpleNamespace(require=lambda name, why: torch.nn.Identity())
    with pytest.raises(ValueError, match="linear decode"):
        last_frames_map(stack, 1, "toy_self")
    sigmas = inference_sigmas(50, 5.0)
    for source in (SelfImageError(), RolloutImageError(), LastFramesImageError()):
        with pytest.raises(ValueError, match="img_source=toy_.*needs an autoencoder with a linear decode.*window"):
            source.bind(tiny_stack, Condition(), FlowConfig(), sigmas)


def test_last_frames_source_maps_a_stored_error(toy_stack):
    memory = ReplayMemory(MemoryConfig(num_grids=50, capacity=4))
    stored = 0.05 * torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    memory.vid.add(7, stored)
    source = LastFramesImageError(scale=2.0)
    source.bind(toy_stack, Condition(num_motion_frames=1), FlowConfig(), inference_sigmas(50, 3.0))
    assert source.ready(memory.reader()) and not source.ready(ReplayMemory(MemoryConfig()).reader())
    x0 = torch.zeros(2, 64, 3, 8, 8)
    req = _request(x0, torch.zeros(2, 68, 3, 8, 8), [False, True], None, num_frames=1, memory=memory.reader())
    e_img = source(req)
    want = 2.0 * last_frames_map(toy_stack, 1, "toy_last_frames")(stored)[:, :1]
    assert torch.all(e_img[0] == 0) and torch.allclose(e_img[1], want, atol=1e-6)


def test_self_source_is_the_models_own_current_error_on_the_sample():
    """E_img is this sample's own one-step clean-end error, through the map; it needs no bank."""
    x0, y = _tensors(3)
    seen = []
    bias = torch.linspace(-0.2, 0.2, 5).view(1, 1, 5, 1, 1)  # a different error in every latent frame

    def oracle(x_s, y_in, t):  # knows the clean latent: predicts it exactly, up to `bias`
        seen.append((y_in.clone(), t.clone()))
        s = (t / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_s - (x0 + bias)) / s

    source = SelfImageError(max_sigma=0.5, scale=0.5)
    source.grid_sigmas = inference_sigmas(50, 3.0)  # what bind sets, without an autoencoder
    source.buckets = torch.nonzero(source.grid_sigmas <= 0.5).flatten()
    source.img_map = lambda e: e[:, -2:].flip(1)  # stands in for the last-frames map
    e_img = source(_request(x0, y, [True, False], oracle))
    assert e_img.shape == (2, 16, 2, 4, 4)
    assert torch.allclose(e_img[0], 0.5 * bias[0, :, [4, 3]].expand(16, 2, 4, 4), atol=1e-5)  # mapped, scaled
    assert torch.all(e_img[1] == 0)  # not selected
    y_in, t = seen[0]
    assert torch.equal(y_in, y)  # the sample's own condition
    assert torch.all(t / 1000.0 <= 0.5 + 1e-6)  # noise levels from the allowed buckets
    assert source.ready(ReplayMemory(MemoryConfig()).reader())  # an empty bank does not matter
    seen.clear()
    assert torch.all(source(_request(x0, y, [False, False], oracle)) == 0) and not seen  # nothing selected: no forward


def test_rollout_source_is_the_error_of_the_clip_the_model_samples():
    """The sampler's whole trajectory from noise on the sample's own condition; the generated clip's error."""
    x0, y = _tensors(4)
    seen = []
    bias = torch.linspace(-0.3, 0.3, 5).view(1, 1, 5, 1, 1)

    def oracle(x_s, y_in, t):  # predicts x0 + bias at every step: Euler then lands exactly on x0 + bias
        seen.append((y_in.clone(), t.clone()))
        s = (t / 1000.0).view(-1, 1, 1, 1, 1)
        return (x_s - (x0 + bias)) / s

    source = RolloutImageError(steps=6, scale=2.0)
    sigmas = inference_sigmas(6, 3.0)
    source.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # what bind sets for steps=6, shift 3
    source.img_map = lambda e: e[:, -2:].flip(1)
    e_img = source(_request(x0, y, [False, True], oracle))
    assert torch.all(e_img[0] == 0)  # not selected
    assert torch.allclose(e_img[1], 2.0 * bias[0, :, [4, 3]].expand(16, 2, 4, 4), atol=1e-4)
    assert len(seen) == 6 and all(torch.equal(y_in, y) for y_in, _ in seen)  # one forward per step, own condition
    assert torch.allclose(torch.stack([t[0] for _, t in seen]), sigmas * 1000.0)  # the sampler's schedule
    with pytest.raises(ValueError, match="img_source.steps"):
        RolloutImageError(steps=-1)


def test_rollout_source_binds_the_samplers_schedule(toy_stack):
    source = RolloutImageError()  # steps 0: the flow's sampling steps
    source.bind(toy_stack, Condition(num_motion_frames=1), FlowConfig(shift=3.0, num_inference_steps=4),
                inference_sigmas(50, 3.0))
    assert torch.allclose(source.sigmas[:-1], inference_sigmas(4, 3.0)) and source.sigmas[-1] == 0


def _handoff_batch(toy_stack, K=2, F=5, n=3, prev_clip=True):
    """Raw toy clips with the clip before each (data.prev_clip=true), collated, and their true condition."""
    from svi.toy.clips import ToyClips

    condition = Condition(num_motion_frames=K)
    data = ToyClips(num_frames=F, length=n, seed=3, condition=condition, prev_clip=prev_clip)
    items = [data[i] for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("video", "prev_video", "ref_image")}
    y = condition.build_y(toy_stack, batch["video"][:, :, :K], batch["ref_image"], F)
    return condition, batch, y, toy_stack.encode_video(batch["video"])


def test_toy_clips_with_the_previous_clip_end_where_the_clip_starts(toy_stack):
    from svi.toy.clips import ToyClips

    condition, batch, _, _ = _handoff_batch(toy_stack)
    # the previous clip's last K frames are the clip's K motion frames, exactly
    assert torch.equal(batch["prev_video"][:, :, -2:], batch["video"][:, :, :2])
    assert not torch.equal(batch["prev_video"][:, :, :2], batch["video"][:, :, :2])  # the sprites moved
    # the option shifts the clip by F - K frames and adds the key; without it the items are as before
    plain = ToyClips(num_frames=5, length=3, seed=3, condition=condition)[1]
    assert "prev_video" not in plain
    assert torch.equal(plain["video"][:, 3:], batch["video"][1][:, :2])  # frames start+3, start+4
    with pytest.raises(ValueError, match="prev_clip needs the condition"):
        ToyClips(num_frames=5, prev_clip=True)
    # N clips before: a chain of F + (N - 1)(F - K) frames ending with the motion frames; the clip starts
    # N (F - K) frames later, so its frames are the one-clip item's, 3 frames on
    _, two, _, _ = _handoff_batch(toy_stack, prev_clip=2)
    chain = two["prev_video"]
    assert chain.shape[2] == 8 and torch.equal(chain[:, :, -2:], two["video"][:, :, :2])
    assert torch.equal(chain[:, :, :5], batch["prev_video"]) and torch.equal(chain[:, :, 3:], batch["video"])
    with pytest.raises(ValueError, match="data.prev_clip must be"):
        ToyClips(num_frames=5, prev_clip=-1, condition=condition)


def test_handoff_source_is_the_change_one_handoff_makes_to_the_condition(toy_stack):
    """The model samples the previous clip from its true condition; its last K frames, through 8 bits, replace
    the motion frames: E_img is the change of the condition latent. A model that writes the true previous clip
    leaves only the autoencoder's and the 8 bits' error; the reference copies never carry any."""
    from svi.toy.image_errors import HandoffImageError

    condition, batch, y, x0 = _handoff_batch(toy_stack)
    prev_true = toy_stack.encode_video(batch["prev_video"])
    seen = []

    def oracle(target):
        def velocity(x_s, y_in, t):  # Euler lands exactly on `target`
            seen.append(y_in.clone())
            return (x_s - target) / (t / 1000.0).view(-1, 1, 1, 1, 1)
        return velocity

    source = HandoffImageError(steps=3)
    source.bind(toy_stack, condition, FlowConfig(shift=3.0, num_inference_steps=10), inference_sigmas(50, 3.0))
    assert len(source.sigmas) == 4 and source.ready(None)  # no bank needed
    req = lambda v, sel, scale=1.0: ImageErrorRequest(  # noqa: E731
        x0=x0, y=y, select=torch.tensor(sel), grid=torch.zeros(3, dtype=torch.long), num_frames=2, memory=None,
        velocity=v, generator=torch.Generator().manual_seed(0), batch=batch)
    exact = source(req(oracle(prev_true), [True, True, False]))
    assert exact.shape == (3, 64, 2, 8, 8) and torch.all(exact[2] == 0)  # not selected
    assert len(seen) == 3  # one forward per sampling step, on the previous clip's true condition
    assert torch.allclose(seen[0], condition.build_y(toy_stack, batch["prev_video"][:, :, :2], batch["ref_image"], 5))
    # a wrong previous clip: a larger error, confined to the motion frames' channels (frame-separable
    # latent: latent 0 = motion frame 0 four times, latent 1 = [motion frame 1 | 3 reference copies])
    wrong = prev_true + 0.5 * torch.randn(prev_true.shape, generator=torch.Generator().manual_seed(1))
    err = source(req(oracle(wrong), [True, True, True]))
    rms = lambda e: float(e.pow(2).mean().sqrt())  # noqa: E731
    assert rms(exact[:2]) < 0.05 < rms(err)
    assert err[:, 16:, 1].abs().max() < 1e-5 < err[:, :16, 1].abs().max()
    # it is exactly the condition the next clip would get from those frames
    frames = ((toy_stack.decode_latents(wrong).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    y_handed = condition.build_y(toy_stack, frames[:, :, -2:], batch["ref_image"], 5)
    assert torch.allclose(err, (y_handed - y)[:, 4:, :2], atol=1e-4)
    half = HandoffImageError(steps=3, scale=0.5)
    half.bind(toy_stack, condition, FlowConfig(shift=3.0), inference_sigmas(50, 3.0))
    assert torch.allclose(half(req(oracle(wrong), [True, True, True])), 0.5 * err, atol=1e-5)
    # two chained hand-offs: the clip two before is sampled from its true condition, the clip before from the
    # condition its handed-over frames make; an oracle writing each true clip leaves only the round trip's
    # error
    _, batch2, _, _ = _handoff_batch(toy_stack, prev_clip=2)
    chain = toy_stack.encode_video(batch2["prev_video"][:, :, :5]), prev_true
    calls = []

    def chained(x_s, y_in, t):
        calls.append(y_in.clone())
        target = chain[(len(calls) - 1) // 3]
        return (x_s - target) / (t / 1000.0).view(-1, 1, 1, 1, 1)

    two = HandoffImageError(steps=3, handoffs=2)
    two.bind(toy_stack, condition, FlowConfig(shift=3.0), inference_sigmas(50, 3.0))
    req2 = ImageErrorRequest(x0=x0, y=y, select=torch.tensor([True, True, True]),
                             grid=torch.zeros(3, dtype=torch.long), num_frames=2, memory=None,
                             velocity=chained, generator=torch.Generator().manual_seed(0), batch=batch2)
    err2 = two(req2)
    assert len(calls) == 6 and rms(err2) < 0.05
    y_first = condition.build_y(toy_stack, batch2["prev_video"][:, :, :2], batch["ref_image"], 5)
    assert torch.allclose(calls[0], y_first)
    first = ((toy_stack.decode_latents(chain[0]).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    y_second = condition.build_y(toy_stack, first[:, :, -2:], batch["ref_image"], 5)
    assert torch.allclose(calls[3], y_second, atol=1e-5)
    with pytest.raises(ValueError, match="handoffs=2 needs the 2 clips.*8 frames.*holds 5.*data.prev_clip=2"):
        two(req(oracle(wrong), [True, True, True]))
    # placement=other: the same errors, each on the next sample's row; unselected rows still get none
    other = HandoffImageError(steps=3, placement="other")
    other.bind(toy_stack, condition, FlowConfig(shift=3.0), inference_sigmas(50, 3.0))
    moved = other(req(oracle(wrong), [True, False, True]))
    assert torch.allclose(moved[0], err[1], atol=1e-5) and torch.allclose(moved[2], err[0], atol=1e-5)
    assert torch.all(moved[1] == 0) and not torch.allclose(moved[0], err[0], atol=1e-3)
    # placement=mix: each row is its own error or the next sample's, by a coin from the training generator;
    # own_fraction 1 and 0 are the two placements
    def mixed(fraction, seed):
        source = HandoffImageError(steps=3, placement="mix", own_fraction=fraction)
        source.bind(toy_stack, condition, FlowConfig(shift=3.0), inference_sigmas(50, 3.0))
        request = req(oracle(wrong), [True, True, True])
        request.generator = torch.Generator().manual_seed(seed)
        return source(request)
    assert torch.allclose(mixed(1.0, 0), err, atol=1e-5)
    assert torch.allclose(mixed(0.0, 0), err.roll(-1, dims=0), atol=1e-5)
    picks = []
    for seed in range(8):
        rows = mixed(0.5, seed)
        for i in range(3):
            own, nxt = (torch.allclose(rows[i], e, atol=1e-5) for e in (err[i], err[(i + 1) % 3]))
            assert own != nxt  # exactly one of the two
            picks.append(own)
    assert 0 < sum(picks) < len(picks)  # both places occur
    assert torch.equal(mixed(0.5, 5), mixed(0.5, 5))  # the same generator, the same coins


def test_handoff_source_refuses_what_it_cannot_do(toy_stack):
    from svi.toy.image_errors import HandoffImageError

    with pytest.raises(ValueError, match="img_source.steps"):
        HandoffImageError(steps=-1)
    with pytest.raises(ValueError, match="quantize"):
        HandoffImageError(quantize="floor")
    with pytest.raises(ValueError, match="img_source.handoffs must be >= 1"):
        HandoffImageError(handoffs=0)
    with pytest.raises(ValueError, match="placement.*'own', 'other', 'mix'"):
        HandoffImageError(placement="elsewhere")
    with pytest.raises(ValueError, match="img_source.own_fraction.*\\[0, 1\\].*1.5"):
        HandoffImageError(placement="mix", own_fraction=1.5)
    talk = SimpleNamespace(name="talk", extra_fields=("audio",), num_motion_frames=1)
    with pytest.raises(ValueError, match="talk.*audio.*img_source=window"):
        HandoffImageError().bind(toy_stack, talk, FlowConfig(), inference_sigmas(50, 3.0))
    source = HandoffImageError()
    source.bind(toy_stack, Condition(num_motion_frames=2), FlowConfig(), inference_sigmas(50, 3.0))
    x0, y = torch.zeros(2, 64, 2, 8, 8), torch.zeros(2, 68, 2, 8, 8)
    with pytest.raises(ValueError, match="data.prev_clip=true"):
        source(_request(x0, y, [True, False], None))  # a batch without the previous clip
    other = HandoffImageError(placement="other")
    other.bind(toy_stack, Condition(num_motion_frames=2), FlowConfig(), inference_sigmas(50, 3.0))
    req = _request(x0[:1], y[:1], [True], None)
    req.batch = {"prev_video": torch.zeros(1, 3, 5, 32, 32), "ref_image": torch.zeros(1, 3, 32, 32)}
    with pytest.raises(ValueError, match="batch of at least 2.*data.batch_size"):
        other(req)


def test_motion_frames_source_keeps_the_papers_error_on_the_motion_frames_only(toy_stack):
    """The paper's window error, minus its part on the reference copies: the motion frames keep the window's
    error (up to float rounding), the later pixel frames none; keeping every frame gives the window source bit
    for bit."""
    assert toy_stack.vae.config.frame_separable
    memory = ReplayMemory(MemoryConfig(num_grids=50, capacity=4))
    for k in range(3):
        memory.vid.add(5 + k, 0.3 * torch.randn(64, 2, 8, 8, generator=torch.Generator().manual_seed(k)))
    condition, sigmas = Condition(num_motion_frames=2, ref_pad_num=-1), inference_sigmas(50, 3.0)
    req = lambda: _request(torch.zeros(3, 64, 2, 8, 8), torch.zeros(3, 68, 2, 8, 8), [True, False, True], None,
                           num_frames=2, memory=memory.reader(), seed=4)
    window = WindowImageError()
    window.bind(toy_stack, condition, FlowConfig(), sigmas)
    e_win = window(req())
    source = MotionFramesImageError()  # frames 0 = the K = 2 motion frames
    source.bind(toy_stack, condition, FlowConfig(), sigmas)
    e_img = source(req())
    assert e_img.shape == e_win.shape and torch.all(e_img[1] == 0)
    std = torch.tensor(toy_stack.vae.config.latents_std).view(1, -1, 1, 1, 1)
    pix, pix_win = (toy_stack.vae.linear_decode(e * std) for e in (e_img, e_win))  # (3, 3, 5, 32, 32)
    assert torch.allclose(pix[:, :, :2], pix_win[:, :, :2], atol=1e-5) and pix_win[:, :, :2].abs().max() > 0.01
    assert pix[:, :, 2:].abs().max() < 1e-5 and pix_win[:, :, 2:].abs().max() > 0.01
    # latent 0 (frame 0) and frame 1's channels of latent 1 untouched; the reference copies' channels zero
    assert torch.allclose(e_img[:, :, 0], e_win[:, :, 0], atol=1e-6)
    assert torch.allclose(e_img[:, :16, 1], e_win[:, :16, 1], atol=1e-5) and e_img[:, 16:, 1].abs().max() < 1e-5
    every = MotionFramesImageError(frames=5)
    every.bind(toy_stack, condition, FlowConfig(), sigmas)
    assert torch.equal(every(req()), e_win)
    one = MotionFramesImageError(frames=3)  # the motion frames and one reference copy
    one.bind(toy_stack, condition, FlowConfig(), sigmas)
    e3 = one(req())
    assert torch.allclose(e3[:, :32, 1], e_win[:, :32, 1], atol=1e-5) and e3[:, 32:, 1].abs().max() < 1e-5


def test_motion_frames_source_refuses_what_it_cannot_do(tiny_stack):
    with pytest.raises(ValueError, match="img_source.frames .* >= 0"):
        MotionFramesImageError(frames=-1)
    with pytest.raises(ValueError, match="frame-separable linear autoencoder.*img_source=window"):
        MotionFramesImageError().bind(tiny_stack, Condition(), FlowConfig(), inference_sigmas(50, 5.0))
