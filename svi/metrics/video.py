"""What an evaluation reads: frames (streamed segment by segment), segment boundaries, ground truth.

A long video does not fit in memory at paper size (250 s of 480x832 is ~5 GB of uint8), so every
metric is computed one segment at a time from a `VideoSource`; only small per-frame numbers and
per-frame feature vectors are kept.

Segments are aligned to the generator's clips: `svi-generate` writes one `state/clip_NNNN.json` per
committed clip with the number of frames that clip emitted (F - K for every clip; the last one's K
hand-off frames are its `tail`, which ends the video), so segment i = the frames clip i added to
`video.mp4`. Without that state (a plain video),
fixed windows of `segment_seconds` are used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

_CLIP_STATE = re.compile(r"^clip_(\d{4,})\.json$")


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of the video; `index` counts from 0."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def segments_from_counts(counts: list[int]) -> list[Segment]:
    """Consecutive segments of the given lengths (e.g. the frames each clip emitted)."""
    out, start = [], 0
    for i, n in enumerate(counts):
        if n < 1:
            raise ValueError(f"segment {i} has {n} frames; every segment needs at least one")
        out.append(Segment(i, start, start + int(n)))
        start += int(n)
    return out


def fixed_segments(num_frames: int, length: int) -> list[Segment]:
    """Windows of `length` frames; a short remainder (< half a window) joins the last window."""
    if length < 1:
        raise ValueError(f"segment length must be >= 1 frame, got {length}")
    bounds = list(range(0, num_frames, length)) + [num_frames]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < length / 2:
        del bounds[-2]
    return [Segment(i, a, b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def seams(segments: list[Segment]) -> list[int]:
    """Frame indices that start a new segment (t such that frames t-1 and t lie in different clips)."""
    return [s.start for s in segments[1:]]


class VideoSource(Protocol):
    """Random access to uint8 frames (n, H, W, 3)."""

    fps: float

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class ArrayVideo:
    """Frames already in memory (tests, the rollout callback)."""

    def __init__(self, frames: np.ndarray, fps: float = 16.0):
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {frames.shape}")
        self.frames, self.fps = frames, float(fps)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.frames.shape[1:3])

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.frames[start:stop]


class FileVideo:
    """An mp4 (any format decord reads), decoded range by range: never the whole video at once."""

    def __init__(self, path: str | Path):
        import decord

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video {self.path} does not exist")
        self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
        self.fps = float(self._reader.get_avg_fps())

    def __len__(self) -> int:
        return len(self._reader)

    @property
    def shape(self) -> tuple[int, int]:
        h, w, _ = self._reader[0].shape
        return int(h), int(w)

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, len(self))
        if stop <= start:
            return np.zeros((0, *self.shape, 3), dtype=np.uint8)
        return self._reader.get_batch(list(range(start, stop))).asnumpy()


@dataclass
class GeneratedRun:
    """A `svi-generate` output directory, as far as evaluation cares (docs/generate.md)."""

    root: Path
    video_path: Path
    fps: float
    clip_frames: list[int]  # frames each committed clip emitted; [] without state
    num_frames: int | None  # F per clip (from the saved config), if known
    num_motion_frames: int | None  # K, if known
    config: dict

    @property
    def latents_dir(self) -> Path:
        return self.root / "latents"

    def segments(self, total_frames: int, segment_seconds: float | None) -> tuple[list[Segment], str]:
        """Segments aligned to clips when the run has clip state (and no fixed length is asked for)."""
        if segment_seconds is None and self.clip_frames:
            if sum(self.clip_frames) != total_frames:
                raise ValueError(f"{self.root}: the clip states account for {sum(self.clip_frames)} frames but "
                                 f"{self.video_path.name} has {total_frames}; was the directory edited? "
                                 f"Pass metrics.segment_seconds=S to use fixed windows instead")
            return segments_from_counts(self.clip_frames), "clips"
        seconds = segment_seconds if segment_seconds is not None else 5.0
        return fixed_segments(total_frames, max(1, round(seconds * self.fps))), f"fixed_{seconds:g}s"


def open_run(path: str | Path) -> GeneratedRun:
    """Read a generation directory (`video.mp4` + `state/`), or a bare video file."""
    path = Path(path).expanduser()
    if path.is_file():
        return GeneratedRun(path.parent, path, FileVideo(path).fps, [], None, None, {})
    video = path / "video.mp4"
    if not video.is_file():
        raise FileNotFoundError(f"{path} holds no video.mp4: run= must be an svi-generate output directory "
                                f"(or a video file)")
    state = path / "state"
    config = {}
    if (state / "config.json").is_file():
        config = json.loads((state / "config.json").read_text()).get("config", {})
    counts = []
    if state.is_dir():
        files = sorted((int(m.group(1)), p) for p in state.iterdir() if (m := _CLIP_STATE.match(p.name)))
        states = [json.loads(p.read_text()) for _, p in files]
        counts = [int(s["frames"]) for s in states]
        if states:  # the last clip's hand-off frames end the video (written apart, see OutputSession)
            counts[-1] += int(states[-1].get("tail", 0))
    fps = float(config.get("fps") or FileVideo(video).fps)
    cond = config.get("condition") or {}
    return GeneratedRun(path, video, fps, counts, config.get("num_frames"), cond.get("num_motion_frames"), config)
