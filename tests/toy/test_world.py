"""The toy world must be an exact, deterministic oracle, and its dataset must match the official layout."""

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import torch
import pytest

from svi.toy import world as tw
from svi.toy.world import (Background, FilmScript, Scene, Sprite, caption, caption_at, captions_per_shot,
                               load_scene, make_scene, make_world, read_scenes, render, sprite_centres,
                               sprite_positions, write_dataset)

OFFICIAL_COLUMNS = ["Video Title", "Video Description", "Video URL", "Download URL", "Filename"]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _one_sprite_scene(x0=0.9, vx=0.05, y0=0.5, vy=0.0, shape="disc", colour="red") -> Scene:
    bg = Background("stripes", ("navy", "gray"), period=0.25, angle=0.3, phase=0.1)
    return Scene(seed=0, background=bg, sprites=(Sprite(shape, colour, 0.1, x0, y0, vx, vy),))


def test_same_seed_same_frames_and_different_seeds_differ():
    assert make_scene(7) == make_scene(7)
    a, b = render(make_scene(7), 0, 12, 64, 64), render(make_scene(7), 0, 12, 64, 64)
    assert a.dtype == np.uint8 and a.shape == (12, 64, 64, 3)
    assert np.array_equal(a, b)
    assert make_scene(7) != make_scene(8)
    assert _mad(a, render(make_scene(8), 0, 12, 64, 64)) > 10


@pytest.mark.parametrize("world", [make_scene(3), make_world(5, scene_change_every=9)], ids=["scene", "film"])
def test_rendering_in_pieces_equals_rendering_at_once(world):
    whole = render(world, 0, 40, 48, 80)
    pieces = np.concatenate([render(world, 0, 13, 48, 80), render(world, 13, 1, 48, 80),
                             render(world, 14, 26, 48, 80)])
    assert np.array_equal(whole, pieces)
    assert np.array_equal(render(world, 1000, 3, 48, 80)[1], render(world, 1001, 1, 48, 80)[0])


def test_sprites_stay_in_frame_move_and_are_drawn():
    scene = make_scene(11, max_sprites=4, min_sprites=4)
    h, w, frames = 64, 96, np.arange(400)
    centres = sprite_centres(scene, frames, h, w)
    r = np.array([s.size for s in scene.sprites]) * min(h, w)
    assert np.all(centres[..., 0] - r >= -1e-9) and np.all(centres[..., 0] + r <= w + 1e-9)
    assert np.all(centres[..., 1] - r >= -1e-9) and np.all(centres[..., 1] + r <= h + 1e-9)
    travelled = np.abs(np.diff(centres, axis=0)).sum(axis=0)  # (sprites, 2) pixels
    assert np.all(travelled > 50)
    # the top (last-drawn) sprite's centre pixel has exactly its colour
    for t in (0, 57, 301):
        cx, cy = centres[t, -1]
        frame = render(scene, t, 1, h, w)[0]
        assert tuple(frame[int(cy), int(cx)]) == tw.SPRITE_COLOURS[scene.sprites[-1].colour]


def test_sprite_bounces_elastically_off_the_wall():
    x = sprite_positions(_one_sprite_scene(x0=0.9, vx=0.05), np.arange(5))[:, 0, 0]
    np.testing.assert_allclose(x, [0.9, 0.95, 1.0, 0.95, 0.9], atol=1e-12)
    x = sprite_positions(_one_sprite_scene(x0=0.1, vx=-0.05), np.arange(5))[:, 0, 0]
    np.testing.assert_allclose(x, [0.1, 0.05, 0.0, 0.05, 0.1], atol=1e-12)
    # random scene: speed is preserved everywhere, and the sign flips only next to a wall
    scene = make_scene(21)
    pos = sprite_positions(scene, np.arange(300))
    for j, sprite in enumerate(scene.sprites):
        for axis, v in ((0, sprite.vx), (1, sprite.vy)):
            steps = np.diff(pos[:, j, axis])
            flips = np.nonzero(np.sign(steps[1:]) != np.sign(steps[:-1]))[0] + 1
            assert len(flips) >= 1
            at_wall = np.minimum(pos[flips, j, axis], 1 - pos[flips, j, axis])
            assert np.all(at_wall <= abs(v) + 1e-9)
            smooth = np.setdiff1d(np.arange(len(steps)), np.concatenate([flips - 1, flips]))
            np.testing.assert_allclose(np.abs(steps[smooth]), abs(v), rtol=1e-6)


def test_caption_names_sprites_and_background():
    scene = make_scene(4, min_sprites=3)
    text = caption(scene)
    for s in scene.sprites:
        assert f"{s.colour} {s.shape}" in text
    assert all(c in text for c in scene.background.colours)
    assert caption(_one_sprite_scene(colour="orange", shape="square")) == \
        "an orange square moves across a striped navy and gray background"


