"""Making a video longer: a finished run resumed with more clips, and a generation that continues an
existing video (`video=`). Both must give the frames of one uninterrupted longer run."""

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from svi.generate import generate
from svi.sampling import ResumeError
from svi.sampling.media import read_mp4, write_mp4
from tests.sampling.conftest import SMALL, compose_generate, write_image

VARIANTS = {
    "shot_pixel": ["condition=shot"],
    "film_latent": ["condition=film", "handoff=latent", "num_frames=9"],
}


def _cfg(out, image, prompts, n, *extra):
    return compose_generate([*SMALL, f"image={image}", f"prompts={prompts}", f"num_clips={n}", f"out={out}",
                             "save_latents=true", *extra])


def _tree(out):
    """Every file under `out` with its content hash: what a refused resume must leave as it was."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per variant: a finished 2-clip run and an uninterrupted 4-clip run, computed once."""
    root = tmp_path_factory.mktemp("extend")
    image, prompts = write_image(root / "image.png"), root / "prompts.txt"
    prompts.write_text("a red disc drifts to the right\na blue square spins\n")
    for name, extra in VARIANTS.items():
        generate(_cfg(root / name / "two", image, prompts, 2, *extra))
        generate(_cfg(root / name / "four", image, prompts, 4, *extra))
    return root, image, prompts


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_finished_run_extended_equals_one_longer_run(runs, tmp_path, variant):
    root, image, prompts = runs
    out = tmp_path / "run"
    shutil.copytree(root / variant / "two", out)
    assert (out / "clips/clip_0001.tail.mp4").is_file()  # finished: its last clip shows its hand-off frames
    summary = generate(_cfg(out, image, prompts, 4, *VARIANTS[variant], "resume=true"))
    four = root / variant / "four"
    assert summary["clips_done"] == 4 and summary["frames"] == len(read_mp4(four / "video.mp4"))
    assert np.array_equal(read_mp4(out / "video.mp4"), read_mp4(four / "video.mp4"))  # frame for frame
    for k in range(4):
        assert torch.equal(torch.load(out / f"latents/clip_{k:04d}.pt"), torch.load(four / f"latents/clip_{k:04d}.pt"))
    tails = sorted(p.name for p in (out / "clips").glob("*.tail.mp4"))
    assert tails == ["clip_0003.tail.mp4"]  # clip 1's tail left the video when clip 2 was committed
    state = json.loads((out / "state/clip_0003.json").read_text())
    assert state["spec"]["seed"] == 3 * 42 and state["spec"]["index"] == 3
    from svi.metrics.video import open_run

    F, K = (9, 5) if variant == "film_latent" else (5, 1)
    assert open_run(out).clip_frames == [F - K] * 3 + [F]  # svi-evaluate's segments: one per clip


def test_an_interrupted_extension_resumes_to_the_same_frames(runs, tmp_path):
    root, image, prompts = runs
    out = tmp_path / "run"
    shutil.copytree(root / "shot_pixel" / "two", out)
    generate(_cfg(out, image, prompts, 4, "resume=true", "stop_after=1"))
    assert not list((out / "clips").glob("*.tail.mp4"))  # mid-run: the video ends at clip 2's body
    assert len(read_mp4(out / "video.mp4")) == 3 * 4
    generate(_cfg(out, image, prompts, 4, "resume=true"))
    assert np.array_equal(read_mp4(out / "video.mp4"), read_mp4(root / "shot_pixel" / "four" / "video.mp4"))


@pytest.mark.parametrize("change, message", [
    (["seed=7"], r"clip 0 .*seed: 0 -> 7.*seed / seed_stride"),
    (["cfg=3.0"], r"clip 0 .*cfg: 5\.0 -> 3\.0"),
    (["negative_prompt=blurry"], r"negative_prompt: .* -> 'blurry'"),
    (["prompts=OTHER"], r"clip 0 .*prompt: 'a red disc drifts to the right' -> 'a green cat'.*prompts="),
    (["num_clips=1"], r"already holds clip 1.*num_clips >= 2"),
    (["handoff=latent"], r"configuration changed.*handoff"),
])
def test_a_changed_prefix_is_refused_and_the_output_untouched(runs, tmp_path, change, message):
    root, image, prompts = runs
    out = tmp_path / "run"
    shutil.copytree(root / "shot_pixel" / "two", out)
    other = tmp_path / "other.txt"
    other.write_text("a green cat\n")
    change = [c.replace("OTHER", str(other)) for c in change]
    before = _tree(out)
    with pytest.raises(ResumeError, match=message):
        generate(compose_generate([*SMALL, f"image={image}", f"prompts={prompts}", "num_clips=4", f"out={out}",
                                   "save_latents=true", "resume=true", *change]))
    assert _tree(out) == before


