"""VideoClipDataset on small real mp4 files written on the fly.

Frames are uniform grey with brightness 10 + 6 * frame_index, so the source frame behind every output
frame can be read back from its pixels and compared with the reported frame indices.
"""

import csv
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

decord = pytest.importorskip("decord")
iio = pytest.importorskip("imageio.v2")

from svi.data.video import (  # noqa: E402
    ClipParams,
    DataStats,
    VideoClipDataset,
    VideoSkipWarning,
    collate_clips,
)

H, W = 64, 96
OFFICIAL_HEADER = ["Video Title", "Video Description", "Video URL", "Download URL", "Filename"]


def brightness(i: int) -> int:
    return 10 + 6 * i


def write_video(path, num_frames, h=H, w=W, frame_fn=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = iio.get_writer(str(path), fps=16, codec="libx264", quality=8, macro_block_size=1,
                            ffmpeg_log_level="error")
    for i in range(num_frames):
        frame = frame_fn(i) if frame_fn else np.full((h, w, 3), brightness(i) % 256, np.uint8)
        writer.append_data(frame)
    writer.close()
    return str(path)


def decoded_index(frames: torch.Tensor) -> torch.Tensor:
    """Source frame index from frames in [-1, 1] shaped (3, ..., H, W) -> (...)."""
    level = (frames + 1) * 127.5  # back to 0..255
    return torch.round((level.mean(dim=(0, -2, -1)) - 10) / 6).long()


def write_official_csv(folder, rows):
    name = os.path.basename(folder)
    with open(os.path.join(folder, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OFFICIAL_HEADER)
        for filename, description in rows:
            w.writerow([filename.split(".")[0], description, "https://x", "https://y", filename])


def write_metadata_csv(root, rows, columns=("path", "caption")):
    with open(os.path.join(root, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    write_video(root / "Cats" / "a.mp4", 40)
    write_video(root / "Cats" / "b.mp4", 30)
    write_video(root / "sea" / "c.mp4", 24)
    write_official_csv(root / "Cats", [("a.mp4", "A white cat, sitting."), ("b.mp4", "A cat on a couch")])
    write_official_csv(root / "sea", [("c.mp4", "A boat in the bay")])
    return str(root)


@pytest.fixture(scope="module")
def messy_root(tmp_path_factory):
    """Metadata layout with one good video, then every kind of bad input, then another good one."""
    root = tmp_path_factory.mktemp("messy")
    write_video(root / "v" / "good1.mp4", 40)
    (root / "v" / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    write_video(root / "v" / "short.mp4", 3)
    full = open(write_video(root / "v" / "full.mp4", 40), "rb").read()
    (root / "v" / "truncated.mp4").write_bytes(full[: len(full) // 2])
    write_video(root / "v" / "good2.mp4", 30)
    names = ["good1", "bad", "short", "missing", "truncated", "good2"]
    write_metadata_csv(root, [(f"v/{n}.mp4", f"caption {n}") for n in names])
    return str(root)


def small(root, **kw):
    kw = {"num_frames": 9, "height": 32, "width": 48, "max_stride": 2, **kw}
    return VideoClipDataset(root, **kw)


# ------------------------------------------------------------------------------------------ basics
@pytest.mark.parametrize("num_frames", [0, 2, 16, 80])
def test_num_frames_must_be_one_plus_4k(tmp_path, num_frames):
    with pytest.raises(ValueError, match=r"num_frames must be 1\+4k \(e.g. 17, 81\), got " + str(num_frames)):
        VideoClipDataset(str(tmp_path), num_frames=num_frames)


def test_official_layout_shapes_range_and_captions(official_root):
    ds = small(official_root, num_frames=17)
    assert ds.layout == "official" and len(ds) == 3
    captions = {"a.mp4": "A white cat, sitting.", "b.mp4": "A cat on a couch", "c.mp4": "A boat in the bay"}
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 17, 32, 48) and item["video"].dtype == torch.float32
        assert item["ref_image"].shape == (3, 32, 48) and item["ref_image"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert item["ref_image"].min() >= -1 and item["ref_image"].max() <= 1
        assert item["caption"] == captions[os.path.basename(item["path"])]
        assert os.path.isfile(item["path"]) and item["skipped"] == [] and item["index"] == i
        assert item["frame_indices"].dtype == torch.long and item["frame_indices"].shape == (17,)


def test_metadata_layouts_pass_captions_and_leave_other_columns_to_the_condition(tmp_path):
    """Columns besides path and caption belong to the condition type (Condition.read_row); without one
    that reads them they are ignored (tests/test_condition_plugin.py covers a type that does)."""
    write_video(tmp_path / "clips" / "x.mp4", 20)
    outside = write_video(tmp_path / "elsewhere" / "y.mp4", 20)
    write_metadata_csv(tmp_path, [("clips/x.mp4", "a dancer", "aud/x.wav", "pose/x.mp4"),
                                  (outside, "absolute path", "", "")],
                       columns=("path", "caption", "audio", "pose"))
    ds = small(str(tmp_path))
    assert ds.layout == "metadata"
    first, second = ds[0], ds[1]
    assert first["caption"] == "a dancer" and first["path"] == str(tmp_path / "clips" / "x.mp4")
    assert second["path"] == outside and second["caption"] == "absolute path"
    assert first["extras"] == {} and first["draws"] == {} and "audio" not in first

    jsonl_root = tmp_path / "jsonl"
    write_video(jsonl_root / "z.mp4", 20)
    line = json.dumps({"path": "z.mp4", "caption": "from jsonl"})
    (jsonl_root / "metadata.jsonl").write_text(line + "\n\n")  # blank lines are allowed
    item = small(str(jsonl_root))[0]
    assert item["caption"] == "from jsonl" and "audio" not in item


# ------------------------------------------------------------------------------------------ sampling
def test_frame_indices_follow_stride_and_pixels(official_root):
    ds = small(official_root, num_frames=9, max_stride=3)
    strides = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            fi = item["frame_indices"]
            assert torch.all(fi[1:] - fi[:-1] == item["stride"]) and not item["short"]
            assert torch.equal(decoded_index(item["video"]), fi)
            assert decoded_index(item["ref_image"]).item() == item["ref_index"]
            strides.add(item["stride"])
    assert strides == {1, 2, 3}


def test_stride_is_reduced_for_videos_too_short_for_it(official_root):
    ds = small(official_root, num_frames=17, max_stride=3)
    for index in range(20):
        p = ds.draw_params(index, 40, H, W)  # stride 3 needs 49 frames: at most 2 fits
        assert p.stride in (1, 2) and not p.short
        assert p.frame_indices[-1] < 40
        p = ds.draw_params(index, 24, H, W)  # only stride 1 fits
        assert p.stride == 1 and not p.short


def test_reference_frame_outside_the_clip(official_root):
    ds = small(official_root, num_frames=17, max_stride=2)
    for index in range(30):
        p = ds.draw_params(index, 40, H, W)
        assert not p.frame_indices[0] <= p.ref_index <= p.frame_indices[-1]
        assert 0 <= p.ref_index < 40
        p = ds.draw_params(index, 17, H, W)  # the clip covers the whole video: fall back to inside
        assert p.frame_indices == tuple(range(17)) and 0 <= p.ref_index < 17


def test_short_video_repeats_last_frame(messy_root):
    ds = small(messy_root, num_frames=9)
    item = ds[2]  # short.mp4, 3 frames
    assert os.path.basename(item["path"]) == "short.mp4"
    assert item["short"] is True and item["stride"] == 1
    assert item["frame_indices"].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 2]
    assert decoded_index(item["video"]).tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 2]
    assert torch.equal(item["video"][:, 2], item["video"][:, 8])


def test_crop_and_resize_to_another_aspect(tmp_path):
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    path = write_video(tmp_path / "t.mp4", 20, frame_fn=lambda i: np.roll(texture, i, axis=1))
    write_metadata_csv(tmp_path, [("t.mp4", "texture")])
    ds = VideoClipDataset(str(tmp_path), num_frames=5, height=32, width=32, max_stride=2)
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        top, left, ch, cw = item["crop"]
        assert ch == cw and round(H * 13 / 14) <= ch <= H and top + ch <= H and left + cw <= W
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        frames = reader.get_batch(item["frame_indices"].tolist()).asnumpy()  # (F, H, W, 3)
        x = torch.from_numpy(frames[:, top:top + ch, left:left + cw]).permute(0, 3, 1, 2)  # (F, 3, ch, cw)
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        expected = x.float() / 127.5 - 1  # (F, 3, 32, 32)
        assert item["video"].shape == (3, 5, 32, 32)
        assert torch.allclose(item["video"], expected.permute(1, 0, 2, 3), atol=1e-6)


def test_draw_params_are_reproducible(official_root):
    a, b = small(official_root, seed=7), small(official_root, seed=7)
    for index in range(5):
        assert a.draw_params(index, 40, H, W) == b.draw_params(index, 40, H, W)
    first = [a.draw_params(i, 40, H, W) for i in range(5)]
    a.set_epoch(1)
    assert [a.draw_params(i, 40, H, W) for i in range(5)] != first
    assert [small(official_root, seed=8).draw_params(i, 40, H, W) for i in range(5)] != first
    assert isinstance(first[0], ClipParams)

    # What a latent cache does: probe, draw, decode; it must get the trainer's exact clip.
    b.set_epoch(1)
    item = b[1]
    params = a.draw_params(1, *a.probe(item["path"]))
    video, ref = a.load_clip(item["path"], params)
    assert torch.equal(video, item["video"]) and torch.equal(ref, item["ref_image"])
    assert params.crop == item["crop"] and params.stride == item["stride"]


# ------------------------------------------------------------------------------------------ bad input
def test_bad_files_are_skipped_warned_once_and_counted(messy_root):
    ds = small(messy_root)
    loader = DataLoader(ds, batch_size=2, shuffle=False, num_workers=0, collate_fn=collate_clips)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            ds.set_epoch(epoch)
            stats = DataStats()
            for batch in loader:
                assert batch["video"].shape == (len(batch["path"]), 3, 9, 32, 48)
                assert batch["crop"].shape == (len(batch["path"]), 4)
                stats.update(batch)
    skip_warnings = [str(w.message) for w in caught if issubclass(w.category, VideoSkipWarning)]
    bad = {"bad.mp4", "missing.mp4", "truncated.mp4"}
    assert len(skip_warnings) == 3  # one per bad file, not one per retry or epoch
    assert {next(n for n in bad if n in msg) for msg in skip_warnings} == bad
    assert {os.path.basename(p) for p in stats.skipped} == bad
    assert "file not found" in stats.reasons[os.path.join(messy_root, "v", "missing.mp4")]
    summary = stats.summary()
    assert summary.startswith("6 clips read, 3 files skipped (")
    assert all(name in summary for name in bad)
    assert summary.endswith(", 2 short videos padded")  # short.mp4 itself, and in place of bad.mp4

    item = ds[3]  # missing.mp4 -> truncated.mp4 -> good2.mp4
    assert os.path.basename(item["path"]) == "good2.mp4" and item["index"] == 5
    assert [os.path.basename(p) for p in item["skipped"]] == ["missing.mp4", "truncated.mp4"]


def test_skip_counts_survive_worker_processes(messy_root):
    ds = small(messy_root, min_frames=5)  # short.mp4 (3 frames) is now unusable too
    loader = DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_clips)
    stats = DataStats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoSkipWarning)
        for batch in loader:
            stats.update(batch)
    assert {os.path.basename(p) for p in stats.skipped} == {"bad.mp4", "short.mp4", "missing.mp4",
                                                            "truncated.mp4"}
    assert "min_frames=5" in stats.summary() and stats.clips == 6 and stats.short == 0


def test_all_files_bad_raises(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    write_metadata_csv(tmp_path, [("bad.mp4", "x"), ("gone.mp4", "y")])
    ds = small(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VideoSkipWarning)
        with pytest.raises(RuntimeError, match="none of the 2 videos"):
            ds[0]


# ------------------------------------------------------------------------------------------ start-up errors
def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        VideoClipDataset(str(tmp_path / "nowhere"))


def test_no_metadata_names_what_was_looked_for(tmp_path):
    (tmp_path / "Cats").mkdir()
    looked_for = r"metadata\.csv, metadata\.jsonl, or <category>/<category>\.csv"
    with pytest.raises(FileNotFoundError, match=looked_for):
        VideoClipDataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv or metadata\.jsonl"):
        VideoClipDataset(str(tmp_path), layout="metadata")
    with pytest.raises(ValueError, match="layout must be one of"):
        VideoClipDataset(str(tmp_path), layout="videos")


def test_missing_column_names_column_and_file(tmp_path):
    (tmp_path / "Cats").mkdir()
    (tmp_path / "Cats" / "Cats.csv").write_text("Video Title,Filename\ncat,a.mp4\n")
    missing = r"is missing required column\(s\) \['{}'\]"
    with pytest.raises(ValueError, match=r"Cats\.csv " + missing.format("Video Description")):
        VideoClipDataset(str(tmp_path))

    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "metadata.csv").write_text("path,text\na.mp4,hello\n")
    with pytest.raises(ValueError, match=r"metadata\.csv " + missing.format("caption")):
        VideoClipDataset(str(meta))
    (meta / "metadata.csv").unlink()
    (meta / "metadata.jsonl").write_text('{"path": "a.mp4"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl, line 1 " + missing.format("caption")):
        VideoClipDataset(str(meta))


def test_empty_csv(tmp_path):
    (tmp_path / "sea").mkdir()
    write_official_csv(str(tmp_path / "sea"), [])
    with pytest.raises(ValueError, match=r"no videos listed in .*sea\.csv"):
        VideoClipDataset(str(tmp_path))


# ------------------------------------------------------------------------------------------ full size
def test_full_size_81_frames(tmp_path):
    write_video(tmp_path / "big.mp4", 81, frame_fn=lambda i: np.full((480, 832, 3), 3 * i, np.uint8))
    write_metadata_csv(tmp_path, [("big.mp4", "full size")])
    ds = VideoClipDataset(str(tmp_path))  # defaults: 81 frames at 480x832, max_stride 2
    start = time.perf_counter()
    item = ds[0]
    elapsed = time.perf_counter() - start
    assert item["video"].shape == (3, 81, 480, 832) and item["ref_image"].shape == (3, 480, 832)
    assert item["stride"] == 1 and item["frame_indices"].tolist() == list(range(81)) and not item["short"]
    levels = ((item["video"] + 1) * 127.5).mean(dim=(0, 2, 3))  # (81,)
    assert torch.allclose(levels, 3 * torch.arange(81).float(), atol=2)
    assert elapsed < 20
