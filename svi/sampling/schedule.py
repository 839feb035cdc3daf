"""The per-clip schedule of a long generation: what each clip is told (prompt, seed, cfg, ...).

A schedule is a list of `ClipSpec`, one per clip, built and validated before any model is loaded, so a
typo in a prompt file fails in a second rather than after the weights are in memory.

Prompt sources (`load_entries`):

* a text file with one prompt per line (blank lines and `#` comments skipped) - the official format;
* a text file holding a python-style list, `prompts = ["...", "..."]` - the other official format
  (read with `ast.literal_eval`, never executed);
* a YAML or JSON file: a list whose items are a prompt string or a mapping with `prompt` and any of
  `negative_prompt`, `seed`, `cfg`, plus the condition type's extra inputs (`Condition.extra_fields`,
  e.g. a per-clip value or file), which land in `ClipSpec.extras` (a top-level mapping with a `clips:`
  list also works).

Entries become clips (`build_schedule`):

* `use_first_prompt_only`: every clip uses entry 0 (SVI-Shot: one prompt for the whole video);
* otherwise clip i uses entry `(i // prompt_repeat_times) % len(entries)`; `num_clips` null means
  "every entry once (times the repeats)". Asking for more clips than that cycles the entries with a
  warning (the official script silently stops at the last prompt instead).
* seed of clip i: the entry's `seed` if given, else `base_seed + seed_stride * i` (different noise per
  clip, as the maintainers advise; SVI's scripts use stride 42, `preset=svi`); `same_seed=true` gives
  every clip `base_seed`. Repeated seeds are warned about.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

# Wan's standard negative prompt (Wan 2.1/2.2 `sample_neg_prompt`; SVI's scripts pass an English translation).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# The English translation of it that SVI's generation scripts pass.
SVI_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
    "messy background, three legs, many people in the background, walking backwards"
)
ENTRY_KEYS = ("prompt", "negative_prompt", "seed", "cfg")
STRUCTURED_SUFFIXES = (".yaml", ".yml", ".json")


class ScheduleError(ValueError):
    """The prompt file or schedule settings cannot produce a valid schedule."""


@dataclass(frozen=True)
class ClipSpec:
    """What clip `index` is generated with."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    cfg: float  # text classifier-free guidance scale
    extras: dict[str, Any] = field(default_factory=dict)  # the condition type's per-clip inputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Reading prompt files
# ----------------------------------------------------------------------------------------------

