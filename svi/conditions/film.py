"""SVI-Film: a prompt per clip (a prompt stream), K = 5 motion frames, zero padding.

Generation's first clip has a single motion frame (the input image), every later clip K. So Film
training mixes the two, as the official code does (`p_motion_threshold`): a clip uses its K motion
frames with probability `full_motion_prob` (0.9), otherwise only its frame 0, followed by zeros. The coin
is drawn by the data pipeline (`draw`), so a latent cache holds exactly the condition training sees.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from torch import Tensor

from svi.conditions.base import Condition


class FilmCondition(Condition):
    """Args as `Condition`, with the Film defaults, plus:

    full_motion_prob: probability that a training clip uses all K motion frames (else frame 0 only);
        0.9 officially, 1.0 = always K.
    """

    def __init__(self, name: str = "film", num_motion_frames: int = 5, ref_pad_num: int = 0,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = True,
                 full_motion_prob: float = 0.9):
        super().__init__(name, num_motion_frames, ref_pad_num, mask_all_motion_frames, prompt_per_clip)
        if not 0.0 <= full_motion_prob <= 1.0:
            raise ValueError(f"condition.full_motion_prob must be a probability in [0, 1], got {full_motion_prob}")
        self.full_motion_prob = full_motion_prob

    def draw(self, rng: random.Random) -> dict[str, int]:
        """`num_motion`: K with probability `full_motion_prob`, else 1."""
        return {"num_motion": self.num_motion_frames if rng.random() < self.full_motion_prob else 1}

    def motion_frames(self, video: Tensor, draws: Mapping[str, Tensor] | None = None) -> list[Tensor]:
        if not draws or "num_motion" not in draws:  # no data-side draw (synthetic latents): all K
            return super().motion_frames(video, draws)
        counts: Sequence[int] = [int(k) for k in draws["num_motion"]]
        return [v[:, :k] for v, k in zip(video, counts)]

    def spec(self) -> dict:
        return {**super().spec(), "full_motion_prob": float(self.full_motion_prob)}
