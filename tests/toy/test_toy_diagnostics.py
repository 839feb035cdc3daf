"""Hand-off errors of a rollout against the true frames, the size of the errors a replay memory holds, and
whether sprites are lost where they touch."""

import math

import numpy as np
import pytest
import torch

from svi.conditions import Condition
from svi.erft.memory import MemoryConfig, ReplayMemory
from svi.toy.clips import ToyWorldSpec
from svi.toy.diagnostics import (bank_error_rms, first_loss_clip, first_touch_clip, handoff_errors, loss_at_touch,
                                 pooled_rms, replay_memory_state)
from svi.toy.rollout import ground_truth, heldout_worlds


def test_handoff_error_is_zero_on_true_frames_and_found_where_a_clip_was_conditioned_on_wrong_ones(toy_stack):
    worlds = heldout_worlds(ToyWorldSpec(), seed=0, num_videos=2)
    cond = Condition(name="shot", num_motion_frames=2, ref_pad_num=-1)
    F, K, clips = 9, 2, 3
    truth = ground_truth(worlds, K + clips * (F - K), 32, 32)
    e = handoff_errors(toy_stack, cond, truth, worlds, F)
    assert e.shape == (2, clips) and np.allclose(e, 0.0)
    # clip 2 is conditioned on frames pos-K .. pos-1 with pos = K + 2 (F - K) = 16: darken the second in video 1
    bad = truth.copy()
    bad[1, 15] = bad[1, 15] // 2
    e = handoff_errors(toy_stack, cond, bad, worlds, F)
    assert e[1, 2] > 0.05 and np.allclose(np.delete(e.ravel(), 1 * clips + 2), 0.0)
    # the second motion frame lives in latent frame 1: latent frame 0 (the first motion frame) alone sees nothing
    assert handoff_errors(toy_stack, cond, bad, worlds, F, latent_frames=1)[1, 2] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="whole clips"):
        handoff_errors(toy_stack, cond, truth[:, :-1], worlds, F)


