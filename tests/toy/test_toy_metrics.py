"""World-invariant drift metrics: exact on the ground truth, and they see what they claim to see."""

import numpy as np
import pytest

from svi.toy.clips import ToyWorldSpec, heldout_scene_seed
from svi.toy.world import _background, render
from svi.toy.evaluate import paired_interval, t_quantile
from svi.toy.metrics import clip_means, frame_metrics


@pytest.fixture
def world():
    return ToyWorldSpec().world(heldout_scene_seed(0, 0))


def test_ground_truth_scores_perfectly(world):
    frames = render(world, 1, 16, 32, 32)
    m = frame_metrics(world, frames, start=1)
    assert np.all(m["bg_rmse"] < 1.0)  # only 8-bit rounding
    assert np.all(m["col_shift"] < 0.5)
    assert np.all(m["objects"] == 2) and np.all(m["object_loss"] == 0)
    assert np.allclose(m["hf_ratio"], 1.0, atol=0.05)
    c = clip_means(m, 8)
    assert c["objects"].shape == (2,)


def test_metrics_detect_colour_shift_lost_objects_and_blur(world):
    frames = render(world, 1, 8, 32, 32).astype(np.int16)
    shifted = np.clip(frames + 20, 0, 255).astype(np.uint8)
    m = frame_metrics(world, shifted, start=1)
    assert np.allclose(m["col_shift"], 20 * np.sqrt(3), atol=2.0)
    assert np.all(m["bg_rmse"] > 15)
    # sprites erased: the true background only
    bg = np.clip(np.rint(_background(world.background, 32, 32)), 0, 255).astype(np.uint8)
    empty = np.repeat(bg[None], 8, axis=0)
    m = frame_metrics(world, empty, start=1)
    assert np.all(m["objects"] == 0) and np.all(m["object_loss"] == 2)
    assert np.all(m["bg_rmse"] < 1.0)
    # a flat (blurred-out) background has no high frequencies left
    flat = np.broadcast_to(bg.reshape(-1, 3).mean(0).astype(np.uint8), empty.shape).copy()
    assert np.all(frame_metrics(world, flat, start=1)["hf_ratio"] < 0.05)


def test_surviving_sprites_off_the_true_trajectory_are_not_background_errors(world):
    frames = render(world, 1, 8, 32, 32)
    later = render(world, 60, 8, 32, 32)  # same scene, sprites elsewhere (a diverged trajectory)
    bg = np.clip(np.rint(_background(world.background, 32, 32)), 0, 255)
    m = frame_metrics(world, later, start=1)
    assert np.all(m["bg_rmse"] < 3.0) and np.all(m["objects"] == 2)
    # but a smear of a foreign colour where the background should be is counted
    smeared = later.copy()
    smeared[:, 0:6, 0:6] = (bg[0:6, 0:6] + 60).clip(0, 255).astype(np.uint8)
    assert np.all(frame_metrics(world, smeared, start=1)["bg_rmse"] > m["bg_rmse"] + 5)
    assert frames.shape == later.shape


def test_world_rmse_is_the_distance_to_the_nearest_valid_world_frame(world):
    truth = render(world, 1, 8, 32, 32)
    exact = frame_metrics(world, truth, start=1)["world_rmse"]
    assert exact.mean() < 1.0 and exact.max() < 6.0  # sub-pixel centres; overlapping sprites cost a little
    # a surviving sprite off the true trajectory is a valid world frame
    later = render(world, 60, 8, 32, 32)
    off_path = frame_metrics(world, later, start=1)["world_rmse"]
    assert np.all(off_path < 3.0)
    # erasing the sprites is drift (unlike for bg_rmse, which only sees the background)
    bg = np.clip(np.rint(_background(world.background, 32, 32)), 0, 255).astype(np.uint8)
    erased = frame_metrics(world, np.repeat(bg[None], 8, axis=0), start=1)
    assert np.all(erased["world_rmse"] > 10 * off_path.clip(min=1.0)) and np.all(erased["bg_rmse"] < 1.0)
    # so is a corrupted background
    shifted = np.clip(later.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    assert np.all(frame_metrics(world, shifted, start=1)["world_rmse"] > 15)


def test_ref_dist_sees_sprites_held_at_the_reference(world):
    truth = render(world, 40, 8, 32, 32)
    m = frame_metrics(world, truth, start=40)
    assert np.all(m["ref_dist_true"] > 3.0)  # the world's sprites have left where frame 0 has them
    np.testing.assert_allclose(m["ref_dist"], m["ref_dist_true"], atol=0.6)  # the truth moves as the truth
    # a video that keeps showing frame 0 from frame 40 on: sprites pinned to the reference
    pinned = np.repeat(render(world, 0, 1, 32, 32), 8, axis=0)
    p = frame_metrics(world, pinned, start=40)
    assert np.all(p["ref_dist"] < 0.6) and np.allclose(p["ref_dist_true"], m["ref_dist_true"])


def test_paired_interval_and_t_quantile():
    assert abs(t_quantile(0.975, 10) - 2.228) < 5e-3
    assert abs(t_quantile(0.975, 47) - 2.012) < 2e-3
    iv = paired_interval(np.array([-1.0, -2.0, -3.0, -2.0]))
    assert iv["mean"] == -2.0 and iv["high"] < 0 < -iv["low"] and iv["better"] == 4 and iv["n"] == 4
    iv = paired_interval(np.array([1.0, -1.0, 1.0, -1.0]))
    assert iv["low"] < 0 < iv["high"]


def test_metric_pool_gives_the_same_numbers_as_the_main_process():
    """`eval.metric_workers`: the videos are scored in spawned processes, in order, with identical values."""
    from svi.toy.evaluate import evaluate_videos, metric_pool

    spec = ToyWorldSpec()
    worlds = [spec.world(heldout_scene_seed(3, i)) for i in range(3)]
    rng = np.random.default_rng(0)
    videos = np.stack([render(w, 0, 9, 32, 32) for w in worlds]).astype(np.int16)
    videos = np.clip(videos + rng.integers(-25, 25, videos.shape), 0, 255).astype(np.uint8)
    videos[1, 5:] = videos[1, 5:] // 2  # one video loses its colours half way: rows must not be swapped
    serial = evaluate_videos(videos, worlds, 4, start=1)
    assert metric_pool(1) is None
    with metric_pool(2) as pool:
        pooled = evaluate_videos(videos, worlds, 4, start=1, pool=pool)
    assert set(pooled.per_clip) == set(serial.per_clip)
    for k, v in serial.per_clip.items():
        assert v.shape == (3, 2)
        np.testing.assert_array_equal(pooled.per_clip[k], v)
    assert serial.per_clip["world_rmse"][1, 1] > serial.per_clip["world_rmse"][0, 1] + 10
