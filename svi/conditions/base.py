"""A condition type: how a clip's condition `y` is built, and which extra inputs it carries.

Every type builds the same I2V condition (docs/method.md, "The condition"): for a clip of F pixel
frames with k motion frames,

    pixel condition = [k motion frames] + [F - k padding frames]
        ref_pad_num = -1: the reference image repeated            (Shot, Talk, Dance)
        ref_pad_num =  0: zeros                                   (Film)
        ref_pad_num =  n: n copies of the reference, then zeros
    cond_latent = normalised VAE posterior mode of that video     (B, C, T, h, w)
    mask        = 1 for known pixel frames (officially frame 0 only), laid out as Wan's 4 mask channels
    y           = cat[mask (4), cond_latent (C)]                  (B, 4 + C, T, h, w)

The same builder serves training (motion frames = the first k frames of the clip) and generation
(motion frames = the last K frames of the previous clip; the first clip has one), so the two cannot
drift apart.

A type is a plug-in: one class here plus one `conf/condition/*.yaml`. Whatever differs between types
lives in the class, behind the hooks below; datasets, the latent cache, the schedule, the sampler and
the entrypoints call the hooks and never name a type:

    extra_fields                 keys a dataset row or a schedule entry may carry (e.g. an audio path)
    read_row(row, base, where)   parse and check a dataset row's extra inputs, before training
    draw(rng)                    per-clip random choices of the data pipeline (Film's motion-frame mix)
    load_extras(extras, span)    raw tensors of one training clip (in the dataset worker)
    encode_extras(stack, raw)    frozen encoders -> what training consumes and svi-prepare caches
    random_extras(B, geometry)   encoded extras of the right shapes for synthetic data
    attach(transformer)          adapter modules (zero-initialised: the output is unchanged until trained)
    forward_context(extras)      makes the extras visible to the adapters during one forward
    training_inputs(batch, g)    training-only changes (e.g. dropping the signal for guidance)
    guide(velocity, cond)        classifier-free guidance of one denoiser call (text only, by default)
    adapter_state_dict()         the trainable adapter tensors, under the names of official files
    load_adapter_tensors(t)      load the tensors of an adapter or LoRA file that belong to the adapters
    check_schedule(schedule, inputs)   validate a generation's extra inputs before any compute
    clips_from_inputs(...)       how many clips the inputs ask for (talk: the audio's length), or None
    clip_extras(stack, ...)      the encoded extras of clip i of a generation
    frame_rate, soundtrack(inputs)     the rate the video is made at (None: the generation's fps), and
                                 an audio file the finished video carries (None: silent)
"""

from __future__ import annotations

import dataclasses
import random
from contextlib import contextmanager
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class ClipSpan:
    """Where a training clip sits in its source video: what an extra input (an audio track, a pose video
    aligned with the video) must be cut to."""

    frame_indices: tuple[int, ...]  # (F,) source frame of each clip frame
    fps: float  # the source video's frame rate
    crop: tuple[int, int, int, int]  # top, left, height, width of the crop, in source pixels
    source_size: tuple[int, int]  # (H, W) of the source video
    height: int  # the clip's size after the crop is resized
    width: int


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
    """What an extra input must be cut or shaped to: a clip of `num_frames` frames of `height` x `width`."""

    num_frames: int
    height: int
    width: int
    fps: float = 16.0


