"""SVI-Dance: a person image driven by a skeleton video. K = 1 motion frame, reference padding.

The skeleton renders (one per video frame, e.g. DWPose) go through a small trainable Conv3d stack, the
pose encoder (the official `dwpose_embedding` layout, ~0.37 M parameters at 14B width), whose output has
exactly the DiT's patch-token grid (B, inner, T, h', w') and is added to the patch embeddings (a forward
hook on the stock `patch_embedding`). Its last layer starts at zero, so the model is unchanged until it
trains. Before the encoder the first pose frame is repeated 3 more times, so F = 1 + 4k frames become
4T frames and two stride-2 layers make T latent frames, as the Wan VAE's causal layout does.

Training, as the official code: the pose is zeroed with probability `pose_drop_prob` (the official two
coins, 0.05 and 0.1: 1 - 0.95 x 0.9 = 0.145), and the image condition (`y` and the CLIP tokens) with
probability `reference_drop_prob` (0.1).

Data: a dataset row names a pose video aligned frame by frame with its video (`pose` column); a training
clip takes the pose frames of its own frames, with the same crop. Generation: `inputs.pose=dance.mp4`;
clips follow the pose video's length, each clip gets exactly its pose frames (the motion-frame overlap
accounted for), a pose video at another frame rate or size is resampled (with a note).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from svi.conditions.base import ClipGeometry, ClipSpan, Condition

CHANNELS = 16  # the official pose encoder's width
EXTRA_FIRST = 3  # the first pose frame repeated 3 more times: F = 1 + 4k frames -> 4T


class PoseEncoder(nn.Sequential):
    """The official `dwpose_embedding` layout: 7 Conv3d (indices 0, 2, ..., 12) with SiLU between.

    (B, 3, 4T, H, W) in [0, 1] -> (B, out_dim, T, H / s, W / s) with s = `pixels_per_token` (16 for Wan:
    the VAE's 8x and the DiT's 2x patches). Time is halved by layers 8 and 10; space by layers 6, 8, 10
    (as many as s / 2 needs) and the last layer's 2x2 patch, so a smaller s keeps every weight's shape.
    """

    def __init__(self, out_dim: int, pixels_per_token: int = 16):
        halvings = int(math.log2(pixels_per_token)) if pixels_per_token > 0 else -1
        if 2 ** halvings != pixels_per_token or not 1 <= halvings <= 4:
            raise ValueError(f"condition.pixels_per_token must be 2, 4, 8 or 16 (pixels per DiT token: the VAE's "
                             f"spatial factor x the patch size), got {pixels_per_token}")
        s = [2 if i < halvings - 1 else 1 for i in range(3)]  # spatial strides of layers 6, 8, 10
        c = CHANNELS
        super().__init__(
            nn.Conv3d(3, c, 3, stride=1, padding=1), nn.SiLU(),
            nn.Conv3d(c, c, 3, stride=1, padding=1), nn.SiLU(),
            nn.Conv3d(c, c, 3, stride=1, padding=1), nn.SiLU(),
            nn.Conv3d(c, c, 3, stride=(1, s[0], s[0]), padding=1), nn.SiLU(),
            nn.Conv3d(c, c, 3, stride=(2, s[1], s[1]), padding=1), nn.SiLU(),
            nn.Conv3d(c, c, 3, stride=(2, s[2], s[2]), padding=1), nn.SiLU(),
            nn.Conv3d(c, out_dim, (1, 2, 2), stride=(1, 2, 2)),
        )
        nn.init.zeros_(self[-1].weight)  # zero effect until trained
        nn.init.zeros_(self[-1].bias)


def with_extra_first_frames(pose: Tensor) -> Tensor:
    """(B, 3, F, H, W) -> (B, 3, F + 3, H, W): the first frame 3 more times (the encoder's input layout)."""
    return torch.cat([pose[:, :, :1].expand(-1, -1, EXTRA_FIRST, -1, -1), pose], dim=2)


def open_pose_video(path: str | Path):
    """A decord reader of a pose video; raises ValueError naming the file when it cannot be used."""
    import decord

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pose video {path} does not exist")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as err:  # decord raises plain runtime errors for any container problem
        raise ValueError(f"pose video {path} cannot be read ({str(err).splitlines()[0][:160]}); "
                         f"give an mp4 (or any format ffmpeg reads) of skeleton renders") from err
    if len(reader) == 0:
        raise ValueError(f"pose video {path} has no frames")
    return reader


def fit_frames(frames: Tensor, height: int, width: int, mode: str = "pad") -> Tensor:
    """(n, 3, h, w) float -> (n, 3, height, width): scaled to fit and centred on black (`pad`, the
    official inference) or resized exactly (`stretch`, what a training clip's crop already matches)."""
    n, _, h, w = frames.shape
    if (h, w) == (height, width):
        return frames
    if mode == "stretch":
        return F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    out = frames.new_zeros(n, 3, height, width)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[:, :, top:top + nh, left:left + nw] = small
    return out


class DanceCondition(Condition):
    """Args as `Condition`, with the Dance defaults, plus:

    pixels_per_token: pixels per DiT token side (16 for Wan: 8x VAE, 2x patches; 4 for the toy backbone).
    pose_drop_prob: training: probability of a zeroed pose (0.145, the official two coins).
    reference_drop_prob: training: probability of a zeroed image condition (`y`, CLIP) (0.1, official).
    uncond_pose: the unconditional guidance branch keeps the pose (true: the official inference script).
    frame_rate: frames per second of the generated video; the pose video is resampled to it (25: what
        the official script writes). None: the generation's `fps`.
    """

    extra_fields = ("pose",)

    def __init__(self, name: str = "dance", num_motion_frames: int = 1, ref_pad_num: int = -1,
                 mask_all_motion_frames: bool = False, prompt_per_clip: bool = False, pixels_per_token: int = 16,
                 pose_drop_prob: float = 0.145, reference_drop_prob: float = 0.1, uncond_pose: bool = True,
                 frame_rate: float | None = 25.0):
        super().__init__(name, num_motion_frames, ref_pad_num, mask_all_motion_frames, prompt_per_clip)
        for knob, p in (("pose_drop_prob", pose_drop_prob), ("reference_drop_prob", reference_drop_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"condition.{knob} must be a probability in [0, 1], got {p}")
        PoseEncoder(1, pixels_per_token)  # validates pixels_per_token before any data is read
        self.pixels_per_token = pixels_per_token
        self.pose_drop_prob, self.reference_drop_prob = pose_drop_prob, reference_drop_prob
        self.uncond_pose = uncond_pose
        self.frame_rate = frame_rate
        self.encoder: PoseEncoder | None = None
        self._pose: Tensor | None = None  # (B, 3, F + 3, H, W) while a forward runs inside forward_context
        self._reader = None  # (path, decord reader) of the generation's pose video

    # -- training data ----------------------------------------------------------------------------
    def read_row(self, row: Mapping[str, str], base: str, where: str) -> dict[str, Any]:
        value = (row.get("pose") or "").strip()
        if not value:
            raise ValueError(f"{where}: no pose video: condition=dance needs a `pose` column naming each video's "
                             f"skeleton renders (aligned frame by frame with the video)")
        path = Path(base) / value
        try:
            open_pose_video(path)  # exists, opens, has frames
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
        return {"pose": str(path)}

    def load_extras(self, extras: Mapping[str, Any], span: ClipSpan) -> dict[str, Tensor]:
        """The pose frames of the clip's own frames, with the clip's crop (scaled to the pose video's size)."""
        reader = open_pose_video(extras["pose"])
        n = len(reader)
        h, w = reader[0].shape[:2]
        frames = reader.get_batch([min(i, n - 1) for i in span.frame_indices]).asnumpy()  # (F, h, w, 3) uint8
        missing = [j for j, i in enumerate(span.frame_indices) if i >= n]  # no skeleton: black (as official)
        frames[missing] = 0
        sy, sx = h / span.source_size[0], w / span.source_size[1]
        top, left, ch, cw = span.crop
        crop = frames[:, round(top * sy):round((top + ch) * sy), round(left * sx):round((left + cw) * sx)]
        pose = torch.from_numpy(np.ascontiguousarray(crop)).permute(0, 3, 1, 2).float() / 255.0
        pose = fit_frames(pose, span.height, span.width, mode="stretch")  # (F, 3, H, W)
        return {"pose": pose.permute(1, 0, 2, 3).contiguous()}  # (3, F, H, W) in [0, 1]

    def encode_extras(self, stack, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The encoder's input (the encoder itself trains, so its output cannot be cached)."""
        return {"pose": with_extra_first_frames(raw["pose"].float())} if "pose" in raw else {}

    def random_extras(self, batch_size: int, geometry: ClipGeometry, generator: torch.Generator) -> dict[str, Tensor]:
        g = geometry
        return {"pose": torch.rand(batch_size, 3, g.num_frames + EXTRA_FIRST, g.height, g.width, generator=generator)}

    def training_inputs(self, batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
        out = dict(batch)
        B = batch["latents"].shape[0]
        coins = torch.rand(2, B, generator=generator)
        if "pose" in (batch.get("extras") or {}):
            keep = (coins[0] >= self.pose_drop_prob).to(batch["extras"]["pose"])
            out["extras"] = {**batch["extras"], "pose": batch["extras"]["pose"] * keep.view(-1, 1, 1, 1, 1)}
        keep_ref = (coins[1] >= self.reference_drop_prob)
        out["y"] = batch["y"] * keep_ref.to(batch["y"]).view(-1, 1, 1, 1, 1)
        if batch.get("image") is not None:
            out["image"] = batch["image"] * keep_ref.to(batch["image"]).view(-1, 1, 1)
        return out

    # -- the network ----------------------------------------------------------------------------
    def attach(self, transformer: nn.Module) -> nn.Module:
        inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        self.encoder = PoseEncoder(inner, self.pixels_per_token).to(transformer.device)
        transformer.dwpose_embedding = self.encoder  # moves with the DiT; its official name in the state dict
        transformer.patch_embedding.register_forward_hook(self._add_pose)
        return self.encoder

    def _add_pose(self, module, args, out: Tensor) -> Tensor:  # out: patch embeddings (B, inner, T, h', w')
        if self._pose is None:
            return out
        feature = self.encoder(self._pose.to(device=out.device, dtype=self.encoder[0].weight.dtype))
        if feature.shape[2:] != out.shape[2:]:
            raise ValueError(f"the pose encoder gives a {tuple(feature.shape[2:])} token grid but the DiT has "
                             f"{tuple(out.shape[2:])}: condition.pixels_per_token={self.pixels_per_token} does not "
                             f"fit this backbone (pixels per token side: the VAE's factor x the patch size)")
        return out + feature.to(out.dtype)

    def forward_context(self, extras):
        return self.holding("_pose", (extras or {}).get("pose"))

    def guidance_branches(self, cond) -> list:
        """The negative branch leaves the pose out too (unless `uncond_pose`); combined as text CFG."""
        if self.uncond_pose or cond.cfg <= 1 or cond.negative_text is None:
            return super().guidance_branches(cond)
        no_pose = {k: v for k, v in cond.extras.items() if k != "pose"}
        return [(cond.text, cond.extras), (cond.negative_text, no_pose)]

    def adapter_state_dict(self) -> dict[str, Tensor]:
        return {f"dwpose_embedding.{k}": v for k, v in self.encoder.state_dict().items()}

    def load_adapter_tensors(self, tensors: Mapping[str, Tensor]) -> list[str]:
        mine = {k.removeprefix("dwpose_embedding."): v for k, v in tensors.items() if k.startswith("dwpose_embedding.")}
        if not mine:
            return []
        own = self.encoder.state_dict()
        wrong = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in mine.items() if k in own and v.shape != own[k].shape}
        if wrong or set(mine) != set(own):
            raise ValueError(f"the pose encoder tensors of this file do not fit this backbone's pose encoder "
                             f"(shapes file vs model: {wrong or 'other layer names'}); is it a LoRA for another "
                             f"Wan model (inner width) or another condition.pixels_per_token?")
        self.encoder.load_state_dict({k: v.to(own[k]) for k, v in mine.items()})
        return [f"dwpose_embedding.{k}" for k in mine]

    # -- generation -----------------------------------------------------------------------------
    def _pose_video(self, inputs: Mapping[str, Any]):
        path = inputs.get("pose")
        if not path:
            raise ValueError("condition=dance needs the pose video: inputs.pose=dance.mp4 (skeleton renders)")
        if self._reader is None or self._reader[0] != path:
            self._reader = (path, open_pose_video(path))
        return self._reader[1]

    def _rate(self, inputs: Mapping[str, Any], fps: float) -> float:
        """The pose video's frame rate over the generation's: pose frame of output frame j = round(j x rate)."""
        return float(self._pose_video(inputs).get_avg_fps()) / fps

    def check_schedule(self, schedule: Sequence, inputs: Mapping[str, Any]) -> None:
        per_clip = sorted({k for clip in schedule for k in clip.extras})
        if per_clip:
            raise ValueError(f"condition=dance takes the pose video for the whole generation (inputs.pose=...), "
                             f"not per clip; the schedule names {per_clip}")
        self._pose_video(inputs)  # readable, with frames

    def clips_from_inputs(self, inputs: Mapping[str, Any], num_frames: int, fps: float) -> int | None:
        reader = self._pose_video(inputs)
        frames = int(len(reader) / self._rate(inputs, fps))  # pose frames at the generation's rate
        K = self.num_motion_frames
        if frames < num_frames:
            raise ValueError(f"pose video {inputs['pose']} has {frames} frames at {fps:g} fps, fewer than one clip "
                             f"({num_frames}); give a longer pose video or set num_frames")
        return 1 + (frames - num_frames) // (num_frames - K)

    def clip_extras(self, stack, schedule: Sequence, index: int, inputs: Mapping[str, Any],
                    geometry: ClipGeometry) -> dict[str, Tensor]:
        reader = self._pose_video(inputs)
        rate = self._rate(inputs, geometry.fps)
        if index == 0 and abs(rate - 1) > 1e-3:
            warnings.warn(f"pose video {inputs['pose']} runs at {reader.get_avg_fps():g} fps: resampled to the "
                          f"generation's {geometry.fps:g} fps (nearest frames)")
        F, K = geometry.num_frames, self.num_motion_frames
        first = index * (F - K)  # clip i starts on the previous clip's last K frames
        wanted = [round((first + j) * rate) for j in range(F)]
        n = len(reader)
        frames = reader.get_batch([min(i, n - 1) for i in wanted]).asnumpy()  # (F, h, w, 3)
        frames[[j for j, i in enumerate(wanted) if i >= n]] = 0
        pose = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        h, w = pose.shape[-2:]
        if index == 0 and (h, w) != (geometry.height, geometry.width):
            warnings.warn(f"pose video {inputs['pose']} is {w}x{h}: scaled to fit {geometry.width}x{geometry.height} "
                          f"and padded with black")
        pose = fit_frames(pose, geometry.height, geometry.width)  # (F, 3, H, W)
        return self.encode_extras(stack, {"pose": pose.permute(1, 0, 2, 3)[None]})

    def spec(self) -> dict:
        return {**super().spec(), "pixels_per_token": int(self.pixels_per_token)}
