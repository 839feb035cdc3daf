"""One clip of our sampler, LoRA off, equals diffusers' WanImageToVideoPipeline for the same inputs.

The stock pipeline pads the condition with zeros and marks frame 0 (our K = 1, ref_pad_num = 0), draws
`randn(B, 16, T, h, w)` from a generator (we pass the same tensor as `latents=`), and calls
`scheduler.set_timesteps(N)` without sigmas, so the scheduler is given SVI's sigmas
`linspace(1, 0, N+1)[:-1]` (shift 5) through a subclass. CLIP tokens come from our stack on both sides, in
the diffusers processor's mode (`clip_resize=crop`); frames are rounded to uint8 as diffusers does
(`quantize=round`).
"""

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.sampling import GenerationRequest, SVIClipSampler, build_schedule
from svi.sampling.media import load_image
from svi.sampling.svi_clip import clip_noise

STEPS, F, H, W, SEED, CFG = 3, 5, 32, 32, 123, 5.0


@pytest.mark.parametrize("sampler_kind", ["svi_k1_zeros", "base"])
def test_one_clip_equals_diffusers_wan_i2v_pipeline(stack, image_file, tmp_path, sampler_kind, monkeypatch):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from PIL import Image

    class SVISigmas(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist()
            super().set_timesteps(sigmas=sigmas, device=device)

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red disc drifts to the right\n")
    schedule = build_schedule(prompts, num_clips=1, base_seed=SEED, cfg=CFG)
    image = load_image(image_file, H, W)
    request = GenerationRequest(image=image, schedule=schedule, num_frames=F, height=H, width=W)
    monkeypatch.setattr(stack, "clip_resize", "crop")  # the diffusers processor's CLIP input (official: squash)
    if sampler_kind == "base":
        sampler = SVIClipSampler(Condition(), stack=stack, flow={"num_inference_steps": STEPS, "shift": 5.0},
                                 use_lora=False, stock_condition=True, quantize="round", progress=False)
    else:
        sampler = SVIClipSampler(Condition("k1", num_motion_frames=1, ref_pad_num=0), stack=stack,
                                 flow={"num_inference_steps": STEPS, "shift": 5.0}, quantize="round", progress=False)

    captured = {}
    decode = stack.decode_latents

    def capture_decode(latents):
        captured["latents"], captured["video"] = latents, decode(latents)
        return captured["video"]

    stack.decode_latents = capture_decode
    try:
        (chunk,) = list(sampler.stream(request))
    finally:
        del stack.decode_latents
    assert chunk.frames.shape == (F, H, W, 3) and chunk.frames.dtype == np.uint8

    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=stack.vae,
                                   scheduler=SVISigmas(shift=5.0), transformer=stack.transformer)
    pipe.set_progress_bar_config(disable=True)
    pipe.encode_image = lambda img, device=None: stack.encode_image(image)  # identical CLIP tokens
    final = {}

    def keep_latents(pipe_, i, t, kwargs):
        final["latents"] = kwargs["latents"]
        return kwargs

    T = 1 + (F - 1) // 4
    noise = clip_noise(SEED, (1, 16, T, H // 8, W // 8))
    pil = Image.open(image_file).convert("RGB")
    video = pipe(image=pil, prompt_embeds=stack.encode_text([schedule[0].prompt]),
                 negative_prompt_embeds=stack.encode_text([schedule[0].negative_prompt]),
                 height=H, width=W, num_frames=F, num_inference_steps=STEPS, guidance_scale=CFG,
                 latents=noise.clone(), output_type="np", callback_on_step_end=keep_latents).frames[0]

    assert torch.allclose(captured["latents"], final["latents"], atol=1e-5), \
        (captured["latents"] - final["latents"]).abs().max()
    ours = (captured["video"][0].permute(1, 2, 3, 0).numpy() + 1) / 2  # (F, H, W, 3) in [0, 1]
    assert np.abs(ours - video).max() < 1e-4
    assert np.abs(chunk.frames / 255.0 - video).max() <= 0.5 / 255 + 1e-4  # uint8 rounding only