class Condition:
    """The I2V condition with the plug-in hooks of a condition type (defaults: no extra inputs).

    Args:
        name: the type's name (`shot`, `film`, ...), used in run names and the latent cache.
        num_motion_frames: K, motion frames handed from one clip to the next.
        ref_pad_num: -1 reference repeated | 0 zeros | n > 0 n copies then zeros.
        mask_all_motion_frames: mark all motion frames known (officially only pixel frame 0).
        prompt_per_clip: a prompt stream, one prompt per clip (Film), instead of one prompt for all.
    """

    #: keys a dataset row (metadata column) or a schedule entry may carry for this type
    extra_fields: tuple[str, ...] = ()
    #: the frame rate a generation runs at (the audio of talk is 25 fps); None: the generation's `fps`
    frame_rate: float | None = None

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
        self.prompt_per_clip = prompt_per_clip

    # -- the I2V builder ------------------------------------------------------------------------
    def pixel_condition(self, motion: Tensor, ref: Tensor, num_frames: int) -> Tensor:
        """motion (B, 3, k, H, W) with 1 <= k <= K, ref (B, 3, H, W) -> condition video (B, 3, F, H, W)."""
        B, C, k, H, W = motion.shape
        if not 1 <= k <= self.num_motion_frames:
            raise ValueError(f"condition '{self.name}' takes 1 to {self.num_motion_frames} motion frames, got {k}")
        if (num_frames - 1) % 4 or num_frames <= k:
            raise ValueError(f"clip length must be 1+4k frames and longer than the {k} motion frames, "
                             f"got {num_frames}")
        pad = num_frames - k
        n_ref = pad if self.ref_pad_num == -1 else min(self.ref_pad_num, pad)
        refs = ref.unsqueeze(2).expand(B, C, n_ref, H, W).to(motion.dtype)
        zeros = motion.new_zeros(B, C, pad - n_ref, H, W)
        return torch.cat([motion, refs, zeros], dim=2)

    def mask(self, batch_size: int, num_frames: int, height: int, width: int, device=None,
             num_motion: int | None = None) -> Tensor:
        """Wan's I2V mask (B, 4, T, h, w): channel c of latent frame k >= 1 is pixel frame 4k-3+c.

        Pixel frame 0 is repeated 4 times so latent frame 0's four channels all describe it. Officially
        only pixel frame 0 is marked known, even with K = 5 motion frames; `mask_all_motion_frames` marks
        the `num_motion` (default K) motion frames.
        """
        known = torch.zeros(num_frames, device=device)
        known[: (num_motion or self.num_motion_frames) if self.mask_all_motion_frames else 1] = 1
        per_frame = torch.cat([known[:1].repeat(4), known[1:]])  # (4T,)
        T = per_frame.numel() // 4
        m = per_frame.view(T, 4).transpose(0, 1)  # (4, T)
        return m.view(1, 4, T, 1, 1).expand(batch_size, 4, T, height, width).contiguous()

    def build_y(self, stack, motion: Tensor, ref: Tensor, num_frames: int) -> Tensor:
        """Encode the condition video and prepend the mask: (B, 4 + C, T, h, w).

        A backbone whose condition lives in the latent itself (Wan 2.2 TI2V, `stack.latent_condition`) gets the
        same layout with another meaning: the `T_K` latent frames the motion frames occupy are marked known (all
        4 mask channels 1) and hold their clean latents; the other frames are 0 (`latent_y`).
        """
        if getattr(stack, "latent_condition", False):
            return self.latent_y(stack, motion, ref, num_frames)
        video = self.pixel_condition(motion, ref, num_frames)
        cond_latent = stack.encode_video(video)  # (B, C, T, h, w), normalised, fp32
        B, _, _, h, w = cond_latent.shape
        mask = self.mask(B, num_frames, h, w, device=cond_latent.device, num_motion=motion.shape[2])
        return torch.cat([mask, cond_latent], dim=1)

    def latent_y(self, stack, motion: Tensor, ref: Tensor, num_frames: int) -> Tensor:
        """y of a latent-conditioned backbone (Wan 2.2 TI2V): the leading `T_K = 1 + ceil((k - 1) / 4)` latent frames
        are the VAE latents of the condition video's first `1 + 4 (T_K - 1)` pixel frames (the k motion frames, then
        padding as `ref_pad_num` says when k is not 1 + 4m), marked known; the rest of y is 0. The backbone
        substitutes these frames into x with timestep 0 (diffusers' `expand_timesteps`), so with k = 1 this is the
        stock TI2V image condition."""
        k = motion.shape[2]
        t_k = 1 + (k + 2) // 4
        video = self.pixel_condition(motion, ref, num_frames)[:, :, : 1 + 4 * (t_k - 1)]
        lead = stack.encode_video(video)  # (B, C, T_K, h, w), normalised, fp32
        B, C, _, h, w = lead.shape
        T = 1 + (num_frames - 1) // 4
        y = lead.new_zeros(B, 4 + C, T, h, w)
        y[:, :4, :t_k] = 1
        y[:, 4:, :t_k] = lead
        return y

    def clip_image(self, motion: Tensor) -> Tensor:
        """CLIP sees the first motion frame (B, 3, H, W)."""
        return motion[:, :, 0]

    def motion_frames(self, video: Tensor, draws: Mapping[str, Tensor] | None = None) -> list[Tensor]:
        """A training clip's motion frames, per sample: the first K frames (B entries of (3, k, H, W))."""
        return [v[:, : self.num_motion_frames] for v in video]

    def encode_clip(self, stack, video: Tensor, ref: Tensor, captions: Sequence[str],
                    extras: Mapping[str, Tensor] | None = None, draws: Mapping[str, Tensor] | None = None) -> dict:
        """A raw training clip -> the latent batch the DiT step consumes (one place for training and the cache).

        video (B, 3, F, H, W), ref (B, 3, H, W) in [-1, 1] -> `latents` (B, C, T, h, w), `y` (B, 4 + C, T, h, w),
        `text` (B, text_len, text_dim), `image` (B, 257, image_dim) or None, and `extras` (encoded). The
        motion frames are the first k frames of the clip (`motion_frames`: K, or fewer where `draws` says so).
        """
        motions = self.motion_frames(video, draws)
        ys, images = [], []
        for group in _same_length_groups(motions):  # samples with the same k are encoded together
            motion = torch.stack([motions[i] for i in group])  # (b, 3, k, H, W)
            ys.append((group, self.build_y(stack, motion, ref[group], video.shape[2])))
            images.append((group, stack.encode_image(self.clip_image(motion))))
        return {"latents": stack.encode_video(video), "y": _ungroup(ys, len(motions)),
                "text": stack.encode_text(list(captions)), "image": _ungroup(images, len(motions)),
                "extras": self.encode_extras(stack, dict(extras or {}))}

    # -- extra inputs of training data ---------------------------------------------------------
    def read_row(self, row: Mapping[str, str], base: str, where: str) -> dict[str, Any]:
        """A dataset row's extra inputs (`extra_fields` columns), parsed and checked; `base` is the folder
        relative paths start from and `where` names the row in errors ("metadata.csv, row 3")."""
        return {}

    def draw(self, rng: random.Random) -> dict[str, int]:
        """Per-clip random choices made by the data pipeline (so a latent cache holds what training sees)."""
        return {}

    def load_extras(self, extras: Mapping[str, Any], span: ClipSpan) -> dict[str, Tensor]:
        """The raw extra tensors of one training clip (`span`: its frames and crop in the source video)."""
        return {}

    def encode_extras(self, stack, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Batched raw extras (B, ...) -> what training consumes (and `svi-prepare` caches)."""
        return {}

    def random_extras(self, batch_size: int, geometry: ClipGeometry, generator: torch.Generator) -> dict[str, Tensor]:
        """Encoded extras of the right shapes, random (synthetic training data)."""
        return {}

    # -- the network -----------------------------------------------------------------------------
    def attach(self, transformer: nn.Module) -> nn.Module | None:
        """Attach this type's adapters to the transformer (after LoRA); returns them (None: no adapters).
        Trainable parameters have `requires_grad`; the others stay frozen."""
        return None

    @contextmanager
    def forward_context(self, extras: Mapping[str, Tensor] | None):
        """Make a batch's extras visible to the adapters during the forward passes inside the block."""
        yield

    @contextmanager
    def holding(self, attr: str, value):
        """Set `self.<attr>` to `value` for the block and back to None after it: the usual body of a
        type's `forward_context` (the adapters read the attribute while the DiT runs)."""
        setattr(self, attr, value)
        try:
            yield
        finally:
            setattr(self, attr, None)

    def training_inputs(self, batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """Training-time changes of a latent batch (`y`, `image`, `extras`), e.g. dropping a signal with some
        probability so that guidance can leave it out at inference. Draw from `generator` (it is resumed)."""
        return dict(batch)

    def guide(self, velocity, cond) -> Tensor:
        """Classifier-free guidance of one denoiser call: `velocity(text, extras)` runs the DiT (inside this
        type's forward context); `cond` is the window's `WindowCond`. The branches come from
        `guidance_branches` and are combined by `combine_guidance`; a type overrides those two (then the
        `Denoiser` can run the branches on several processes, `svi.sampling.parallel`)."""
        return self.combine_guidance([velocity(text, extras) for text, extras in self.guidance_branches(cond)], cond)

    def guidance_branches(self, cond) -> list[tuple[Tensor, Mapping[str, Tensor]]]:
        """The (text, extras) of each network evaluation of one guided step, independent of each other.
        Text only by default: positive, then negative (`cfg <= 1`: the positive branch alone)."""
        if cond.cfg > 1 and cond.negative_text is not None:
            return [(cond.text, cond.extras), (cond.negative_text, cond.extras)]
        return [(cond.text, cond.extras)]

    def combine_guidance(self, velocities: Sequence[Tensor], cond) -> Tensor:
        """The guided velocity from the branches' (as diffusers: `v = v_neg + cfg (v_pos - v_neg)`)."""
        if len(velocities) == 1:
            return velocities[0]
        v, v_neg = velocities
        return v_neg + cond.cfg * (v - v_neg)  # combined in fp32 even for a bf16 backbone

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The trainable adapter tensors, named as in the official files (exported beside the LoRA)."""
        return {}

    def load_adapter_tensors(self, tensors: Mapping[str, Tensor]) -> list[str]:
        """Load the tensors of an adapter or LoRA file that belong to this type's adapters; returns their keys."""
        return []

    # -- generation ----------------------------------------------------------------------------
    def check_schedule(self, schedule: Sequence, inputs: Mapping[str, Any]) -> None:
        """Refuse a generation whose extra inputs cannot be used (missing files, wrong keys), before any compute.

        `schedule` holds the `ClipSpec`s (their `extras`), `inputs` the whole-video inputs (`inputs.NAME=...`).
        """
        given = sorted({k for clip in schedule for k in clip.extras} | set(inputs))
        if given:
            takes = list(self.extra_fields) or "no extra inputs"
            raise ValueError(f"condition '{self.name}' takes {takes}, but the generation names {given}")

    def clips_from_inputs(self, inputs: Mapping[str, Any], num_frames: int, fps: float) -> int | None:
        """The number of clips of `num_frames` frames at `fps` the whole-video inputs ask for (talk: as many as
        the audio lasts), or None."""
        return None

    def clip_extras(self, stack, schedule: Sequence, index: int, inputs: Mapping[str, Any],
                    geometry: ClipGeometry) -> dict[str, Tensor]:
        """The encoded extras of clip `index` of a generation (batch of 1)."""
        return {}

    def soundtrack(self, inputs: Mapping[str, Any]) -> str | None:
        """An audio file the finished video carries (muxed without re-encoding the video), or None."""
        return None

    # -- identity ------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """What shapes `y` and the extras: a latent cache must be read with the same."""
        return {"type": type(self).__name__, "name": self.name, "num_motion_frames": int(self.num_motion_frames),
                "ref_pad_num": int(self.ref_pad_num), "mask_all_motion_frames": bool(self.mask_all_motion_frames)}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, K={self.num_motion_frames}, "
                f"ref_pad_num={self.ref_pad_num}, mask_all_motion_frames={self.mask_all_motion_frames})")


def _same_length_groups(motions: Sequence[Tensor]) -> list[list[int]]:
    """Indices of the samples grouped by their number of motion frames, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(motions):
        groups.setdefault(m.shape[1], []).append(i)
    return list(groups.values())


def _ungroup(parts: list[tuple[list[int], Tensor | None]], batch_size: int) -> Tensor | None:
    """Per-group results back in sample order (None when the parts are None: no CLIP path)."""
    if parts[0][1] is None:
        return None
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    out = first.new_empty((batch_size, *first.shape[1:]))
    for group, value in parts:
        out[group] = value
    return out
