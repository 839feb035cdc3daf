"""The SVI clip sampler's pieces: latent hand-off, per-frame sigmas, in-memory resume, clip emission."""

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.sampling import Denoiser, GenerationRequest, SVIClipSampler, WindowCond, build_schedule
from svi.sampling.media import from_uint8, load_image
from svi.sampling.svi_clip import latent_handoff, motion_latent_frames


def _request(image_file, prompt_file, num_clips=2, F=5):
    schedule = build_schedule(prompt_file, num_clips=num_clips, cfg=3.0, prompt_repeat_times=2)
    return GenerationRequest(load_image(image_file, 32, 32), schedule, num_frames=F, height=32, width=32)


def _sampler(stack, condition=None, **kw):
    return SVIClipSampler(condition or Condition(), stack=stack, flow={"num_inference_steps": 2}, progress=False, **kw)


def test_motion_latent_frames_follow_the_causal_vae(stack):
    assert [motion_latent_frames(k) for k in (1, 2, 4, 5, 6, 9)] == [1, 2, 2, 2, 3, 3]
    for k in (1, 5, 9):  # K = 1 + 4m pixel frames encode to exactly T_K latent frames
        assert stack.encode_video(torch.zeros(1, 3, k, 16, 16)).shape[2] == motion_latent_frames(k)


def test_latent_handoff_replaces_exactly_the_motion_latents(stack, image_file, prompt_file):
    condition = Condition("film", num_motion_frames=5, ref_pad_num=0)
    sampler = _sampler(stack, condition, handoff="latent")
    seen = {"x": [], "y": []}
    denoise = sampler.denoise

    def spy(x, sigmas, cond, desc=""):
        seen["y"].append(cond.y)
        out = denoise(x, sigmas, cond, desc)
        seen["x"].append(out)
        return out

    sampler.denoise = spy
    chunks = list(sampler.stream(_request(image_file, prompt_file, F=9)))
    carry = chunks[0].carry
    assert carry["latents"].shape == (1, 16, 2, 4, 4)
    assert torch.equal(carry["latents"], seen["x"][0][:, :, -2:])
    pixel_y = condition.build_y(stack, from_uint8(carry["motion"]), load_image(image_file, 32, 32), 9)
    y1 = seen["y"][1]
    assert torch.equal(y1[:, 4:, :2], carry["latents"])  # the K = 5 motion frames' two latent frames
    assert torch.equal(y1[:, :4], pixel_y[:, :4])  # mask unchanged
    assert torch.equal(y1[:, 4:, 2:], pixel_y[:, 4:, 2:])  # padding latents as in pixel mode
    assert not torch.allclose(y1[:, 4:, :2], pixel_y[:, 4:, :2])
    assert torch.equal(latent_handoff(pixel_y, carry["latents"]), y1)


def test_equal_per_frame_sigmas_take_the_scalar_path(stack):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    cond = WindowCond(y=torch.randn(1, 20, 3, 4, 4, generator=g), text=torch.randn(1, 512, 32, generator=g),
                      negative_text=torch.randn(1, 512, 32, generator=g),
                      image=torch.randn(1, 257, 24, generator=g), cfg=4.0)
    den = Denoiser(stack)
    scalar = den(x, torch.tensor([0.7]), cond)
    assert torch.equal(den(x, torch.full((1, 3), 0.7), cond), scalar)
    per_frame = den(x, torch.tensor([[0.9, 0.7, 0.2]]), cond)  # FIFO/MIGA: one level per latent frame
    assert per_frame.shape == x.shape and not torch.allclose(per_frame, scalar)
    no_cfg = den(x, torch.tensor([0.7]), WindowCond(cond.y, cond.text, None, cond.image, cfg=4.0))
    assert not torch.allclose(no_cfg, scalar)


@pytest.mark.parametrize("handoff", ["pixel", "latent"])
def test_stream_resumed_from_a_carry_reproduces_the_next_clips(stack, image_file, prompt_file, handoff):
    request = _request(image_file, prompt_file, num_clips=2)
    full = list(_sampler(stack, handoff=handoff).stream(request))
    assert [c.frames.shape[0] for c in full] == [4, 5]  # F - K per clip, all F for the last
    assert [c.cursor for c in full] == [1, 2] and [c.info["seed"] for c in full] == [0, 1]
    (resumed,) = list(_sampler(stack, handoff=handoff).stream(request, start=1, carry=full[0].carry))
    assert np.array_equal(full[1].frames, resumed.frames)
    assert all(torch.equal(full[1].carry[k], resumed.carry[k]) for k in full[1].carry)
    with pytest.raises(ValueError, match="motion frames in `carry`"):
        next(_sampler(stack).stream(request, start=1))


def test_first_clip_repeat_and_stock_condition(stack, image_file, prompt_file):
    request = _request(image_file, prompt_file, num_clips=1, F=9)
    film = Condition("film", num_motion_frames=5, ref_pad_num=0)
    image = load_image(image_file, 32, 32).unsqueeze(2)
    ys = {}
    for mode in ("single", "repeat"):
        sampler = _sampler(stack, film, first_clip=mode)

        def record(x, sigmas, cond, desc="", mode=mode):
            ys[mode] = cond.y
            return x

        sampler.denoise = record
        assert list(sampler.stream(request))[0].frames.shape == (9, 32, 32, 3)
    # single: [image, zeros x 8] (the official first clip); repeat: [image x 5, zeros x 4]
    zeros = torch.zeros(1, 3, 8, 32, 32)
    assert torch.equal(ys["single"][:, 4:], stack.encode_video(torch.cat([image, zeros], 2)))
    assert torch.equal(ys["repeat"][:, 4:], stack.encode_video(torch.cat([image.repeat(1, 1, 5, 1, 1), zeros[:, :, :4]], 2)))
    base = _sampler(stack, film, stock_condition=True, use_lora=False)
    assert (base.num_motion_frames, base.condition.ref_pad_num) == (1, 0)
    with pytest.raises(ValueError, match="handoff"):
        _sampler(stack, handoff="pixels")
    with pytest.raises(ValueError, match="1\\+4k"):
        _sampler(stack).validate(_request(image_file, prompt_file, F=6))