def test_drift_changes_background_only_when_enabled():
    still = _one_sprite_scene(vx=0.0, vy=0.0)
    drifting = dataclasses.replace(still, drift=0.3, drift_period=100.0, drift_phase=0.0)
    assert "brightening" in caption(drifting) and "brightening" not in caption(still)
    assert np.array_equal(render(still, 0, 1, 32, 32), render(still, 25, 1, 32, 32))
    frames = render(drifting, 0, 51, 32, 32).astype(np.float64)
    assert frames[25].mean() > frames[0].mean() + 5 and abs(frames[50].mean() - frames[0].mean()) < 1
    assert make_scene(2, drift=0.3).drift == 0.3 and make_scene(2).drift == 0.0


def test_film_cuts_to_a_new_scene_and_caption_at_shot_boundaries():
    film = FilmScript(seed=3, scene_change_every=10)
    frames = render(film, 0, 30, 64, 64)
    diffs = np.array([_mad(frames[t], frames[t + 1]) for t in range(29)])
    cuts = [9, 19]  # frame 9 -> 10 and 19 -> 20
    within = np.delete(diffs, cuts)
    assert diffs[cuts].min() > 10 and within.max() < 5 and diffs[cuts].min() > 4 * within.max()
    captions = captions_per_shot(film, 30)
    assert len(captions) == 3 and len(set(captions)) == 3
    assert caption_at(film, 10) == caption_at(film, 19) == captions[1]
    assert caption(film, 30) == "; then ".join(captions)
    assert captions_per_shot(film, 31)[-1] == caption_at(film, 30)


def test_bad_input_is_rejected():
    scene = make_scene(0)
    with pytest.raises(ValueError, match="num_frames"):
        render(scene, 0, 0, 64, 64)
    with pytest.raises(ValueError, match="height and width"):
        render(scene, 0, 1, 0, 64)
    with pytest.raises(ValueError, match="seed"):
        make_scene(-1)
    with pytest.raises(ValueError, match="scene_change_every"):
        FilmScript(seed=0, scene_change_every=0)
    with pytest.raises(ValueError, match="even"):
        write_dataset("unused", num_videos=1, num_frames=2, height=63, width=64)


