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


class ToyWorldVideo:
    """The exact toy-world continuation of row `index` of a `scenes.jsonl`, rendered on demand at any size.

    The ground-truth reader `svi-evaluate` uses for `gt=.../scenes.jsonl gt_index=I` (`gt_readers.jsonl`).
    """

    def __init__(self, path: str | Path, index: int, num_frames: int, height: int, width: int, fps: float = 16.0):
        rows = read_scenes(path)
        if not 0 <= index < len(rows):
            raise ValueError(f"gt_index={index} is out of range: {path} has {len(rows)} scenes")
        self.world = load_scene(rows[index])
        self.num_frames, self.height, self.width, self.fps = num_frames, height, width, float(fps)

    def __len__(self) -> int:
        return self.num_frames

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.num_frames)
        if stop <= start:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        return render(self.world, start, stop - start, self.height, self.width)