def test_prompt_cycling_keeps_the_prefix_when_the_video_grows(runs, tmp_path):
    root, image, prompts = runs  # film: a prompt per clip, cycling with prompt_repeat_times
    out = tmp_path / "run"
    common = ["condition=film", "num_frames=9", "prompt_repeat_times=2"]
    generate(_cfg(out, image, prompts, 2, *common))
    generate(_cfg(out, image, prompts, 5, *common, "resume=true"))
    specs = [json.loads((out / f"state/clip_{k:04d}.json").read_text())["spec"]["prompt"] for k in range(5)]
    assert specs == ["a red disc drifts to the right"] * 2 + ["a blue square spins"] * 2 + \
        ["a red disc drifts to the right"]


def test_a_run_from_before_extension_resumes_or_says_why_not(runs, tmp_path):
    """State written before this feature: the config hash covered the schedule, no `spec` per clip."""
    from svi.sampling.session import config_hash

    root, image, prompts = runs
    out = tmp_path / "run"
    generate(_cfg(out, image, prompts, 2, "stop_after=1"))
    stored = json.loads((out / "state/config.json").read_text())
    state = json.loads((out / "state/clip_0000.json").read_text())
    schedule = [state["spec"], {**state["spec"], "index": 1, "seed": 42}]
    legacy = {**stored["config"], "schedule": schedule}
    digest = config_hash(legacy)
    (out / "state/config.json").write_text(json.dumps({"hash": digest, "config": legacy}))
    del state["spec"], state["tail"]
    (out / "state/clip_0000.json").write_text(json.dumps({**state, "config_hash": digest, "version": 1}))
    before = _tree(out)
    with pytest.raises(ResumeError, match=r"started before runs could be extended.*num_clips=2"):
        generate(_cfg(out, image, prompts, 3, "resume=true"))
    assert _tree(out) == before
    generate(_cfg(out, image, prompts, 2, "resume=true"))  # the original schedule: resumes as before
    assert np.array_equal(read_mp4(out / "video.mp4"), read_mp4(root / "shot_pixel" / "two" / "video.mp4"))
    assert json.loads((out / "state/clip_0001.json").read_text())["config_hash"] == digest


