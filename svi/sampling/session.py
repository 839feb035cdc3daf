"""The output directory of a long generation: streaming writes, per-clip state, and resume.

    out/
      video.mp4             every committed clip, rebuilt by stream copy after each clip
      clips/clip_0000.mp4   the frames each clip emitted (what video.mp4 is made of)
      state/config.json     the generation config resume compares against (hash + content)
      state/clip_0000.json  per clip: index, cursor, seed, prompt, frame counts, config hash
      state/carry_0000.pt   the tensors the next clip needs (motion frames; latents for latent hand-off)
      latents/clip_0000.pt  with save_latents: the clip's denoised latents (1, 16, T, h, w), for metrics

Why segments: an mp4 cannot be appended to once closed, and a killed writer leaves an unreadable file
(the index is written at close). So each clip is written as its own small mp4, and `video.mp4` is
re-made from the segments with ffmpeg's concat demuxer in copy mode: packets are copied, nothing is
re-encoded, and the frames of `video.mp4` are exactly the frames of the segments. The copy costs one
read and write of the video so far (milliseconds at test size, about 1 s per 170 MB), small next to a
clip's sampling time.

Commit order per clip (every file is written to a temporary name, then renamed):
segment -> carry -> `clip_NNNN.json` (the commit point) -> `video.mp4`. A kill at any moment leaves
either the previous or the new commit; on `resume=true` files past the last commit are removed,
`video.mp4` is rebuilt, and sampling restarts at the stored cursor with the stored carry. Noise is a
function of each clip's seed only, so a resumed run produces the same frames as an uninterrupted one.
Only the last two carries are kept, so disk and memory stay flat in the number of clips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from svi.sampling.base import Chunk
from svi.sampling.media import concat_mp4, write_mp4

STATE_VERSION = 1
_STATE_RE = re.compile(r"^clip_(\d{4,})\.json$")
_KEEP_CARRIES = 2


class ResumeError(RuntimeError):
    """The output directory cannot be resumed with this configuration."""


@dataclass
class ResumePoint:
    chunks_done: int = 0  # committed chunks (clips)
    cursor: int = 0  # where the sampler restarts
    carry: dict[str, Tensor] = field(default_factory=dict)
    frames_total: int = 0  # frames in video.mp4


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out or {prefix.rstrip("."): []}
    return {prefix.rstrip("."): value}


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class OutputSession:
    """Writes a generation into `out` chunk by chunk, and picks it up again after an interruption."""

    def __init__(self, out: str | Path, config: dict[str, Any], fps: int = 16, save_latents: bool = False):
        self.out = Path(out)
        self.config = json.loads(json.dumps(config, sort_keys=True, default=str))  # plain JSON types
        self.hash = config_hash(self.config)
        self.fps = fps
        self.video_path = self.out / "video.mp4"
        self.clips_dir = self.out / "clips"
        self.state_dir = self.out / "state"
        self.latents_dir = self.out / "latents"
        self.save_latents = save_latents
        self.done = 0
        self.frames_total = 0

    def segment(self, k: int) -> Path:
        return self.clips_dir / f"clip_{k:04d}.mp4"

    def state_file(self, k: int) -> Path:
        return self.state_dir / f"clip_{k:04d}.json"

    def carry_file(self, k: int) -> Path:
        return self.state_dir / f"carry_{k:04d}.pt"

    def committed(self) -> list[int]:
        if not self.state_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.state_dir.iterdir() if (m := _STATE_RE.match(p.name)))

    # ------------------------------------------------------------------------------------------
    def start(self, resume: bool) -> ResumePoint:
        """Open the directory: fresh, or resumed after the last committed clip. Raises before any compute."""
        done = self.committed()
        if done and not resume:
            raise FileExistsError(f"{self.out} already holds a generation ({len(done)} clip(s) committed); "
                                  f"pass resume=true to continue it, or choose another out=")
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not done:
            self._remove_after(-1)
            stored = {"hash": self.hash, "config": self.config}
            text = json.dumps(stored, indent=1)
            _atomic_write_text(self.state_dir / "config.json", text)
            return ResumePoint()
        self._check_config()
        if done != list(range(len(done))):
            raise ResumeError(f"{self.state_dir}: committed clips {done} are not contiguous from 0; "
                              f"the directory was edited by hand - start a new out=")
        last = json.loads(self.state_file(done[-1]).read_text(encoding="utf-8"))
        if last.get("config_hash") != self.hash:
            raise ResumeError(f"{self.state_file(done[-1])} was written with config hash "
                              f"{last.get('config_hash')}, this run has {self.hash}")
        missing = [str(self.segment(k)) for k in done if not self.segment(k).is_file()]
        if missing or not self.carry_file(done[-1]).is_file():
            lost = missing or [str(self.carry_file(done[-1]))]
            raise ResumeError(f"{self.out} is missing committed files {lost}; start a new out=")
        self._remove_after(done[-1])
        self.done, self.frames_total = len(done), int(last["frames_total"])
        concat_mp4([self.segment(k) for k in range(self.done)], self.video_path)
        carry = torch.load(self.carry_file(done[-1]), map_location="cpu", weights_only=True)
        return ResumePoint(chunks_done=self.done, cursor=int(last["cursor"]), carry=carry,
                           frames_total=self.frames_total)

    def _check_config(self) -> None:
        path = self.state_dir / "config.json"
        if not path.is_file():
            raise ResumeError(f"{path} is missing: {self.out} cannot be resumed; start a new out=")
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("hash") != self.hash:
            changes = config_diff(stored.get("config", {}), self.config)
            raise ResumeError(
                f"cannot resume {self.out}: the configuration changed since it was started (hash "
                f"{stored.get('hash')} -> {self.hash}). Changed: " + "; ".join(changes)
                + ". Resume with the original settings, or generate into a new out=")

    def _remove_after(self, k: int) -> None:
        """Delete anything a killed run left past commit k (segments, carries, states, temporaries)."""
        for folder in (self.clips_dir, self.state_dir, self.latents_dir):
            for p in folder.iterdir() if folder.is_dir() else ():
                m = re.match(r"^(?:clip|carry)_(\d{4,})\.", p.name)
                if ".tmp" in p.name or (m and int(m.group(1)) > k):
                    p.unlink()
        for p in self.out.glob("video.*"):
            if p.name != "video.mp4":  # concat temporaries
                p.unlink()

    # ------------------------------------------------------------------------------------------
    def commit(self, chunk: Chunk) -> Path:
        """Write one chunk: segment, carry, state (the commit point), then the grown video.mp4."""
        k = self.done
        seg = self.segment(k)
        tmp = seg.with_name(f"clip_{k:04d}.tmp.mp4")
        write_mp4(tmp, chunk.frames, self.fps)
        os.replace(tmp, seg)
        carry_tmp = self.carry_file(k).with_name(self.carry_file(k).name + ".tmp")
        torch.save({name: t.detach().cpu() for name, t in chunk.carry.items()}, carry_tmp)
        os.replace(carry_tmp, self.carry_file(k))
        if self.save_latents and chunk.latents is not None:
            self.latents_dir.mkdir(exist_ok=True)
            latents = self.latents_dir / f"clip_{k:04d}.pt"
            torch.save(chunk.latents.detach().cpu(), latents.with_name(latents.name + ".tmp"))
            os.replace(latents.with_name(latents.name + ".tmp"), latents)
        self.frames_total += len(chunk.frames)
        state = {"version": STATE_VERSION, "chunk": k, "index": chunk.index, "cursor": chunk.cursor,
                 "config_hash": self.hash, "frames": len(chunk.frames), "frames_total": self.frames_total,
                 "segment": str(seg.relative_to(self.out)),
                 "carry": str(self.carry_file(k).relative_to(self.out)),
                 **chunk.info}
        _atomic_write_text(self.state_file(k), json.dumps(state, indent=1))
        self.done = k + 1
        concat_mp4([self.segment(j) for j in range(self.done)], self.video_path)
        old = k - _KEEP_CARRIES
        if old >= 0:
            self.carry_file(old).unlink(missing_ok=True)
        return self.state_file(k)
