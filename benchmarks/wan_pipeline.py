"""The diffusers reference the generation benchmarks time our sampler against (imported by those scripts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_pipeline(stack, shift: float = 5.0):
    """diffusers' `WanImageToVideoPipeline` on `stack`'s modules, stepping our sigmas
    (shift(linspace(1, 0, N + 1)[:-1])), with the stack's CLIP preprocessing; prompts go in as embeddings."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor

    class SVISigmas(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
            super().set_timesteps(sigmas=np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].tolist(), device=device)

    processor = CLIPImageProcessor(size={"shortest_edge": stack.image_size},
                                   crop_size={"height": stack.image_size, "width": stack.image_size},
                                   image_mean=stack.image_mean.flatten().tolist(),
                                   image_std=stack.image_std.flatten().tolist())
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=stack.vae, scheduler=SVISigmas(shift=shift),
                                   transformer=stack.transformer, image_encoder=stack.image_encoder,
                                   image_processor=processor)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def one_clip_request(height: int, width: int, frames: int, folder: Path):
    """A random image and a one-line prompt file written to `folder`; returns the one-clip request they make
    and the image (PIL, for the diffusers pipeline)."""
    from PIL import Image

    from svi.sampling import GenerationRequest, build_schedule
    from svi.sampling.media import load_image

    rng = np.random.default_rng(0)
    pil = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    pil.save(folder / "image.png")
    (folder / "p.txt").write_text("a red disc drifts to the right\n")
    schedule = build_schedule(folder / "p.txt", num_clips=1, cfg=5.0)
    request = GenerationRequest(load_image(folder / "image.png", height, width), schedule, num_frames=frames,
                                height=height, width=width)
    return request, pil
