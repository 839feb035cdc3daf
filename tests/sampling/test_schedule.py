"""The per-clip schedule: official prompt-file formats, YAML/JSON schedules, seeds, validation."""

import json
import warnings

import pytest

from svi.conditions import ShotCondition
from svi.sampling.schedule import WAN_NEGATIVE_PROMPT, ScheduleError, build_schedule, load_entries


def _prompts(clips):
    return [c.prompt for c in clips]


def test_line_file_skips_blank_and_comment_lines(prompt_file):
    assert [e["prompt"] for e in load_entries(prompt_file)] == ["a red disc drifts to the right", "a blue square spins"]


def test_python_list_file_is_parsed_not_executed(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_text('# film script\nprompts = [\n    "a cat sits",  # first\n    "the cat jumps",\n]\n')
    assert [e["prompt"] for e in load_entries(path)] == ["a cat sits", "the cat jumps"]
    evil = tmp_path / "evil.txt"
    evil.write_text('prompts = [__import__("os").getcwd()]\n')
    with pytest.raises(ScheduleError, match="literal"):
        load_entries(evil)


def test_yaml_and_json_schedules_carry_per_clip_settings(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("- a plain prompt\n- {prompt: second, seed: 7, cfg: 2.0, negative_prompt: blurry}\n")
    clips = build_schedule(y)
    assert _prompts(clips) == ["a plain prompt", "second"]
    assert (clips[0].seed, clips[0].cfg, clips[0].negative_prompt) == (0, 5.0, WAN_NEGATIVE_PROMPT)
    assert (clips[1].seed, clips[1].cfg, clips[1].negative_prompt) == (7, 2.0, "blurry")
    j = tmp_path / "s.json"
    j.write_text(json.dumps({"clips": [{"prompt": "one", "seed": 3}, {"prompt": "two"}]}))
    assert _prompts(build_schedule(j, num_clips=2)) == ["one", "two"]


def test_repeat_first_only_and_cycling(prompt_file):
    a, b = "a red disc drifts to the right", "a blue square spins"
    assert _prompts(build_schedule(prompt_file)) == [a, b]  # num_clips null: every prompt once
    assert _prompts(build_schedule(prompt_file, num_clips=4, prompt_repeat_times=2)) == [a, a, b, b]
    assert _prompts(build_schedule(prompt_file, num_clips=3, use_first_prompt_only=True)) == [a, a, a]
    with pytest.warns(UserWarning, match="cycle"):
        assert _prompts(build_schedule(prompt_file, num_clips=3)) == [a, b, a]


def test_seeds_differ_per_clip_and_identical_seeds_warn(prompt_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clips = build_schedule(prompt_file, num_clips=2, base_seed=10)
    assert [c.seed for c in clips] == [10, 11]
    with pytest.warns(UserWarning, match="share a seed"):
        clips = build_schedule(prompt_file, num_clips=2, base_seed=10, same_seed=True)
    assert [c.seed for c in clips] == [10, 10]


@pytest.mark.parametrize("content,suffix,match", [
    ("", ".txt", "no prompts"),
    ("# only a comment\n\n", ".txt", "no prompts"),
    ("[]", ".yaml", "no prompts"),
    ("- {prompt: ''}\n", ".yaml", "empty or missing prompt"),
    ("- {prompt: x, sed: 3}\n", ".yaml", "unknown key"),
    ("{clip: []}", ".yaml", "clips"),
    ("[1, 2", ".json", "not valid JSON"),
])
def test_bad_prompt_files_fail_clearly(tmp_path, content, suffix, match):
    path = tmp_path / f"p{suffix}"
    path.write_text(content)
    with pytest.raises(ScheduleError, match=match):
        build_schedule(path, num_clips=1)


def test_bad_settings_fail_clearly(prompt_file, tmp_path):
    with pytest.raises(ScheduleError, match="does not exist"):
        build_schedule(tmp_path / "missing.txt")
    with pytest.raises(ScheduleError, match="num_clips must be"):
        build_schedule(prompt_file, num_clips=0)
    with pytest.raises(ScheduleError, match="num_clips is required"):
        build_schedule(prompt_file, use_first_prompt_only=True)
    with pytest.raises(ScheduleError, match="cfg"):
        build_schedule(prompt_file, cfg=0.0)
    with pytest.raises(ScheduleError, match="prompt_repeat_times"):
        build_schedule(prompt_file, prompt_repeat_times=0)


def test_extra_inputs_are_the_conditions_own_keys(tmp_path):
    """A schedule entry may carry only the condition's extra fields; they land in ClipSpec.extras, and a
    condition that takes none refuses them before any compute."""
    path = tmp_path / "s.yaml"
    path.write_text(f"- {{prompt: talk, audio: {tmp_path / 'a.wav'}}}\n- {{prompt: quiet}}\n")
    with pytest.raises(ScheduleError, match=r"unknown key\(s\) \['audio'\]"):
        build_schedule(path)
    clips = build_schedule(path, extra_fields=("audio",))
    assert clips[0].extras == {"audio": str(tmp_path / "a.wav")} and clips[1].extras == {}
    with pytest.raises(ValueError, match=r"takes no extra inputs.*\['audio'\]"):
        ShotCondition().check_schedule(clips, {})
    with pytest.raises(ValueError, match=r"\['speech'\]"):
        ShotCondition().check_schedule(build_schedule(path, extra_fields=("audio",))[1:], {"speech": "x.wav"})


def test_seed_stride_gives_the_official_42_i_seeds(prompt_file):
    clips = build_schedule(prompt_file, num_clips=4, base_seed=0, seed_stride=42)
    assert [c.seed for c in clips] == [0, 42, 84, 126]
    assert [c.seed for c in build_schedule(prompt_file, num_clips=3, base_seed=7)] == [7, 8, 9]
