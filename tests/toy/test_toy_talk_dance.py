"""Toy talk and dance: exact signals, the same slices from files and from memory, metrics that read them,
rollouts that feed them to the condition's adapters, and the study's demo end to end."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from svi.toy.clips import ToyClips, ToyWorldSpec
from svi.toy.evaluate import evaluate_videos
from svi.toy.rollout import ground_truth, heldout_worlds, rollout
from svi.toy.signals import EnvelopeFeatures, batch_signals, clip_signals
from svi.toy.world import (SAMPLE_RATE, Scene, make_scene, render, render_pose, sprite_centres, sprite_positions,
                           sprite_sizes, voice_samples, write_dataset)
from tests.conftest import compose_config


def _condition(name: str):
    return instantiate(compose_config("train", [f"condition={name}"]).condition)


def test_voice_and_dance_leave_the_rest_of_the_scene_unchanged_and_round_trip():
    plain, voiced, dancing = make_scene(5), make_scene(5, voice=True), make_scene(5, dance=True)
    assert voiced.sprites == plain.sprites == dancing.sprites and voiced.background == plain.background
    assert plain.voice is None and plain.dance is None and "voice" not in plain.to_dict()
    for s in (voiced, dancing, make_scene(5, voice=True, dance=True)):
        assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="single shots"):
        ToyWorldSpec(scene_change_every=10, voice=True).world(0)


def test_the_voice_drives_the_top_sprite_size_and_nothing_else():
    s = make_scene(3, voice=True)
    t = np.arange(200)
    sizes = sprite_sizes(s, t)
    a = s.voice.envelope(t + 0.5)
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.1
    assert np.allclose(sizes[:, :-1], [sp.size for sp in s.sprites[:-1]])  # only the top sprite changes
    assert np.allclose(sizes[:, -1], s.sprites[-1].size * (1 + s.voice.depth * (2 * a - 1)))
    # drawn: the top sprite's pixel area follows the loudness (its colour, never occluded)
    frames = render(s, 0, 60, 48, 48).astype(float)
    from svi.toy.world import SPRITE_COLOURS

    colour = np.array(SPRITE_COLOURS[s.sprites[-1].colour])
    area = (np.linalg.norm(frames - colour, axis=-1) < 40).sum(axis=(1, 2))
    assert np.corrcoef(area, a[:60])[0, 1] > 0.95
    # in frame at the loudest: centres keep a margin of the largest size
    c = sprite_centres(s, t, 48, 48)
    r = sizes * 48
    assert (c - r[..., None] >= -1e-9).all() and (c + r[..., None] <= 48 + 1e-9).all()


def test_dance_follows_its_choreography_inside_the_box_and_the_pose_video_shows_it():
    s = make_scene(11, dance=True)
    pos = sprite_positions(s, np.arange(300))
    assert pos.min() >= 0 and pos.max() <= 1 and pos.std(axis=0).min() > 0.05
    assert not np.allclose(pos, sprite_positions(make_scene(11), np.arange(300)))  # not the bounce
    pose = render_pose(s, 7, 3, 32, 32).astype(float)
    assert pose.shape == (3, 32, 32, 3)
    for i, t in enumerate(range(7, 10)):
        for sprite, (cx, cy) in zip(s.sprites, sprite_centres(s, [t], 32, 32)[0]):
            ys, xs = np.mgrid[:32, :32]
            near = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy) < 3  # the marker's own pixels
            assert pose[i][near].max() > 100  # a marker at the sprite's centre
        assert (pose[i].sum(-1) > 0).mean() < 0.1  # and black elsewhere


def test_envelope_features_give_the_loudness_per_frame():
    s = make_scene(4, voice=True)
    enc = EnvelopeFeatures(bins=4)
    samples = torch.from_numpy(voice_samples(s, 10, 40, fps=16))[None]
    feats = enc(samples, 30)
    assert feats.shape == (1, 30, 1, 4)
    centres = 10 + (np.arange(120) + 0.5) / 4  # bin centres in frames
    assert np.abs(feats[0, :, 0].flatten().numpy() - s.voice.envelope(centres)).max() < 0.06
    assert np.allclose(enc(torch.zeros(2, 3000), 3), 0)  # silence: zero


def test_clip_signals_are_exact_slices_and_consecutive_clips_overlap_consistently():
    talk, dance = _condition("toy_talk"), _condition("toy_dance")
    world = ToyWorldSpec(voice=True, dance=True).world(3)
    rate_per_frame = SAMPLE_RATE // 16
    a = clip_signals(talk, world, 20, 5, 32, 32)["audio"]
    assert a.shape == ((5 + 4) * rate_per_frame,)  # 2 frames of context each side
    b = clip_signals(talk, world, 24, 5, 32, 32)["audio"]  # the next clip with K = 1 (starts on frame 24)
    # a holds frames 18..26, b frames 22..30: the shared frames 22..26 are the same sound, sample for sample
    assert torch.allclose(a[4 * rate_per_frame:], b[: 5 * rate_per_frame], atol=1e-6)
    assert not torch.allclose(a[: 5 * rate_per_frame], b[: 5 * rate_per_frame], atol=1e-2)
    encoded = talk.encode_extras(None, {"audio": a[None]})["audio"]
    assert encoded.shape == (1, 9, 1, 4)
    p = clip_signals(dance, world, 20, 5, 32, 32)["pose"]
    assert p.shape == (3, 5, 32, 32) and 0 <= p.min() and p.max() <= 1
    assert torch.equal(p, torch.from_numpy(render_pose(world, 20, 5, 32, 32)).permute(3, 0, 1, 2).float() / 255)
    assert clip_signals(_condition("shot"), world, 0, 5, 32, 32) == {}


def test_toy_clips_carry_the_signals_of_their_condition():
    talk = _condition("toy_talk")
    clips = ToyClips(num_frames=5, length=4, condition=talk)  # a condition that takes audio gets voiced worlds
    assert clips.world_spec.voice and not clips.world_spec.dance
    item = clips[1]
    assert item["extras"]["audio"].shape == (9 * 1000,)
    assert ToyClips(num_frames=5, length=4, condition=_condition("toy_dance")).world_spec.dance
    assert "pulsing with a sound" in item["caption"]
    assert "extras" not in ToyClips(num_frames=5, length=4)[0]


def test_files_written_by_svi_toyworld_give_the_same_clip_inputs_as_the_world(tmp_path):
    """The talk/dance dataset on disk (wav + pose mp4) through the real readers = the in-memory signals."""
    import soundfile

    from svi.data.video import VideoClipDataset

    info = write_dataset(tmp_path, num_videos=2, num_frames=40, height=32, width=32, fps=16, seed=1,
                         voice=True, dance=True, progress=False)
    with open(info["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["audio"] == "toyworld_00000.wav" and rows[0]["pose"] == "toyworld_00000_pose.mp4"
    wav, rate = soundfile.read(tmp_path / "toyworld" / "toyworld_00000.wav")
    assert rate == SAMPLE_RATE and len(wav) == 40 * 1000
    talk, dance = _condition("toy_talk"), _condition("toy_dance")
    for cond in (talk, dance):
        ds = VideoClipDataset(str(tmp_path), num_frames=5, height=32, width=32, max_stride=1, condition=cond)
        item = ds[0]
        first = int(item["frame_indices"][0])
        world = make_scene(json.loads(open(info["jsonl"]).readline())["seed"], voice=True, dance=True)
        mine = clip_signals(cond, world, first, 5, 32, 32)
        for k, v in item["extras"].items():
            if k == "audio":  # 16-bit PCM, silence before the file starts
                lead = max(0, 2 - first) * 1000
                assert torch.allclose(v[lead:], mine[k][lead:], atol=2e-4)
            else:  # H.264: markers where the world puts them
                assert (v - mine[k]).abs().mean() < 0.03


def test_ground_truth_scores_perfect_sync_and_pose_and_a_frozen_video_does_not():
    worlds = heldout_worlds(ToyWorldSpec(voice=True, dance=True), seed=0, num_videos=3)
    truth = ground_truth(worlds, 41, 32, 32)
    ev = evaluate_videos(truth, worlds, 4)
    assert (ev.per_video["toy_sync"] > 0.98).all() and (ev.per_video["toy_sync_late"] > 0.95).all()
    assert np.nanmean(ev.per_clip["pose_err"]) < 0.3
    frozen = np.repeat(truth[:, :1], 41, axis=1)
    evf = evaluate_videos(frozen, worlds, 4)
    assert np.allclose(evf.per_video["toy_sync"], 0.0)  # a size that never changes follows nothing
    assert np.nanmean(evf.per_clip["pose_err"]) > 3.0
    assert evf.video_values("psnr_gt").mean() < ev.video_values("psnr_gt").mean()
    plain = evaluate_videos(ground_truth(heldout_worlds(ToyWorldSpec(), 0, 2), 9, 32, 32),
                            heldout_worlds(ToyWorldSpec(), 0, 2), 4)
    assert plain.per_video == {} and np.isnan(plain.per_clip["size"]).all()


def test_toy_sync_is_not_biased_by_which_frames_count_as_present():
    """A top sprite of constant size that fades in and out at random follows nothing: its sync is ~0 (the
    presence threshold must not depend on the true, sound-driven size)."""
    import dataclasses

    worlds = heldout_worlds(ToyWorldSpec(voice=True), seed=0, num_videos=12)
    silent = [dataclasses.replace(w, voice=None) for w in worlds]
    video = ground_truth(silent, 81, 32, 32).astype(float)
    without = ground_truth([dataclasses.replace(w, sprites=w.sprites[:-1]) for w in silent], 81, 32, 32)
    fade = np.random.default_rng(0).uniform(0.2, 1.0, size=(12, 81, 1, 1, 1))
    faded = (without + fade * (video - without)).round().clip(0, 255).astype(np.uint8)
    sync = evaluate_videos(faded, worlds, 4).per_video["toy_sync"]
    assert abs(np.nanmean(sync)) < 0.08 and np.isfinite(sync).sum() >= 10


@pytest.mark.parametrize("name,world", [("toy_talk", {"voice": True}), ("toy_dance", {"dance": True})])
def test_rollouts_feed_each_clip_its_signal_to_the_adapters(toy_stack, name, world):
    from svi.sampling.svi_clip import SVIClipSampler

    import copy

    stack = copy.deepcopy(toy_stack)
    cond = _condition(name)
    cond.attach(stack.transformer)
    sampler = SVIClipSampler(cond, stack=stack, flow={"shift": 3.0, "num_inference_steps": 2}, progress=False)
    worlds = heldout_worlds(ToyWorldSpec(**world), seed=0, num_videos=2)
    zero = rollout(sampler, worlds, num_clips=2, num_frames=5, noise_seed=0, height=32, width=32, progress=False)
    base = stack.transformer.state_dict()
    adapters = cond.adapter_state_dict()
    assert adapters  # trainable adapters exported under their official names
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in adapters:
            if k.endswith("weight") and base[k].dim() > 1:
                base[k].copy_(torch.randn(base[k].shape, generator=g) * 0.05)
    live = rollout(sampler, worlds, num_clips=2, num_frames=5, noise_seed=0, height=32, width=32, progress=False)
    assert not np.array_equal(zero.videos, live.videos)  # the signal reaches the model
    # and what reaches it is this clip's own signal: another world's signal changes the output
    raw = batch_signals(cond, stack, worlds, 4, 5, 32, 32)
    other = batch_signals(cond, stack, worlds[::-1], 4, 5, 32, 32)
    key = cond.extra_fields[0]
    assert raw[key].shape[0] == 2 and not torch.equal(raw[key], other[key])


@pytest.mark.slow
@pytest.mark.parametrize("config,metric", [("toy/demo_talk", "toy_sync"), ("toy/demo_dance", "pose_err")])
def test_talk_and_dance_demos_report_signal_following(toy_base_dir, tmp_path, config, metric):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "svi.toy.demo", "--config-name", config, f"base={toy_base_dir}",
                           "steps=3", "seeds=[0]", "eval.num_videos=2", "eval.num_clips=3",
                           "eval.num_inference_steps=2", "num_side_by_side=1", "eval.metric_workers=1",
                           "train_overrides=['data.batch_size=2']", f"hydra.run.dir={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    sig = summary["signals"][metric]
    assert set(sig["mean"]) == {"base", "plain_lora", "erft", "ceiling"}
    assert set(sig["paired"]) == {"erft_minus_plain_lora", "erft_minus_base", "plain_lora_minus_base"}
    # the trained adapters were exported and loaded: the fine-tunes' own files hold them
    from safetensors.torch import load_file

    modules = load_file(str(out / "train" / "erft_seed0" / "adapter" / "svi_modules.safetensors"))
    assert any(k.startswith(("audio_proj.", "dwpose_embedding.")) for k in modules)
    assert (out / "signal_vs_time.png").stat().st_size > 10_000
    video = summary["files"]["videos"][0]
    if metric == "toy_sync":  # the side-by-side carries the world's sound
        from svi.conditions.audio import audio_info

        duration, _ = audio_info(video)
        assert abs(duration - (1 + 3 * 4) / 16) < 0.1
        assert sig["mean"]["ceiling"] > 0.9
    else:
        assert "pose" in video and sig["mean"]["ceiling"] < 0.5


def test_signal_summary_pools_the_videos_where_a_metric_is_defined():
    """A seed where no video keeps its sprite adds no value (and no NaN) to the mean; n counts the videos."""
    import warnings

    from omegaconf import OmegaConf

    from svi.toy.demo import BASE, signal_summary, signal_table

    class Eval:
        def __init__(self, v):
            self.v = np.asarray(v, dtype=float)

        def video_values(self, metric):
            return self.v

    table = {0: {BASE: [0.1, np.nan], "plain_lora": [0.2, 0.4], "erft": [np.nan, np.nan], "ceiling": [1.0, 1.0]},
             1: {BASE: [0.3, 0.5], "plain_lora": [0.6, np.nan], "erft": [0.5, 0.7], "ceiling": [1.0, 1.0]}}
    results = {s: {n: Eval(v) for n, v in row.items()} for s, row in table.items()}
    cfg = OmegaConf.create({"models": ["plain_lora", "erft"], "seeds": [0, 1],
                            "eval": {"signal_metrics": ["toy_sync"]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = signal_summary(cfg, results)["toy_sync"]
    assert out["mean"]["erft"] == pytest.approx(0.6) and out["n"]["erft"] == 2
    assert out["mean"][BASE] == pytest.approx(0.3) and out["n"][BASE] == 3
    assert np.isnan(out["per_seed"]["erft"][0]) and out["per_seed"]["erft"][1] == pytest.approx(0.6)
    assert out["paired"]["erft_minus_plain_lora"]["n"] == 1  # only seed 1's first video has both
    assert "0.600 (n = 2)" in signal_table({"toy_sync": out})
