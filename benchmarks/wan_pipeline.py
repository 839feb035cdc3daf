"""The diffusers reference the generation benchmarks time our sampler against (imported by those scripts)."""

from __future__ import annotations

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
