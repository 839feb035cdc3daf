"""Training clips read from real video folders with decord.

Two layouts are understood, so users can point SVI at the data they already have:

* the official SVI layout: ``root/<category>/<category>.csv`` (columns ``Video Title, Video Description,
  Video URL, Download URL, Filename``) next to that category's mp4 files;
* a generic layout: ``root/metadata.csv`` or ``root/metadata.jsonl`` with ``path`` and ``caption``,
  plus the columns of the condition type's extra inputs (``Condition.extra_fields``, e.g. an audio path),
  which the condition parses and checks (``Condition.read_row``) when the listing is read.

All random choices of an item (stride, start, reference frame, crop, and the condition's own draws) come
from :meth:`draw_params`,
seeded from ``(seed, epoch, index)`` and kept apart from decoding (:meth:`load_clip`), so a latent cache
can reproduce exactly the clip the trainer would have seen. A bad file never stops an epoch: it is warned
about once, skipped, and reported through the item's ``skipped`` list so the count survives DataLoader
worker processes (see :func:`collate_clips` and :class:`DataStats`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

OFFICIAL_COLUMNS = ("Video Description", "Filename")
METADATA_COLUMNS = ("path", "caption")
LAYOUTS = ("auto", "official", "metadata")
_DECODE_CHUNK = 16  # frames decoded and resized at once: bounds memory for long high-resolution sources


class VideoSkipWarning(UserWarning):
    """A listed video could not be used and was skipped (filter this category to silence it)."""


class VideoReadError(Exception):
    """A video cannot be used; the message is the reason shown to the user."""


@dataclass(frozen=True)
class VideoRecord:
    path: str
    caption: str
    extras: dict[str, Any] = field(default_factory=dict)  # the condition's extra inputs (Condition.read_row)


@dataclass(frozen=True)
class ClipParams:
    """Every random choice of one item, so the same clip can be decoded again later."""

    stride: int
    start: int
    frame_indices: tuple[int, ...]  # (F,) source frame of each output frame
    ref_index: int
    crop: tuple[int, int, int, int]  # top, left, crop_h, crop_w in source pixels
    short: bool  # the video was shorter than F frames and its last frame was repeated
    draws: dict[str, int] = field(default_factory=dict)  # the condition's own random choices (Condition.draw)


def _read_csv(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheet exports carry a BOM
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise ValueError(f"{path} is empty: expected a header row with columns {list(required)}")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        missing = [c for c in required if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path} is missing required column(s) {missing}; found {reader.fieldnames}")
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _read_jsonl(path: str, required: Sequence[str]) -> list[dict[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(obj).__name__}")
            missing = [c for c in required if c not in obj]
            if missing:
                raise ValueError(f"{path}, line {n} is missing required column(s) {missing}")
            rows.append({k: "" if v is None else str(v).strip() for k, v in obj.items()})
    return rows


def load_records(root: str, layout: str = "auto", condition=None) -> tuple[list[VideoRecord], str]:
    """Read the dataset listing; every user error surfaces here, before any training starts.

    `condition` parses and checks each row's extra inputs (`Condition.read_row`): a row without its audio
    file fails here, naming the file and the row.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video dataset root does not exist or is not a folder: {root}")
    metadata = [p for p in (os.path.join(root, "metadata.csv"), os.path.join(root, "metadata.jsonl"))
                if os.path.isfile(p)]
    categories = sorted(os.path.join(root, d, d + ".csv") for d in os.listdir(root)
                        if os.path.isfile(os.path.join(root, d, d + ".csv")))
    if layout == "auto":
        layout = "metadata" if metadata else "official" if categories else ""
    looked_for = {"metadata": "metadata.csv or metadata.jsonl",
                  "official": "<category>/<category>.csv in each sub-folder",
                  "": "metadata.csv, metadata.jsonl, or <category>/<category>.csv in each sub-folder"}
    sources = metadata[:1] if layout == "metadata" else categories  # metadata.csv wins over .jsonl
    if not sources:
        raise FileNotFoundError(f"no video metadata found in {root}: looked for {looked_for[layout]}")

    records: list[VideoRecord] = []
    for src in sources:
        if layout == "metadata":
            reader = _read_jsonl if src.endswith(".jsonl") else _read_csv
            rows, base, path_col, caption_col = reader(src, METADATA_COLUMNS), root, "path", "caption"
        else:
            rows, base = _read_csv(src, OFFICIAL_COLUMNS), os.path.dirname(src)
            path_col, caption_col = "Filename", "Video Description"
        for n, row in enumerate(rows, 1):
            if not row[path_col]:
                raise ValueError(f"{src}, row {n}: empty {path_col!r}")
            extras = condition.read_row(row, base, f"{src}, row {n}") if condition is not None else {}
            records.append(VideoRecord(os.path.join(base, row[path_col]), row[caption_col], extras))
    if not records:
        raise ValueError(f"no videos listed in {', '.join(sources)}: the file(s) have no data rows")
    return records, layout


