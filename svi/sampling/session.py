"""The output directory of a long generation: streaming writes, per-clip state, and resume.

    out/
      video.mp4             every committed clip, rebuilt by stream copy after each clip
      clips/clip_0000.mp4   the frames each clip emitted (what video.mp4 is made of)
      clips/clip_0003.tail.mp4  the last chunk's tail (SVI: the final clip's K hand-off frames), if any
      state/config.json     the generation config resume compares against (hash + content)
      state/clip_0000.json  per clip: index, cursor, seed, prompt, frame counts, config hash, and the
                            clip's full schedule entry (`spec`) that a resume must reproduce
      state/carry_0000.pt   the tensors the next clip needs (motion frames; latents for latent hand-off)
      latents/clip_0000.pt  with save_latents: the clip's denoised latents (1, 16, T, h, w), for metrics

Why segments: an mp4 cannot be appended to once closed, and a killed writer leaves an unreadable file
(the index is written at close). So each clip is written as its own small mp4, and `video.mp4` is
re-made from the segments with ffmpeg's concat demuxer in copy mode: packets are copied, nothing is
re-encoded, and the frames of `video.mp4` are exactly the frames of the segments. The copy costs one
read and write of the video so far (milliseconds at test size, about 1 s per 170 MB), small next to a
clip's sampling time.

Commit order per clip (every file is written to a temporary name, then renamed):
segment (and tail) -> carry -> `clip_NNNN.json` (the commit point) -> `video.mp4` -> the previous
chunk's tail is deleted. A kill at any moment leaves
either the previous or the new commit; on `resume=true` files past the last commit are removed,
`video.mp4` is rebuilt, and sampling restarts at the stored cursor with the stored carry. Noise is a
function of each clip's seed only, so a resumed run produces the same frames as an uninterrupted one.
Only the last two carries are kept, so disk and memory stay flat in the number of clips.

Extending: the schedule is not part of the config hash. Each committed clip stores its own schedule
entry, and a resume only requires the committed clips' entries to be unchanged, so a finished run can
be continued with a larger `num_clips`. A chunk's `tail` (the frames that end the video only while the
chunk is the last one) is written as its own segment, so continuing drops it from `video.mp4` without
re-encoding anything: the result has exactly the frames of one uninterrupted longer run.
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

STATE_VERSION = 2  # 2: `spec` and `tail` per clip; the schedule left out of the config hash
_STATE_RE = re.compile(r"^clip_(\d{4,})\.json$")
_KEEP_CARRIES = 2


class ResumeError(RuntimeError):
    """The output directory cannot be resumed with this configuration."""


@dataclass
class ResumePoint:
    chunks_done: int = 0  # committed chunks (clips)
    cursor: int = 0  # where the sampler restarts
    carry: dict[str, Tensor] = field(default_factory=dict)
    frames_total: int = 0  # frames in video.mp4 (the last chunk's tail included)


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


# What to change back when a committed clip's schedule entry differs (named in the error).
_SPEC_KNOBS = {"prompt": "prompts= (the file, prompt_repeat_times, use_first_prompt_only)",
               "seed": "seed / seed_stride / same_seed / preset (or the entry's seed)",
               "cfg": "cfg (or the entry's cfg)", "negative_prompt": "negative_prompt / preset (or the entry's)",
               "extras": "the prompt file's per-clip inputs", "index": "schedule"}


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class OutputSession:
    """Writes a generation into `out` chunk by chunk, and picks it up again after an interruption.

    `schedule`: the run's per-clip entries (`ClipSpec.to_dict()`); a chunk whose `info` names a `clip`
    stores its entry, and a resume refuses a schedule that gives a committed clip other settings.
    """

    def __init__(self, out: str | Path, config: dict[str, Any], fps: int = 16, save_latents: bool = False,
                 schedule: list[dict[str, Any]] | None = None):
        self.out = Path(out)
        self.config = _plain(config)  # plain JSON types
        self.hash = config_hash(self.config)
        self.schedule = None if schedule is None else _plain(list(schedule))
        self.fps = fps
        self.video_path = self.out / "video.mp4"
        self.clips_dir = self.out / "clips"
        self.state_dir = self.out / "state"
        self.latents_dir = self.out / "latents"
        self.save_latents = save_latents
        self.done = 0
        self.frames_total = 0  # frames of the stream so far (without the last chunk's tail)
        self.tail = 0  # the last committed chunk's tail frames, shown at the end of video.mp4

    @property
    def video_frames(self) -> int:
        return self.frames_total + self.tail

    def segment(self, k: int) -> Path:
        return self.clips_dir / f"clip_{k:04d}.mp4"

    def tail_file(self, k: int) -> Path:
        return self.clips_dir / f"clip_{k:04d}.tail.mp4"

    def _segments(self) -> list[Path]:
        return [self.segment(j) for j in range(self.done)] + ([self.tail_file(self.done - 1)] if self.tail else [])

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
        """Open the directory: fresh, or resumed after the last committed clip. Raises before any compute,
        and before anything in `out` is touched."""
        done = self.committed()
        if done and not resume:
            raise FileExistsError(f"{self.out} already holds a generation ({len(done)} clip(s) committed); "
                                  f"pass resume=true to continue it, or choose another out=")
        if not done:
            self.clips_dir.mkdir(parents=True, exist_ok=True)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._remove_after(-1)
            stored = {"hash": self.hash, "config": self.config}
            text = json.dumps(stored, indent=1)
            _atomic_write_text(self.state_dir / "config.json", text)
            return ResumePoint()
        self._check_config()
        if done != list(range(len(done))):
            raise ResumeError(f"{self.state_dir}: committed clips {done} are not contiguous from 0; "
                              f"the directory was edited by hand - start a new out=")
        states = [json.loads(self.state_file(k).read_text(encoding="utf-8")) for k in done]
        last = states[-1]
        if last.get("config_hash") != self.hash:
            raise ResumeError(f"{self.state_file(done[-1])} was written with config hash "
                              f"{last.get('config_hash')}, this run has {self.hash}")
        self._check_schedule(states)
        tail = int(last.get("tail", 0))
        needed = [self.segment(k) for k in done] + [self.carry_file(done[-1])]
        missing = [str(p) for p in needed + ([self.tail_file(done[-1])] if tail else []) if not p.is_file()]
        if missing:
            raise ResumeError(f"{self.out} is missing committed files {missing}; start a new out=")
        # Every check passed: from here on the directory is tidied (nothing above wrote to it).
        self._remove_after(done[-1])
        for p in self.clips_dir.glob("clip_*.tail.mp4"):  # a tail superseded by a later commit
            if p != self.tail_file(done[-1]):
                p.unlink()
        self.done, self.tail = len(done), tail
        self.frames_total = int(last["frames_total"]) - tail
        concat_mp4(self._segments(), self.video_path)
        carry = torch.load(self.carry_file(done[-1]), map_location="cpu", weights_only=True)
        return ResumePoint(chunks_done=self.done, cursor=int(last["cursor"]), carry=carry,
                           frames_total=self.video_frames)

    def _check_schedule(self, states: list[dict[str, Any]]) -> None:
        """The committed clips' schedule entries must be this run's entries for them: a resume keeps what
        is made and may only add clips after it (`num_clips` larger than before)."""
        if self.schedule is None:
            return
        for state in states:
            spec = state.get("spec")
            if spec is None:  # a chunk that is no schedule entry (the existing video of `video=`), or v1
                continue
            i = int(spec["index"])
            if i >= len(self.schedule):
                raise ResumeError(
                    f"cannot resume {self.out}: it already holds clip {i}, but this run's schedule has only "
                    f"{len(self.schedule)} clip(s). A resume keeps every committed clip and can only make the "
                    f"video longer: pass num_clips >= {i + 1} (or the original), or generate into a new out=")
            new = self.schedule[i]
            if new != spec:
                keys = [k for k in sorted(set(spec) | set(new)) if spec.get(k) != new.get(k)]
                changes = "; ".join(f"{k}: {spec.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys)
                knobs = ", ".join(dict.fromkeys(_SPEC_KNOBS.get(k, k) for k in keys))
                raise ResumeError(
                    f"cannot resume {self.out}: clip {i} was made with other settings than this run's schedule "
                    f"gives it ({changes}). Committed clips keep their prompt, seed, cfg, negative prompt and "
                    f"per-clip inputs; only clips after them may be added (a larger num_clips). Resume with the "
                    f"original {knobs}, or generate into a new out=")

    def _check_config(self) -> None:
        path = self.state_dir / "config.json"
        if not path.is_file():
            raise ResumeError(f"{path} is missing: {self.out} cannot be resumed; start a new out=")
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("hash") == self.hash:
            return
        old = stored.get("config", {})
        if "schedule" in old and "schedule" not in self.config and self.schedule is not None:
            # A state written before runs could be extended: the hash covered the whole schedule.
            if config_hash(_plain({**self.config, "schedule": self.schedule})) == stored.get("hash"):
                self.hash = stored["hash"]  # the same run: keep its hash for the clips still to come
                return
            if config_hash({k: v for k, v in old.items() if k != "schedule"}) == self.hash:
                n = len(old["schedule"])
                changes = config_diff({"schedule": old["schedule"]}, {"schedule": self.schedule})
                raise ResumeError(
                    f"cannot resume {self.out}: it was started before runs could be extended, so it resumes only "
                    f"with its original schedule of {n} clip(s). Changed: " + "; ".join(changes)
                    + f". Resume with num_clips={n} and the original prompts, seed and cfg, or generate into a "
                    f"new out=")
        changes = config_diff(old, self.config)
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
        """Write one chunk: segment (and tail), carry, state (the commit point), then the grown video.mp4."""
        k = self.done
        tail = min(int(chunk.tail), len(chunk.frames))
        body = chunk.frames[:len(chunk.frames) - tail]
        parts = [(self.segment(k), body)] + ([(self.tail_file(k), chunk.frames[len(body):])] if tail else [])
        for path, frames in parts:
            tmp = path.with_name(path.name.replace(".mp4", ".tmp.mp4"))
            write_mp4(tmp, frames, self.fps)
            os.replace(tmp, path)
        carry_tmp = self.carry_file(k).with_name(self.carry_file(k).name + ".tmp")
        torch.save({name: t.detach().cpu() for name, t in chunk.carry.items()}, carry_tmp)
        os.replace(carry_tmp, self.carry_file(k))
        if self.save_latents and chunk.latents is not None:
            self.latents_dir.mkdir(exist_ok=True)
            latents = self.latents_dir / f"clip_{k:04d}.pt"
            torch.save(chunk.latents.detach().cpu(), latents.with_name(latents.name + ".tmp"))
            os.replace(latents.with_name(latents.name + ".tmp"), latents)
        self.frames_total += len(body)
        state = {"version": STATE_VERSION, "chunk": k, "index": chunk.index, "cursor": chunk.cursor,
                 "config_hash": self.hash, "frames": len(body), "tail": tail,
                 "frames_total": self.frames_total + tail,
                 "segment": str(self.segment(k).relative_to(self.out)),
                 "carry": str(self.carry_file(k).relative_to(self.out)),
                 **chunk.info}
        clip = chunk.info.get("clip")
        if self.schedule is not None and isinstance(clip, int) and 0 <= clip < len(self.schedule):
            state["spec"] = self.schedule[clip]
        _atomic_write_text(self.state_file(k), json.dumps(state, indent=1))
        self.done, self.tail = k + 1, tail
        concat_mp4(self._segments(), self.video_path)
        if k > 0:
            self.tail_file(k - 1).unlink(missing_ok=True)  # the video goes on: the previous tail is gone
        old = k - _KEEP_CARRIES
        if old >= 0:
            self.carry_file(old).unlink(missing_ok=True)
        return self.state_file(k)


class CountingSession(OutputSession):
    """The session of a process that computes but does not write (CFG-parallel ranks other than 0): it keeps
    the counts the entrypoint reads (`done`, `frames_total`, `tail`) and touches no file."""

    def start(self, resume: bool) -> ResumePoint:
        raise RuntimeError("a CountingSession does not open the directory: `follow` the writing process instead")

    def follow(self, done: int, frames_total: int, tail: int) -> None:
        self.done, self.frames_total, self.tail = done, frames_total, tail

    def commit(self, chunk: Chunk) -> Path:
        tail = min(int(chunk.tail), len(chunk.frames))
        self.frames_total += len(chunk.frames) - tail
        self.done, self.tail = self.done + 1, tail
        return self.state_file(self.done - 1)
