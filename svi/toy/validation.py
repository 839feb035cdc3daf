"""The toy world as a validation input and a ground truth: an exact future of any length, at any size.

* `ToyWorldInput`: the rollout monitor's input (`callbacks.rollout.input`): a scene's frame 0 is the
  image, its caption the prompt, and its rendered future the ground truth.
* `ToyWorldVideo`: a `scenes.jsonl` row (written by `svi-toyworld`) as a ground-truth video source for
  `svi-evaluate gt=.../scenes.jsonl gt_index=I`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from svi.toy.world import caption, load_scene, make_scene, read_scenes, render


class ToyWorldInput:
    """Scene `world_seed` of the toy world (`make_scene`) as a rollout monitor's validation input."""

    def __init__(self, world_seed: int = 0):
        self.world = make_scene(world_seed)
        self.prompt = caption(self.world)

    def image(self, height: int, width: int) -> torch.Tensor:
        """Frame 0, (1, 3, H, W) in [-1, 1]."""
        from svi.sampling.media import from_uint8

        return from_uint8(render(self.world, 0, 1, height, width)).squeeze(2)

    def ground_truth(self, num_frames: int, height: int, width: int) -> np.ndarray:
        """The scene's first `num_frames` frames, uint8 (n, H, W, 3)."""
        return render(self.world, 0, num_frames, height, width)
