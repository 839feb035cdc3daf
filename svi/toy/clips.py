"""Toy-world clips rendered on the fly: the training data of the toy base and the toy fine-tunes.

Every item is a pure function of (seed, index): scene `derive_seed(seed, TRAIN, index // clips_per_scene)`,
a start frame and a reference frame drawn from the same key. Held-out test scenes come from another
branch of the seed tree (`heldout_scene_seed`), so no test world is ever seen in training.

An item is a raw clip in the layout the training module encodes itself (`video`, `ref_image`,
`caption`, and for talk / dance the clip's raw `extras`: its sound or pose frames, `svi.toy.signals`), exactly
like `data=folders`: the toy world goes through the real encode path.
Shot mode's training reference is a random frame of the same video within `ref_window` frames of the
clip (the prototype's "random frame of the same 48-frame video"); at test it is the video's frame 0.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from svi.toy.signals import clip_signals, signal_world
from svi.toy.world import SPRITE_SIZE, SPRITE_SPEED, caption, derive_seed, make_world, render

TRAIN, TEST = 0, 1


@dataclass
class ToyWorldSpec:
    """Which toy worlds: geometry and scene options shared by data, base fitting and evaluation."""

    height: int = 32
    width: int = 32
    min_sprites: int = 2
    max_sprites: int = 2
    drift: float = 0.0
    scene_change_every: int | None = None  # film scripts (new scene every N frames); None = one shot
    voice: bool = False  # talk worlds: the top sprite's size follows a sound (svi.toy.signals)
    dance: bool = False  # dance worlds: the sprites follow a choreography shown by a pose video
    sprite_size: tuple[float, float] = SPRITE_SIZE  # range of a sprite's half-extent (fraction of the shorter side)
    speed: tuple[float, float] = SPRITE_SPEED  # range of a sprite's speed per axis (unit box per frame); [0, 0] = still

    def world(self, seed: int):
        signals = {k: True for k in ("voice", "dance") if getattr(self, k)}
        return make_world(seed, scene_change_every=self.scene_change_every, min_sprites=self.min_sprites,
                          max_sprites=self.max_sprites, drift=self.drift, sprite_size=tuple(self.sprite_size),
                          speed=tuple(self.speed),
                          **signals)


def train_scene_seed(seed: int, i: int) -> int:
    return derive_seed(seed, TRAIN, i)


def heldout_scene_seed(seed: int, i: int) -> int:
    return derive_seed(seed, TEST, i)


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


class ToyClips(Dataset):
    """`length` clips of `num_frames` frames from procedurally drawn toy scenes."""

    def __init__(self, num_frames: int = 9, length: int = 1_000_000, seed: int = 0, clips_per_scene: int = 1,
                 max_start: int = 240, ref_window: int = 48, world: ToyWorldSpec | dict | None = None,
                 condition=None, prev_clip: bool | int = False):
        if (num_frames - 1) % 4:
            raise ValueError(f"data.num_frames must be 1+4k (e.g. 9, 17), got {num_frames}")
        # prev_clip: each item also holds the clip before it (`prev_video`, F frames ending with this clip's
        # K motion frames), for the hand-off image error (img_source=toy_handoff). The clip then starts
        # F - K frames later than it would without the option (the previous clip needs those frames).
        # An integer N > 1 gives the N clips before it, chained as a rollout chains them (each starts F - K
        # frames after the one before): `prev_video` holds F + (N - 1)(F - K) frames, the clip starts
        # N (F - K) frames later.
        n_prev = int(prev_clip)
        if isinstance(prev_clip, float) or n_prev < 0:
            raise ValueError(f"data.prev_clip must be true, false or a number of clips >= 0, "
                             f"got {prev_clip!r}")
        step = 0  # frames between the starts of two chained clips, F - K
        if n_prev:
            if condition is None:
                raise ValueError("data.prev_clip needs the condition (its K motion frames say where the previous "
                                 "clip ends); pass condition=...")
            step = num_frames - int(condition.num_motion_frames)
        self.prev, self.prev_span = n_prev * step, num_frames + (n_prev - 1) * step
        if length < 1 or clips_per_scene < 1:
            raise ValueError(f"data.length and data.clips_per_scene must be >= 1, got {length}, {clips_per_scene}")
        self.num_frames, self.length, self.seed = num_frames, length, seed
        self.clips_per_scene, self.max_start, self.ref_window = clips_per_scene, max_start, ref_window
        spec = world if isinstance(world, ToyWorldSpec) else ToyWorldSpec(**dict(world or {}))
        self.world_spec = signal_world(spec, condition)  # talk / dance: worlds with a voice / a dance
        self.condition = condition  # its per-clip draws (Film's motion-frame mix) and extra inputs

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        spec, F = self.world_spec, self.num_frames
        world = spec.world(train_scene_seed(self.seed, index // self.clips_per_scene))
        rng = np.random.default_rng(derive_seed(self.seed, 2, index))
        start = int(rng.integers(0, self.max_start + 1))
        lo = max(0, start - self.ref_window // 2)
        ref_t = int(rng.integers(lo, lo + self.ref_window))
        video = render(world, start, F + self.prev, spec.height, spec.width)
        prev, video = video[: self.prev_span], video[self.prev :]
        ref = render(world, ref_t, 1, spec.height, spec.width)
        draws = self.condition.draw(random.Random(derive_seed(self.seed, 3, index))) if self.condition else {}
        item = {"video": to_tensor(video), "ref_image": to_tensor(ref)[:, 0], "caption": caption(world),
                "draws": draws}
        if self.prev:
            item["prev_video"] = to_tensor(prev)
        if self.condition is not None and self.condition.extra_fields:  # talk / dance: the clip's own signal
            item["extras"] = clip_signals(self.condition, world, start + self.prev, F, spec.height, spec.width)
        return item


class ToyClipsDataModule(L.LightningDataModule):
    """`data=toy`: on-the-fly toy clips (shuffled map-style dataset, so ExactResume applies)."""

    def __init__(self, batch_size: int = 8, num_workers: int = 0, **dataset_kwargs):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.dataset_kwargs = dataset_kwargs

    def setup(self, stage: str | None = None) -> None:
        self.dataset = ToyClips(**self.dataset_kwargs)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          drop_last=True, persistent_workers=self.num_workers > 0)


def toy_videos(num_videos: int, num_frames: int, seed: int = 0, world: ToyWorldSpec | dict | None = None,
               split: int = TRAIN, stride: int = 1) -> torch.Tensor:
    """(N, 3, F, H, W) in [-1, 1]: clips of N scenes of one split (for fitting the autoencoder)."""
    spec = world if isinstance(world, ToyWorldSpec) else ToyWorldSpec(**dict(world or {}))
    out = []
    for i in range(num_videos):
        w = spec.world(derive_seed(seed, split, i))
        out.append(to_tensor(render(w, (i * 37) % 200, num_frames * stride, spec.height, spec.width)[::stride]))
    return torch.stack(out)
