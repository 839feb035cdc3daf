"""Batched toy rollouts go through the SVI clip step; same seed -> same noise -> paired comparisons."""

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.toy.clips import ToyWorldSpec
from svi.toy.world import render
from svi.sampling.svi_clip import SVIClipSampler
from svi.toy.evaluate import evaluate_videos
from svi.toy.rollout import autoencoder_round_trip, ground_truth, rollout, heldout_worlds


def _sampler(stack, handoff="pixel"):
    cond = Condition(name="shot", num_motion_frames=1, ref_pad_num=-1)
    return SVIClipSampler(cond, stack=stack, flow={"shift": 3.0, "num_inference_steps": 2}, handoff=handoff,
                          progress=False)


def test_rollout_layout_determinism_and_pairing(toy_stack):
    worlds = heldout_worlds(ToyWorldSpec(), seed=0, num_videos=2)
    s = _sampler(toy_stack)
    a = rollout(s, worlds, num_clips=2, num_frames=9, noise_seed=0, height=32, width=32, progress=False)
    assert a.videos.shape == (2, 1 + 2 * 8, 32, 32, 3) and a.frames_per_clip == 8
    assert np.array_equal(a.videos[:, 0], np.stack([render(w, 0, 1, 32, 32)[0] for w in worlds]))
    b = rollout(s, worlds, num_clips=2, num_frames=9, noise_seed=0, height=32, width=32, progress=False)
    assert np.array_equal(a.videos, b.videos)
    c = rollout(s, worlds, num_clips=2, num_frames=9, noise_seed=1, height=32, width=32, progress=False)
    assert not np.array_equal(a.videos, c.videos)
    # the same clip step as svi-generate: one video alone equals its row of the batch (same noise rows)
    one = rollout(s, worlds[:1], num_clips=1, num_frames=9, noise_seed=0, height=32, width=32, progress=False)
    assert np.abs(one.videos[0].astype(int) - a.videos[0, :9].astype(int)).max() <= 1
    ev = evaluate_videos(a.videos, worlds, 8)
    assert ev.per_clip["bg_rmse"].shape == (2, 2)


def test_ground_truth_through_the_autoencoder_is_the_ceiling(toy_stack):
    worlds = heldout_worlds(ToyWorldSpec(), seed=0, num_videos=2)
    truth = ground_truth(worlds, 17, 32, 32)
    ceiling = autoencoder_round_trip(toy_stack, truth, 9)
    assert ceiling.shape == truth.shape and np.array_equal(ceiling[:, 0], truth[:, 0])
    ev_truth = evaluate_videos(truth, worlds, 8)
    ev_ceiling = evaluate_videos(ceiling, worlds, 8)
    assert np.all(ev_truth.per_clip["bg_rmse"] < 1.0)
    assert np.all(ev_ceiling.per_clip["bg_rmse"] < 8.0)  # ~33 dB round trip
    assert np.allclose(ev_truth.drift(ev_truth), 0.0)
    assert torch.is_tensor(toy_stack.encode_video(torch.zeros(1, 3, 9, 32, 32)))


def test_rollout_with_two_motion_frames_starts_from_the_first_true_frames(toy_stack):
    worlds = heldout_worlds(ToyWorldSpec(), seed=0, num_videos=2)
    cond = Condition(name="shot", num_motion_frames=2, ref_pad_num=-1)
    s = SVIClipSampler(cond, stack=toy_stack, flow={"shift": 3.0, "num_inference_steps": 2}, progress=False)
    r = rollout(s, worlds, num_clips=3, num_frames=9, noise_seed=0, height=32, width=32, progress=False)
    # K = 2 true input frames, then F - K = 7 new frames per clip
    assert r.videos.shape == (2, 2 + 3 * 7, 32, 32, 3) and r.frames_per_clip == 7
    truth = ground_truth(worlds, 2 + 3 * 7, 32, 32)
    assert np.array_equal(r.videos[:, :2], truth[:, :2])
    assert not np.array_equal(r.videos[:, 2:], truth[:, 2:])  # the rest is generated
    ev = evaluate_videos(r.videos, worlds, 7, start=2)
    assert ev.per_clip["world_rmse"].shape == (2, 3)
    # the ceiling cuts the same clips: K true frames before each clip's 7 new ones, inputs untouched
    ceiling = autoencoder_round_trip(toy_stack, truth, 9, num_motion_frames=2)
    assert np.array_equal(ceiling[:, :2], truth[:, :2])
    assert np.abs(ceiling[:, 2:].astype(int) - truth[:, 2:].astype(int)).mean() < 6


def test_teacher_forced_rollout_conditions_every_clip_on_the_true_frames(toy_stack, monkeypatch):
    """motion_from="truth": clip c's motion frames are the world's frames where the generated ones would be,
    so a clip does not depend on what earlier clips wrote; "generated" (SVI) hands off the previous clip's."""
    import svi.toy.rollout as R

    worlds = heldout_worlds(ToyWorldSpec(), seed=0, num_videos=2)
    s = _sampler(toy_stack)
    seen = []
    real = s.sample_clip

    def spy(motion, *args, **kwargs):
        seen.append(motion.clone())
        return real(motion, *args, **kwargs)

    monkeypatch.setattr(s, "sample_clip", spy)
    forced = rollout(s, worlds, num_clips=3, num_frames=5, noise_seed=0, height=32, width=32, progress=False,
                     motion_from="truth")
    for c, motion in enumerate(seen):  # K = 1: clip c starts from world frame 4c
        truth = torch.stack([R.to_tensor(render(w, 4 * c, 1, 32, 32)) for w in worlds])
        assert torch.allclose(motion, truth, atol=1e-6)
    seen.clear()
    chained = rollout(s, worlds, num_clips=3, num_frames=5, noise_seed=0, height=32, width=32, progress=False)
    assert torch.allclose(seen[0], torch.stack([R.to_tensor(render(w, 0, 1, 32, 32)) for w in worlds]))
    handed = torch.stack([R.to_tensor(v[4:5]) for v in chained.videos])  # the frame clip 0 wrote last
    assert torch.allclose(seen[1], handed, atol=1e-6)
    assert np.array_equal(forced.videos[:, :5], chained.videos[:, :5])  # same first clip, same noise
    assert not np.array_equal(forced.videos[:, 5:], chained.videos[:, 5:])
    with pytest.raises(ValueError, match="motion_from"):
        rollout(s, worlds, num_clips=1, num_frames=5, noise_seed=0, height=32, width=32, motion_from="true")