class VideoClipDataset(Dataset):
    """F-frame clips (strided, cropped to the target aspect, resized) plus a reference frame per video."""

    def __init__(self, root: str, num_frames: int = 81, height: int = 480, width: int = 832,
                 max_stride: int = 2, min_frames: int = 1, layout: str = "auto",
                 ref_outside_clip: bool = True, min_crop_scale: float = 13 / 14, seed: int = 0, condition=None):
        if num_frames < 1 or (num_frames - 1) % 4 != 0:
            # The Wan VAE compresses time 4x after the first frame: 1+4k frames -> 1+k latents.
            raise ValueError(f"num_frames must be 1+4k (e.g. 17, 81), got {num_frames}")
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        if max_stride < 1 or min_frames < 1:
            raise ValueError(f"max_stride and min_frames must be >= 1, got {max_stride} and {min_frames}")
        if not 0.0 < min_crop_scale <= 1.0:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {min_crop_scale}")
        self.root = root
        self.num_frames, self.height, self.width = num_frames, height, width
        self.max_stride, self.min_frames = max_stride, min_frames
        self.ref_outside_clip, self.min_crop_scale, self.seed = ref_outside_clip, min_crop_scale, seed
        self.condition = condition  # reads the extra inputs of each row and of each clip (svi/conditions/)
        self.records, self.layout = load_records(root, layout, condition)
        self.epoch = 0
        self.failed: dict[str, str] = {}  # path -> reason, in this process; each is warned about once

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """New random clips each epoch (workers must be re-created, i.e. not persistent, to see it)."""
        self.epoch = epoch

    # ----------------------------------------------------------------------------- random choices
    def draw_params(self, index: int, num_video_frames: int, video_h: int, video_w: int) -> ClipParams:
        """Draw stride, start, reference frame and crop; depends only on (seed, epoch, index) and sizes."""
        if num_video_frames < 1 or video_h < 1 or video_w < 1:
            raise ValueError(f"empty video: {num_video_frames} frames of {video_h}x{video_w}")
        rng = random.Random(f"svi.data.video:{self.seed}:{self.epoch}:{index}")  # str seed: stable everywhere
        n, f = num_video_frames, self.num_frames
        stride = rng.randint(1, self.max_stride)
        if (f - 1) * stride + 1 > n:  # too short for the drawn stride: the largest one that fits, down to 1
            stride = max(1, (n - 1) // (f - 1)) if f > 1 else 1
        span = (f - 1) * stride + 1
        short = span > n
        if short:  # even stride 1 is too long: take every frame, then repeat the last (as official SVI)
            start, indices = 0, list(range(n)) + [n - 1] * (f - n)
        else:
            start = rng.randint(0, n - span)
            indices = list(range(start, start + span, stride))
        assert len(indices) == f and indices[-1] < n
        ref = self._draw_ref(rng, n, start, indices[-1])
        crop = self._draw_crop(rng, video_h, video_w)
        draws = self.condition.draw(rng) if self.condition is not None else {}
        return ClipParams(stride, start, tuple(indices), ref, crop, short, draws)

    def _draw_ref(self, rng: random.Random, n: int, first: int, last: int) -> int:
        """A frame outside the clip's span shows the subject as it is elsewhere, not a copy of the clip."""
        outside = first + (n - 1 - last)  # frames before + after the span
        if self.ref_outside_clip and outside > 0:
            k = rng.randrange(outside)
            return k if k < first else last + 1 + (k - first)
        return rng.randrange(n)

    def _draw_crop(self, rng: random.Random, h: int, w: int) -> tuple[int, int, int, int]:
        """Largest crop of the target aspect, shrunk by up to 1 - min_crop_scale, at a uniform position."""
        aspect = self.height / self.width
        if w * aspect <= h:  # the width limits the crop
            crop_w = rng.randint(max(1, math.ceil(w * self.min_crop_scale)), w)
            crop_h = round(crop_w * aspect)
        else:
            crop_h = rng.randint(max(1, math.ceil(h * self.min_crop_scale)), h)
            crop_w = round(crop_h / aspect)
        crop_h, crop_w = min(max(crop_h, 1), h), min(max(crop_w, 1), w)
        return rng.randint(0, h - crop_h), rng.randint(0, w - crop_w), crop_h, crop_w

    # ----------------------------------------------------------------------------- decoding
    def probe(self, path: str) -> tuple[int, int, int]:
        """(num_frames, height, width) of a video, as draw_params needs them; raises VideoReadError."""
        _, n, h, w = self._open(path)
        return n, h, w

    def _open(self, path: str) -> tuple[Any, int, int, int]:
        if not os.path.isfile(path):
            raise VideoReadError("file not found")
        try:
            import decord
        except ImportError as e:  # imported lazily so the rest of svi works where decord has no wheel
            raise ImportError("reading training videos needs decord: pip install decord") from e
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            n = len(reader)
            h, w = reader[0].shape[:2] if n > 0 else (0, 0)
        except Exception as e:  # decord raises plain RuntimeError/DECORDError for any container problem
            raise VideoReadError(f"cannot open video ({str(e).splitlines()[0][:200]})") from e
        if n < self.min_frames:
            raise VideoReadError(f"only {n} frame(s), need at least min_frames={self.min_frames}")
        return reader, n, h, w

    def load_clip(self, path: str, params: ClipParams,
                  reader: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode exactly the frames params name: video (3, F, H, W), ref_image (3, H, W), in [-1, 1]."""
        if reader is None:
            reader = self._open(path)[0]
        slots: dict[int, list[int]] = {}  # source frame -> output positions (padding repeats a frame)
        for pos, fi in enumerate(params.frame_indices):
            slots.setdefault(fi, []).append(pos)
        wanted = sorted(set(slots) | {params.ref_index})  # each source frame decoded once, in file order
        video = torch.empty(3, len(params.frame_indices), self.height, self.width)  # (3, F, H, W)
        ref = None
        for c in range(0, len(wanted), _DECODE_CHUNK):
            chunk = wanted[c:c + _DECODE_CHUNK]
            try:
                frames = reader.get_batch(chunk).asnumpy()  # (n, h, w, 3) uint8
            except Exception as e:  # truncated streams fail here rather than at open
                raise VideoReadError(f"cannot decode frames {chunk[0]}..{chunk[-1]} ({e})") from e
            frames = self._crop_resize(frames, params.crop)  # (n, 3, H, W)
            for j, fi in enumerate(chunk):
                for pos in slots.get(fi, ()):
                    video[:, pos] = frames[j]
                if fi == params.ref_index:
                    ref = frames[j].clone()  # (3, H, W)
        assert ref is not None
        return video, ref

    def _crop_resize(self, frames: np.ndarray, crop: tuple[int, int, int, int]) -> torch.Tensor:
        top, left, crop_h, crop_w = crop
        if top < 0 or left < 0 or top + crop_h > frames.shape[1] or left + crop_w > frames.shape[2]:
            raise ValueError(f"crop {crop} does not fit frames of {frames.shape[1]}x{frames.shape[2]}: "
                             "params were drawn for a different video size")
        x = torch.from_numpy(frames[:, top:top + crop_h, left:left + crop_w])  # (n, ch, cw, 3) uint8
        x = x.permute(0, 3, 1, 2)  # (n, 3, ch, cw)
        if (crop_h, crop_w) != (self.height, self.width):
            # Resize in uint8 (channels-last in memory), like the PIL path of the official code: the
            # antialiased uint8 kernel is ~10x faster on CPU than the float one.
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", antialias=True,
                              align_corners=False)  # (n, 3, H, W) uint8
        return x.float().div_(127.5).sub_(1.0)  # (n, 3, H, W) in [-1, 1]

    def span(self, params: ClipParams, reader: Any, video_h: int, video_w: int):
        """Where the clip of `params` sits in its source video, for the condition's extra inputs."""
        from svi.conditions import ClipSpan

        return ClipSpan(params.frame_indices, float(reader.get_avg_fps()), params.crop, (video_h, video_w),
                        self.height, self.width)

    # ----------------------------------------------------------------------------- items
    def __getitem__(self, index: int) -> dict[str, Any]:
        """The clip of `index`, or of the next readable video when that one is bad (deterministic)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        skipped: list[str] = []
        reasons: list[str] = []
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            record = self.records[i]
            if record.path not in self.failed:  # known-bad files are not decoded (nor warned about) again
                try:
                    return self._read(i, record, skipped, reasons)
                except VideoReadError as e:
                    warnings.warn(f"skipping video {record.path}: {e}", VideoSkipWarning, stacklevel=2)
                    self.failed[record.path] = str(e)
            skipped.append(record.path)
            reasons.append(self.failed[record.path])
        raise RuntimeError(f"none of the {len(self)} videos listed under {self.root} could be read "
                           f"(e.g. {skipped[0]}: {reasons[0]})")

    def _read(self, i: int, record: VideoRecord, skipped: list[str], reasons: list[str]) -> dict[str, Any]:
        reader, n, h, w = self._open(record.path)
        params = self.draw_params(i, n, h, w)
        video, ref_image = self.load_clip(record.path, params, reader=reader)
        extras = self.condition.load_extras(record.extras, self.span(params, reader, h, w)) \
            if self.condition is not None else {}
        return {
            "video": video,  # (3, F, H, W)
            "ref_image": ref_image,  # (3, H, W)
            "caption": record.caption,
            "path": record.path,
            "index": i,  # the record actually read: differs from the requested index after a skip
            "frame_indices": torch.tensor(params.frame_indices, dtype=torch.long),  # (F,)
            "ref_index": params.ref_index,
            "stride": params.stride,
            "crop": params.crop,
            "short": params.short,
            "skipped": skipped,
            "skip_reasons": reasons,
            "extras": extras,  # the condition's raw extra tensors of this clip
            "draws": dict(params.draws),  # the condition's random choices of this clip
        }


def collate_clips(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, tensorise ints/bools/crop boxes, keep strings as lists and concatenate skips;
    nested mappings (the condition's `extras` and `draws`) are collated key by key."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key in ("skipped", "skip_reasons"):
            out[key] = [v for item_values in values for v in item_values]
        elif isinstance(values[0], dict):
            out[key] = _collate_values(values)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)  # video (B, 3, F, H, W), ref_image (B, 3, H, W), ...
        elif isinstance(values[0], bool):  # before int: bool is an int subclass
            out[key] = torch.tensor(values, dtype=torch.bool)  # (B,)
        elif isinstance(values[0], (int, tuple)):
            out[key] = torch.tensor(values, dtype=torch.long)  # (B,) or crop (B, 4)
        else:
            out[key] = values
    if "short" in out:
        out["num_short"] = sum(bool(item["short"]) for item in batch)
    return out


def _collate_values(dicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per key: tensors stacked (B, ...), numbers to a (B,) tensor, anything else as a list."""
    out: dict[str, Any] = {}
    for key in dicts[0]:
        values = [d[key] for d in dicts]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


@dataclass
class DataStats:
    """Epoch-level counts of clips, skipped files and padded short videos, fed with items or batches."""

    clips: int = 0
    short: int = 0
    skipped: set[str] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)

    def update(self, batch: dict[str, Any]) -> None:
        paths, short = batch["path"], batch["short"]
        self.clips += 1 if isinstance(paths, str) else len(paths)
        self.short += int(short.sum()) if isinstance(short, torch.Tensor) else int(short)
        reasons = batch.get("skip_reasons") or [""] * len(batch["skipped"])
        for path, reason in zip(batch["skipped"], reasons):
            self.skipped.add(path)
            self.reasons.setdefault(path, reason)

    def reset(self) -> None:
        self.clips, self.short = 0, 0
        self.skipped.clear()
        self.reasons.clear()

    def summary(self, max_listed: int = 5) -> str:
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        text = f"{plural(self.clips, 'clip')} read, {plural(len(self.skipped), 'file')} skipped"
        if self.skipped:
            listed = [f"{p}: {self.reasons.get(p) or 'unknown reason'}" for p in sorted(self.skipped)]
            more = len(listed) - max_listed
            text += f" ({'; '.join(listed[:max_listed])}{f'; and {more} more' if more > 0 else ''})"
        return text + f", {plural(self.short, 'short video')} padded"
