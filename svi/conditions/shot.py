"""SVI-Shot: one scene, one prompt. K = 1 motion frame, the reference image pads the rest of the condition.

No extra inputs: everything Shot needs is the I2V condition of `Condition`. The official preset also
sets p_clean 0.2 (`experiment=svi_shot`).
"""

from __future__ import annotations

from svi.conditions.base import Condition


class ShotCondition(Condition):
    """Args as `Condition`, with the Shot defaults (K = 1, reference padding, one prompt for all clips)."""

    def __init__(self, name: str = "shot", num_motion_frames: int = 1, ref_pad_num: int = -1,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = False):
        super().__init__(name, num_motion_frames, ref_pad_num, mask_all_motion_frames, prompt_per_clip)