# ------------------------------------------------------------------------------------------ video=
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_continuing_a_video_equals_continuing_the_run_that_made_it(runs, tmp_path, variant):
    """`video=` of a finished 2-clip run's video.mp4, 2 new clips, against that run extended to 4 clips
    whose hand-off frames are replaced by the same frames decoded from its mp4 (all the video carries;
    the exact frames of the run went through H.264). Same seeds (seed=84: clips 2 and 3 of the run), the
    same reference image: the new clips must be bit-identical."""
    root, image, prompts = runs
    two = root / variant / "two"
    K = 5 if variant == "film_latent" else 1
    existing = read_mp4(two / "video.mp4")

    expected = tmp_path / "expected"
    shutil.copytree(two, expected)
    carry = torch.load(expected / "state/carry_0001.pt", weights_only=True)
    carry["motion"] = torch.from_numpy(existing[-K:].copy())
    carry.pop("latents", None)  # a video carries no latents: the first new clip hands off through pixels
    torch.save(carry, expected / "state/carry_0001.pt")
    generate(_cfg(expected, image, prompts, 4, *VARIANTS[variant], "resume=true"))

    out = tmp_path / "from_video"
    cont = [*VARIANTS[variant], f"video={two / 'video.mp4'}", "seed=84"]
    first = generate(_cfg(out, image, prompts, 2, *cont, "stop_after=1"))  # resumable like any run
    assert first["clips_done"] == 2 and first["clips_total"] == 3
    generate(_cfg(out, image, prompts, 2, *cont, "resume=true"))

    for new, old in ((1, 2), (2, 3)):
        assert torch.equal(torch.load(out / f"latents/clip_{new:04d}.pt"),
                           torch.load(expected / f"latents/clip_{old:04d}.pt"))
    new_part = [out / "clips/clip_0001.mp4", out / "clips/clip_0002.mp4", out / "clips/clip_0002.tail.mp4"]
    old_part = [expected / "clips/clip_0002.mp4", expected / "clips/clip_0003.mp4",
                expected / "clips/clip_0003.tail.mp4"]
    assert np.array_equal(np.concatenate([read_mp4(p) for p in new_part]),
                          np.concatenate([read_mp4(p) for p in old_part]))
    video = read_mp4(out / "video.mp4")
    F = 9 if variant == "film_latent" else 5
    assert len(video) == len(existing) - K + (F - K) + F  # its last K frames re-made by the first new clip
    copied = video[:len(existing) - K].astype(int)
    assert np.abs(copied - existing[:-K]).mean() < 6  # chunk 0: the existing frames, re-encoded
    state = json.loads((out / "state/clip_0000.json").read_text())
    assert state["source"] == "video" and state["tail"] == K and "spec" not in state
    config = json.loads((out / "state/config.json").read_text())["config"]
    assert config["video_sha256"] == hashlib.sha256((two / "video.mp4").read_bytes()).hexdigest()


def test_a_video_without_image_uses_its_first_frame_and_is_resized(runs, tmp_path):
    root, _, prompts = runs
    frames = read_mp4(root / "shot_pixel" / "two" / "video.mp4")
    big = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 64 x 64: keep_aspect to width=32
    write_mp4(tmp_path / "big.mp4", big, 16)
    out = tmp_path / "run"
    generate(compose_generate([*SMALL, f"video={tmp_path / 'big.mp4'}", f"prompts={prompts}", "num_clips=1",
                               f"out={out}"]))
    video = read_mp4(out / "video.mp4")
    assert video.shape == (len(frames) - 1 + 5, 32, 32, 3)


def test_unusable_videos_fail_before_the_backbone_loads(image_file, prompt_file, tmp_path, monkeypatch):
    monkeypatch.delenv("SVI_WAN21_I2V_14B_DIR", raising=False)  # the real backbone cannot load here
    base = ["backbone=wan21_i2v_14b", "height=32", "width=32", "num_frames=5", f"prompts={prompt_file}",
            "num_clips=1", f"out={tmp_path / 'o'}"]
    with pytest.raises(FileNotFoundError, match=r"video=.*nowhere\.mp4 does not exist"):
        generate(compose_generate([*base, f"video={tmp_path / 'nowhere.mp4'}"]))
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match=r"video=.*broken\.mp4 cannot be read as a video.*ffmpeg"):
        generate(compose_generate([*base, f"video={tmp_path / 'broken.mp4'}"]))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"video=.*empty\.mp4 (cannot be read|holds no frames)"):
        generate(compose_generate([*base, f"video={tmp_path / 'empty.mp4'}"]))
    write_mp4(tmp_path / "one.mp4", np.zeros((1, 32, 32, 3), np.uint8), 16)
    with pytest.raises(ValueError, match=r"one\.mp4 has 1 frame\(s\), fewer than the 2 .*longer video"):
        generate(compose_generate([*base, f"video={tmp_path / 'one.mp4'}"]))
    write_mp4(tmp_path / "four.mp4", np.zeros((4, 32, 32, 3), np.uint8), 16)
    with pytest.raises(ValueError, match=r"sampler=fifo cannot start from one"):
        generate(compose_generate([*base, "sampler=fifo", f"video={tmp_path / 'four.mp4'}"]))
    with pytest.raises(Exception, match="SVI_WAN21_I2V_14B_DIR"):  # a usable video: now the weights
        generate(compose_generate([*base, f"video={tmp_path / 'four.mp4'}"]))
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.mp4"))
