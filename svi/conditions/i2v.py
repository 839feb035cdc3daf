"""The I2V condition `y` of a clip: motion frames from the previous clip plus reference padding.

SPEC §2. For a clip of F pixel frames with K motion frames:

    pixel condition = [K motion frames] + [F - K padding frames]
        ref_pad_num = -1: the reference image repeated            (Shot, Talk, Dance)
        ref_pad_num =  0: zeros                                   (Film)
        ref_pad_num =  n: n copies of the reference, then zeros
    cond_latent = normalised VAE posterior mode of that video     (B, 16, T, h, w)
    mask        = 1 for known pixel frames (officially frame 0 only), laid out as Wan's 4 mask channels
    y           = cat[mask (4), cond_latent (16)]                 (B, 20, T, h, w)

The same builder serves training (motion frames = the first K frames of the clip) and generation
(motion frames = the last K frames of the previous clip), so the two cannot drift apart. Condition
types with extra inputs (talk: audio, dance: pose) subclass this and override `attach` /
`forward_context`; the training module only calls this interface.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


class I2VCondition:
    """Shot and Film are presets of this class (`conf/condition/*.yaml`)."""

    extra_inputs: tuple[str, ...] = ()  # batch keys this condition needs besides video/ref/caption

    def __init__(self, name: str = "shot", num_motion_frames: int = 1, ref_pad_num: int = -1,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = False):
        if num_motion_frames < 1:
            raise ValueError(f"condition.num_motion_frames must be >= 1, got {num_motion_frames}")
        if ref_pad_num < -1:
            raise ValueError(f"condition.ref_pad_num must be -1 (all reference), 0 (zeros) or n > 0, got {ref_pad_num}")
        self.name = name
        self.num_motion_frames = num_motion_frames  # K
        self.ref_pad_num = ref_pad_num
        self.mask_all_motion_frames = mask_all_motion_frames
        self.prompt_per_clip = prompt_per_clip  # Film: one prompt per clip (a prompt stream)

    # -- pixel side ---------------------------------------------------------------------
    def pixel_condition(self, motion: Tensor, ref: Tensor, num_frames: int) -> Tensor:
        """motion (B, 3, K, H, W), ref (B, 3, H, W) -> condition video (B, 3, F, H, W)."""
        B, C, K, H, W = motion.shape
        if K != self.num_motion_frames:
            raise ValueError(f"condition '{self.name}' expects {self.num_motion_frames} motion frames, got {K}")
        if (num_frames - 1) % 4 or num_frames <= K:
            raise ValueError(f"clip length must be 1+4k frames and longer than the {K} motion frames, "
                             f"got {num_frames}")
        pad = num_frames - K
        n_ref = pad if self.ref_pad_num == -1 else min(self.ref_pad_num, pad)
        refs = ref.unsqueeze(2).expand(B, C, n_ref, H, W).to(motion.dtype)
        zeros = motion.new_zeros(B, C, pad - n_ref, H, W)
        return torch.cat([motion, refs, zeros], dim=2)

    def mask(self, batch_size: int, num_frames: int, height: int, width: int, device=None) -> Tensor:
        """Wan's I2V mask (B, 4, T, h, w): channel c of latent frame k >= 1 is pixel frame 4k-3+c.

        Pixel frame 0 is repeated 4 times so latent frame 0's four channels all describe it.
        Officially only pixel frame 0 is marked known, even with K = 5 motion frames.
        """
        known = torch.zeros(num_frames, device=device)
        known[: self.num_motion_frames if self.mask_all_motion_frames else 1] = 1
        per_frame = torch.cat([known[:1].repeat(4), known[1:]])  # (4T,)
        T = per_frame.numel() // 4
        m = per_frame.view(T, 4).transpose(0, 1)  # (4, T)
        return m.view(1, 4, T, 1, 1).expand(batch_size, 4, T, height, width).contiguous()

    def build_y(self, stack, motion: Tensor, ref: Tensor, num_frames: int) -> Tensor:
        """Encode the condition video and prepend the mask: (B, 20, T, h, w)."""
        video = self.pixel_condition(motion, ref, num_frames)
        cond_latent = stack.encode_video(video)  # (B, 16, T, h, w), normalised, fp32
        B, _, _, h, w = cond_latent.shape
        return torch.cat([self.mask(B, num_frames, h, w, device=cond_latent.device), cond_latent], dim=1)

    def encode_clip(self, stack, video: Tensor, ref: Tensor, captions) -> dict:
        """A raw training clip -> the latent batch the DiT step consumes (one place for train and cache).

        video (B, 3, F, H, W), ref (B, 3, H, W) in [-1, 1] -> `latents` (B, 16, T, h, w), `y` (B, 20, T, h, w),
        `text` (B, text_len, text_dim), `image` (B, 257, image_dim) or None. Motion frames = first K frames.
        """
        motion = video[:, :, : self.num_motion_frames]  # (B, 3, K, H, W)
        return {"latents": stack.encode_video(video), "y": self.build_y(stack, motion, ref, video.shape[2]),
                "text": stack.encode_text(list(captions)), "image": stack.encode_image(self.clip_image(motion))}

    def clip_image(self, motion: Tensor) -> Tensor:
        """CLIP sees the first motion frame (B, 3, H, W)."""
        return motion[:, :, 0]

    # -- hooks for condition types with adapters ------------------------------------------------
    def attach(self, transformer: nn.Module) -> list[nn.Module]:
        """Add adapter modules to the transformer (after LoRA); return the trainable ones. None here."""
        return []

    @contextmanager
    def forward_context(self, batch: dict):
        """Make extra inputs (audio tokens, pose video) visible to hooks during one forward. None here."""
        yield

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, K={self.num_motion_frames}, "
                f"ref_pad_num={self.ref_pad_num}, mask_all_motion_frames={self.mask_all_motion_frames})")