def load_entries(path: str | Path, extra_fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a prompt file into a list of entries `{"prompt": str, ...}` (see the module docstring).

    `extra_fields`: the keys an entry may carry besides the standard ones (the condition's inputs).
    """
    path = Path(path)
    if not path.is_file():
        raise ScheduleError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in STRUCTURED_SUFFIXES:
        entries = _structured_entries(path, text, (*ENTRY_KEYS, *extra_fields))
    elif re.search(r"^\s*prompts\s*=\s*\[", text, flags=re.MULTILINE):
        entries = [{"prompt": p} for p in _python_list(path, text)]
    else:
        entries = [{"prompt": line.strip()} for line in text.splitlines()
                   if line.strip() and not line.strip().startswith("#")]
    if not entries:
        raise ScheduleError(f"prompt file {path} holds no prompts")
    for i, entry in enumerate(entries):
        prompt = entry.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ScheduleError(f"{path}: entry {i} has an empty or missing prompt ({entry!r})")
    return entries


def _python_list(path: Path, text: str) -> list[str]:
    """`prompts = [...]`, parsed as a literal (the official loader exec()s it; we never run file content)."""
    start = re.search(r"^\s*prompts\s*=\s*\[", text, flags=re.MULTILINE).start()
    try:
        module = ast.parse(text[start:].strip())
        value = ast.literal_eval(module.body[0].value)
    except (SyntaxError, ValueError, IndexError, AttributeError) as err:
        raise ScheduleError(f"{path}: cannot read `prompts = [...]` as a python literal ({err})") from err
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise ScheduleError(f"{path}: `prompts` must be a list of strings")
    return [p.strip() for p in value]


def _structured_entries(path: Path, text: str, allowed: Sequence[str]) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ScheduleError(f"{path} is not valid JSON: {err}") from err
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ScheduleError(f"{path} is not valid YAML: {err}") from err
    if isinstance(data, dict):
        unknown = set(data) - {"clips"}
        if "clips" not in data or unknown:
            raise ScheduleError(f"{path}: a mapping must have one key, `clips` (a list); got {sorted(data)}")
        data = data["clips"]
    if not isinstance(data, list):
        raise ScheduleError(f"{path}: expected a list of clips, got {type(data).__name__}")
    entries = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise ScheduleError(f"{path}: clip {i} must be a prompt string or a mapping, got {item!r}")
        unknown = set(item) - set(allowed)
        if unknown:
            raise ScheduleError(f"{path}: clip {i} has unknown key(s) {sorted(unknown)}; allowed here (with this "
                                f"condition): {list(allowed)}")
        entries.append(dict(item))
    return entries


# ----------------------------------------------------------------------------------------------
# Entries -> clips
# ----------------------------------------------------------------------------------------------

def build_schedule(
    entries: Sequence[dict[str, Any]] | str | Path,
    num_clips: int | None = None,
    base_seed: int = 0,
    cfg: float = 5.0,
    negative_prompt: str | None = None,
    use_first_prompt_only: bool = False,
    prompt_repeat_times: int = 1,
    same_seed: bool = False,
    seed_stride: int = 1,
    extra_fields: Sequence[str] = (),
) -> list[ClipSpec]:
    """One `ClipSpec` per clip; raises `ScheduleError` on anything that cannot run.

    Seed of clip i: the entry's, else `base_seed + seed_stride * i` (`base_seed` for all with `same_seed`).
    Entry keys in `extra_fields` (the condition's inputs) go to `ClipSpec.extras`.
    """
    if isinstance(entries, (str, Path)):
        entries = load_entries(entries, extra_fields)
    if not entries:
        raise ScheduleError("the prompt list is empty")
    if prompt_repeat_times < 1:
        raise ScheduleError(f"prompt_repeat_times must be >= 1, got {prompt_repeat_times}")
    available = 1 if use_first_prompt_only else len(entries) * prompt_repeat_times
    if num_clips is None:
        if use_first_prompt_only:
            raise ScheduleError("num_clips is required when one prompt serves every clip "
                                "(use_first_prompt_only, the default for condition=shot)")
        num_clips = available
    if num_clips < 1:
        raise ScheduleError(f"num_clips must be >= 1, got {num_clips}")
    if not use_first_prompt_only and num_clips > available:
        warnings.warn(f"num_clips={num_clips} is more than {len(entries)} prompts x {prompt_repeat_times} "
                      f"repeats: the prompts cycle from the start", stacklevel=2)
    if cfg <= 0:
        raise ScheduleError(f"cfg must be > 0 (1 disables guidance), got {cfg}")
    negative_prompt = WAN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt

    clips = []
    for i in range(num_clips):
        entry = entries[0] if use_first_prompt_only else entries[(i // prompt_repeat_times) % len(entries)]
        seed = entry.get("seed")
        if seed is None:
            seed = base_seed if same_seed else base_seed + seed_stride * i
        clip_cfg = float(entry.get("cfg", cfg))
        if clip_cfg <= 0:
            raise ScheduleError(f"clip {i}: cfg must be > 0, got {clip_cfg}")
        neg = entry.get("negative_prompt")
        clips.append(ClipSpec(index=i, prompt=" ".join(entry["prompt"].split()),
                              negative_prompt=negative_prompt if neg is None else neg,
                              seed=int(seed), cfg=clip_cfg,
                              extras={k: entry[k] for k in extra_fields if k in entry}))
    seeds = [c.seed for c in clips]
    if len(set(seeds)) < len(seeds):
        warnings.warn("several clips share a seed: identical noise in consecutive clips accumulates "
                      "artifacts (the maintainers advise a different seed per clip)", stacklevel=2)
    return clips