def test_write_dataset_official_layout_and_readable_mp4s(tmp_path):
    decord = pytest.importorskip("decord")
    summary = write_dataset(tmp_path, num_videos=2, num_frames=17, height=64, width=64, seed=5,
                            progress=False)
    folder = tmp_path / "toyworld"
    assert summary["count"] == 2 and summary["csv"] == str(folder / "toyworld.csv")
    with open(folder / "toyworld.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == OFFICIAL_COLUMNS and len(rows) == 3
    scenes = read_scenes(folder / "scenes.jsonl")
    for row, meta in zip(rows[1:], scenes):
        record = dict(zip(OFFICIAL_COLUMNS, row))
        assert record["Filename"] == meta["filename"] and (folder / record["Filename"]).is_file()
        world = load_scene(meta)
        assert record["Video Description"] == caption(world) == meta["caption"]
        truth = render(world, 0, 17, 64, 64)
        video = decord.VideoReader(str(folder / record["Filename"]))
        decoded = video.get_batch(list(range(len(video)))).asnumpy()
        assert decoded.shape == (17, 64, 64, 3)
        assert _mad(decoded, truth) < 12
    assert scenes[0]["seed"] != scenes[1]["seed"]


def test_write_dataset_film_records_per_shot_captions(tmp_path):
    write_dataset(tmp_path, num_videos=1, num_frames=12, height=32, width=32, scene_change_every=5,
                  category="films", progress=False)
    (meta,) = read_scenes(tmp_path / "films" / "scenes.jsonl")
    world = load_scene(meta)
    assert meta["film"] and isinstance(world, FilmScript) and len(meta["captions"]) == 3
    assert meta["captions"] == captions_per_shot(world, 12)
    assert json.loads(json.dumps(meta))["script"]["scene_change_every"] == 5


def test_entrypoint_writes_the_layout(tmp_path):
    out = tmp_path / "data"
    cmd = [sys.executable, "-m", "svi.toy.export", f"out={out}", "num_videos=2", "num_frames=17", "height=64",
           "width=64", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 2 videos" in result.stdout
    folder = out / "toyworld"
    with open(folder / "toyworld.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == OFFICIAL_COLUMNS and len(rows) == 3
    assert all((folder / r[4]).is_file() for r in rows[1:])
    assert len(read_scenes(folder / "scenes.jsonl")) == 2


def test_entrypoint_requires_out(tmp_path):
    result = subprocess.run([sys.executable, "-m", "svi.toy.export", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and "out=" in result.stderr


def test_sprite_size_range_scales_the_sprites_and_keeps_the_rest_of_the_scene():
    small, big = make_scene(9, 2, 2), make_scene(9, 2, 2, sprite_size=(0.15, 0.22))
    assert small.background == big.background
    for a, b in zip(small.sprites, big.sprites):
        assert 0.07 <= a.size <= 0.14 and 0.15 <= b.size <= 0.22
        # the same draws mapped to the new range: only the size differs
        assert np.isclose((a.size - 0.07) / 0.07, (b.size - 0.15) / 0.07)
        assert dataclasses.replace(a, size=b.size) == b
    assert make_scene(9, 2, 2, sprite_size=[0.07, 0.14]) == small  # the default range, as a list too
    frames = render(big, 0, 1, 32, 32)[0]
    colours = [np.all(frames == tw.SPRITE_COLOURS[s.colour], axis=-1).sum() for s in big.sprites]
    assert sum(colours) > sum(np.all(render(small, 0, 1, 32, 32)[0] == tw.SPRITE_COLOURS[s.colour], axis=-1).sum()
                              for s in small.sprites)
    film = FilmScript(seed=3, scene_change_every=10, sprite_size=[0.15, 0.22])
    assert film.sprite_size == (0.15, 0.22) and all(0.15 <= s.size <= 0.22 for s in film.shot(1).sprites)
    assert load_scene({"film": True, "script": film.to_dict()}).shot(1) == film.shot(1)
    for bad in ((0.2, 0.1), (0.0, 0.1), (0.3, 0.5), 0.2, ("a", 0.1)):
        with pytest.raises(ValueError, match="sprite_size"):
            make_scene(0, sprite_size=bad)


def test_world_spec_passes_the_sprite_size_to_scenes_and_films():
    from svi.toy.clips import ToyWorldSpec, toy_videos

    spec = ToyWorldSpec(sprite_size=[0.15, 0.22])
    assert all(0.15 <= s.size <= 0.22 for s in spec.world(4).sprites)
    assert spec.world(4) == make_scene(4, 2, 2, sprite_size=(0.15, 0.22))
    film = ToyWorldSpec(sprite_size=[0.15, 0.22], scene_change_every=10).world(4)
    assert all(0.15 <= s.size <= 0.22 for s in film.shot(2).sprites)
    big, small = toy_videos(2, 5, world=spec), toy_videos(2, 5)
    assert big.shape == small.shape == (2, 3, 5, 32, 32) and not torch.equal(big, small)


def test_speed_range_sets_how_fast_the_sprites_move_and_keeps_the_rest_of_the_scene():
    moving, still, fast = make_scene(9, 2, 2), make_scene(9, 2, 2, speed=[0, 0]), make_scene(9, 2, 2, speed=(0.05, 0.1))
    assert moving == make_scene(9, 2, 2, speed=tw.SPRITE_SPEED)  # the default range
    assert moving.background == still.background == fast.background
    for a, s, f in zip(moving.sprites, still.sprites, fast.sprites):
        assert s.vx == s.vy == 0.0 and dataclasses.replace(a, vx=0.0, vy=0.0) == dataclasses.replace(s, vx=0.0, vy=0.0)
        assert 0.05 <= abs(f.vx) <= 0.1 and 0.05 <= abs(f.vy) <= 0.1
        # the same draws mapped to the new range, the same directions
        assert np.isclose((abs(a.vx) - 0.008) / 0.022, (abs(f.vx) - 0.05) / 0.05)
        assert np.sign(a.vx) == np.sign(f.vx) and np.sign(a.vy) == np.sign(f.vy)
    frames = render(still, 0, 40, 32, 32)
    assert (frames == frames[:1]).all()  # still sprites: every frame is frame 0
    assert not (render(moving, 0, 40, 32, 32) == frames[:1]).all()
    film = FilmScript(seed=3, scene_change_every=10, speed=[0, 0])
    assert film.speed == (0.0, 0.0) and all(s.vx == s.vy == 0 for s in film.shot(1).sprites)
    assert load_scene({"film": True, "script": film.to_dict()}).shot(1) == film.shot(1)
    for bad in ((0.02, 0.01), (-0.01, 0.01), (0.1, 0.3), 0.02, ("a", 0.1)):
        with pytest.raises(ValueError, match="speed"):
            make_scene(0, speed=bad)


def test_world_spec_and_dataset_pass_the_speed(tmp_path):
    from svi.toy.clips import ToyWorldSpec, toy_videos

    spec = ToyWorldSpec(speed=[0, 0])
    assert spec.world(4) == make_scene(4, 2, 2, speed=(0, 0))
    clips = toy_videos(2, 5, world=spec)
    assert torch.equal(clips, clips[:, :, :1].expand_as(clips))  # nothing moves in a still world
    summary = write_dataset(tmp_path, num_videos=1, num_frames=6, height=32, width=32, speed=[0, 0], progress=False)
    scene = load_scene(read_scenes(summary["jsonl"])[0])
    assert scene == make_scene(scene.seed, 4, 1, speed=(0, 0)) and all(s.vx == s.vy == 0 for s in scene.sprites)