def test_bank_error_rms_per_bucket_and_pooled_over_stored_errors(tmp_path):
    memory = ReplayMemory(MemoryConfig(num_grids=4, capacity=8))
    for value, bucket, n in ((0.5, 1, 3), (2.0, 3, 1)):
        for _ in range(n):
            memory.add(torch.tensor([bucket]), torch.full((1, 4, 2, 2, 2), value), torch.zeros(1, 4, 2, 2, 2))
    rms, counts = bank_error_rms(memory.state_dict())
    assert counts.tolist() == [0, 3, 0, 1]
    assert np.isnan(rms[0]) and np.isnan(rms[2]) and rms[1] == pytest.approx(0.5) and rms[3] == pytest.approx(2.0)
    assert pooled_rms(rms, counts) == pytest.approx(math.sqrt((3 * 0.25 + 4.0) / 4))
    assert bank_error_rms(memory.state_dict(), "noi")[0][1] == 0.0

    ckpt = tmp_path / "last.ckpt"
    torch.save({"callbacks": {"ErrorReplayCallback": {"memory": memory.state_dict()}}}, ckpt)
    assert bank_error_rms(replay_memory_state(ckpt))[1].tolist() == [0, 3, 0, 1]
    torch.save({"callbacks": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match="no replay memory.*no_erft"):
        replay_memory_state(tmp_path / "plain.ckpt")
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        replay_memory_state(tmp_path / "missing.ckpt")


def _study_plot(study: str):
    """experiments/<study>/plot.py, loaded as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / study / "plot.py"
    spec = importlib.util.spec_from_file_location(f"{study}_plot", path)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    return plot


def _fake_runs(tmp_path, panels, models, offsets: dict, length: int) -> list:
    """Run folders whose summary.json has curve i of every model = offset + i + clip."""
    import json

    runs = []
    for r, offset in offsets.items():
        curves = {model: {metric: [offset + i + j for j in range(length)] for i, metric in enumerate(panels)}
                  for model in models}
        (tmp_path / r).mkdir()
        (tmp_path / r / "summary.json").write_text(json.dumps({"curves": curves}))
        runs.append(tmp_path / r)
    return runs


def test_speed_study_plot_reads_each_runs_curves_and_names_a_missing_run(tmp_path):
    import json

    plot = _study_plot("toy_still")
    runs = _fake_runs(tmp_path, plot.PANELS, plot.MODELS, {"a": 0.0, "b": 10.0}, 3)
    summary = json.loads((runs[1] / "summary.json").read_text())
    np.testing.assert_allclose(plot.curve(summary, "erft", "pose_err"), [11.0, 12.0, 13.0])
    with pytest.raises(SystemExit, match="no erft/speed curve"):
        plot.curve(summary, "erft", "speed")
    out = plot.main([*map(str, runs), "--names", "A", "B", "--out", str(tmp_path / "fig.png")])
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    rows = plot.main([*map(str, runs), "--panels", "objects", "ref_dist", "--out", str(tmp_path / "rows.png")])
    assert rows.read_bytes()[:4] == b"\x89PNG" and rows.stat().st_size != out.stat().st_size
    with pytest.raises(SystemExit):  # argparse names the choices
        plot.main([*map(str, runs), "--panels", "speed"])
    with pytest.raises(SystemExit, match="summary.json"):
        plot.main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="one name per run"):
        plot.main([*map(str, runs), "--names", "A"])


def test_first_touch_clip_finds_when_two_approaching_discs_meet():
    from svi.toy.world import Background, Scene, Sprite

    # two discs of half-extent 0.1 (3.2 px) on one row, closing at 0.02 unit-box lengths per frame: their
    # centres, on a 25.6 px span, are (0.8 - 0.02 t) 25.6 px apart, so they come within g px edge to edge
    # at the first frame with (0.8 - 0.02 t) 25.6 < 6.4 + g
    a = Sprite(shape="disc", colour="red", size=0.1, x0=0.1, y0=0.5, vx=0.01, vy=0.0)
    b = Sprite(shape="disc", colour="blue", size=0.1, x0=0.9, y0=0.5, vx=-0.01, vy=0.0)
    scene = Scene(0, Background("gradient", ("navy", "gray"), 0.2, 0.0, 0.0), (a, b))
    # clip c holds frames 2 + 3c .. 4 + 3c
    assert first_touch_clip(scene, 20, 3, 2, 32, 32, gap=1.0) == 8   # frame 26
    assert first_touch_clip(scene, 20, 3, 2, 32, 32, gap=5.0) == 5   # frame 18
    assert first_touch_clip(scene, 3, 3, 2, 32, 32) == -1            # frames 2..10: still apart
    assert first_touch_clip(Scene(0, scene.background, (a,)), 20, 3, 2, 32, 32) == -1  # one sprite touches nothing


def test_loss_at_touch_counts_losses_just_after_a_touch_against_shuffled_touches():
    assert first_loss_clip([2.0, 1.9, 1.4, 2.0], below=1.5) == 2
    assert first_loss_clip([2.0, 1.9], below=1.5) == -1
    # videos 0 and 1 lose a sprite 0 and 1 clips after their first touch; 2 never loses one, 3 never touches
    r = loss_at_touch([3, 5, -1, 10], [3, 4, 2, -1], window=1)
    assert r["observed"] == 1.0 and r["n"] == 2
    assert 0.4 < r["shuffled"] < 0.6  # swapped, neither loss is 0-1 clips after the other video's touch
    assert loss_at_touch([3, 5], [3, 4], window=0)["observed"] == 0.5
    assert loss_at_touch([-1], [2])["n"] == 0
    with pytest.raises(ValueError, match="one loss clip and one touch clip per video"):
        loss_at_touch([1, 2], [1])


def test_touch_script_reads_a_demo_run_and_names_a_missing_one(tmp_path):
    import importlib.util
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "experiments" / "toy_still" / "touch.py"
    spec = importlib.util.spec_from_file_location("toy_still_touch", path)
    touch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(touch)
    with pytest.raises(SystemExit, match="finished svi-demo run"):
        touch.main([str(tmp_path)])
    (tmp_path / ".hydra").mkdir()
    cfg = {"seeds": [0], "models": ["erft"], "condition": {"num_motion_frames": 2},
           "eval": {"num_frames": 5, "world": {"height": 32, "width": 32, "min_sprites": 2, "max_sprites": 2}}}
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
    keep, lose = np.full((3, 20), 2.0), np.full((3, 20), 2.0)
    lose[:, 3:] = 1.0  # every video loses a sprite in clip 3
    np.savez(tmp_path / "per_clip.npz", **{"seed0/base/objects": keep, "seed0/erft/objects": lose})
    out = touch.main([str(tmp_path)])
    assert set(out) == {"base", "erft"}  # no ceiling rows in this run
    assert out["base"]["lose"] == 0 and out["base"]["n"] == 0 and out["base"]["videos"] == 3
    assert out["erft"]["lose"] == 3 and out["erft"]["median_loss_clip"] == 3.0
    worlds = heldout_worlds(ToyWorldSpec(min_sprites=2, max_sprites=2), 0, 3)
    touched = [first_touch_clip(w, 20, 3, 2, 32, 32) for w in worlds]
    assert out["erft"]["n"] == sum(t >= 0 for t in touched)
    assert out["erft"]["observed"] == pytest.approx(np.mean([0 <= 3 - t <= 1 for t in touched if t >= 0]))


def test_handoff_study_plot_draws_one_model_of_every_run_and_names_what_is_missing(tmp_path):
    import json

    plot = _study_plot("toy_handoff")
    runs = _fake_runs(tmp_path, plot.PANELS, ("base", "ceiling"), {"clean": 0.0, "handoff": 5.0}, 4)
    summary = json.loads((runs[1] / "summary.json").read_text())
    np.testing.assert_allclose(plot.curve(summary, "base", "objects", runs[1]), [6.0, 7.0, 8.0, 9.0])
    out = plot.main([*map(str, runs), "--names", "clean", "hand-off", "--out", str(tmp_path / "fig.png")])
    assert out.read_bytes()[:4] == b"\x89PNG"
    two = plot.main([*map(str, runs), "--panels", "world_rmse", "pose_err", "--out", str(tmp_path / "two.png")])
    assert two.read_bytes()[:4] == b"\x89PNG" and two.stat().st_size != out.stat().st_size
    with pytest.raises(SystemExit, match="no erft/world_rmse curve"):
        plot.main([*map(str, runs), "--model", "erft", "--out", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="summary.json not found"):
        plot.main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="one name per run"):
        plot.main([*map(str, runs), "--names", "A"])


def test_tradeoff_plot_puts_each_model_at_its_sprites_and_drift_over_plain(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "toy_demo" / "plot_tradeoff.py"
    spec = importlib.util.spec_from_file_location("toy_demo_tradeoff", path)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    run = tmp_path / "run"
    run.mkdir()
    # two seeds x 2 videos x 3 clips; erft keeps 1 sprite, plain 2; erft's first clip 0.5 worse
    clips = {}
    for s in (0, 1):
        clips[f"seed{s}/plain_lora/objects"] = np.full((2, 3), 2.0)
        clips[f"seed{s}/erft/objects"] = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])
        clips[f"seed{s}/plain_lora/world_rmse"] = np.full((2, 3), 12.0)
        clips[f"seed{s}/erft/world_rmse"] = np.full((2, 3), 12.5)
    np.savez(run / "per_clip.npz", **clips)
    summary = {"seeds": [0, 1], "drift": {"plain_lora": 40.0, "erft": 20.0},
               "per_seed": {"plain_lora": [40.0, 40.0], "erft": [16.0, 24.0]}}
    (run / "summary.json").write_text(json.dumps(summary))
    pts = plot.points(*plot._load(run))
    assert pts["erft"]["x"] == pytest.approx(1.0) and pts["plain_lora"]["x"] == pytest.approx(2.0)
    assert pts["erft"]["y"] == pytest.approx(0.5) and pts["plain_lora"]["y"] == pytest.approx(1.0)
    assert (pts["erft"]["y_lo"], pts["erft"]["y_hi"]) == pytest.approx((0.4, 0.6))
    assert pts["erft"]["first_clip"] == pytest.approx(0.5) and pts["plain_lora"]["first_clip"] == 0.0
    assert pts["erft"]["x_half"] == pytest.approx(0.0)  # every video keeps 1 sprite on average
    out = plot.main([str(run), "--out", str(tmp_path / "fig.png")])
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="summary.json is missing"):
        plot.main([str(tmp_path / "nowhere")])
    (run / "summary.json").write_text(json.dumps(dict(summary, drift={"erft": 20.0})))
    with pytest.raises(SystemExit, match="no plain_lora row"):
        plot._load(run)
