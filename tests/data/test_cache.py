"""The latent cache and the raw-video data paths: equality with on-the-fly encoding, the index, resume,
mismatch refusals, skip counts, and svi-train end to end on `data=cache` and `data=folders`.

Unit tests run at a reduced geometry (9 frames, 32x32) to stay fast; the end-to-end runs use the tiny
backbone's native geometry (17 frames, 64x64) where it matters.
"""

import csv
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

pytest.importorskip("decord")

from svi.conditions import FilmCondition, ShotCondition  # noqa: E402
from svi.data import cache as cache_mod  # noqa: E402
from svi.data.cache import CacheMismatchError, CachedLatents, prepare_cache, read_index  # noqa: E402
from svi.data.datamodule import LatentCacheDataModule, VideoFolderDataModule  # noqa: E402
from svi.toy.world import write_dataset  # noqa: E402
from svi.data.video import DataStats, VideoClipDataset, collate_clips  # noqa: E402
from svi.lit.module import ERFTModule  # noqa: E402
from svi.paths import CONF_DIR  # noqa: E402

SMALL = dict(num_frames=9, height=32, width=32)  # unit-test geometry: 3 latent frames of 4x4
BAD = ("broken.mp4", "missing.mp4")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """3 toy-world videos (33 frames, 64x64) in the official layout, plus a corrupt and a missing file."""
    root = tmp_path_factory.mktemp("toy")
    summary = write_dataset(root, num_videos=3, num_frames=33, height=64, width=64, progress=False)
    (root / "toyworld" / "broken.mp4").write_bytes(b"not a video")
    with open(summary["csv"], "a", newline="") as f:
        for name in BAD:
            csv.writer(f).writerow([name, f"the {name} one", "", "", name])
    return str(root)


@pytest.fixture(scope="module")
def shot():
    return ShotCondition()


@pytest.fixture(scope="module")
def prepared(videos, tiny_stack, shot, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache")
    dataset = VideoClipDataset(videos, **SMALL, seed=0)
    summary = prepare_cache(tiny_stack, shot, dataset, out, clips_per_video=2, videos_per_shard=2,
                            backbone_name="tiny", progress=False)
    return SimpleNamespace(out=out, dataset=dataset, summary=summary)


def _raw_batch(dataset, index, draw):
    """The clip data=folders reads for `index` in epoch `draw`, through draw_params + load_clip."""
    path = dataset.records[index].path
    dataset.set_epoch(draw)
    params = dataset.draw_params(index, *dataset.probe(path))
    video, ref = dataset.load_clip(path, params)
    dataset.set_epoch(0)
    batch = {"video": video[None], "ref_image": ref[None], "caption": [dataset.records[index].caption]}
    return batch, params


def test_cached_clip_equals_on_the_fly_encoding(prepared, tiny_stack, shot):
    cached = CachedLatents(prepared.out, sample="all")
    # video 0 draw 1 and video 2 draw 0 (row 4: video 1 holds rows 2-3)
    for row, (index, draw) in ((1, (0, 1)), (4, (2, 0))):
        item = cached[row]
        assert (item["index"], item["draw"]) == (index, draw)
        batch, params = _raw_batch(prepared.dataset, index, draw)
        # The training module's own encoder path, on the module's frozen stack and condition.
        expected = ERFTModule.prepare_batch(SimpleNamespace(stack=tiny_stack, condition=shot), batch)
        assert (item["stride"], item["start"], item["crop"], item["ref_index"]) == \
               (params.stride, params.start, params.crop, params.ref_index)
        assert item["latents"].shape == (16, 3, 4, 4) and item["y"].shape == (20, 3, 4, 4)
        assert item["text"].shape == (512, 32) and item["image"].shape == (257, 24)
        for key in ("latents", "y", "text", "image"):
            torch.testing.assert_close(item[key], expected[key][0].float(), rtol=1e-5, atol=1e-5)
        assert item["y"][:4, 0].eq(1).all() and item["y"][:4, 1:].eq(0).all()  # shot: only frame 0 known


def test_index_records_settings_clips_and_skips(prepared, videos):
    index = read_index(prepared.out)
    assert index["complete"] and index["backbone"] == "tiny" and index["num_shards"] == 3
    assert index["condition"] == {"type": "ShotCondition", "name": "shot", "num_motion_frames": 1,
                                  "ref_pad_num": -1, "mask_all_motion_frames": False}
    assert index["geometry"] == SMALL and index["clips_per_video"] == 2
    assert index["dims"] == {"latent_channels": 16, "text_len": 512, "text_dim": 32, "image_dim": 24}
    s = prepared.summary
    assert (s["clips"], s["videos"], s["shards_written"], s["shards_reused"]) == (6, 3, 3, 0)
    assert sorted(os.path.basename(p) for p in s["skipped"]) == sorted(BAD)
    reasons = {os.path.basename(p): r for p, r in s["skipped"].items()}
    assert reasons["missing.mp4"] == "file not found" and "cannot open" in reasons["broken.mp4"]
    shards = index["shards"]
    assert [len(shards[k]["clips"]) for k in sorted(shards)] == [4, 2, 0]
    assert shards["00002"]["file"] is None  # all its videos were unusable: no file
    clips = [c for k in sorted(shards) for c in shards[k]["clips"]]
    assert [(c["video"], c["draw"]) for c in clips] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    # Draws of a video differ (new stride/start/crop per epoch), so the cache keeps variety.
    assert all((a["start"], a["crop"], a["stride"]) != (b["start"], b["crop"], b["stride"])
               for a, b in zip(clips[::2], clips[1::2]))
    # Only the real text tokens are stored; reading pads them back.
    from safetensors.torch import load_file

    shard = load_file(str(prepared.out / shards["00000"]["file"]))
    lengths = shard["text_lengths"].tolist()
    assert lengths == [c["text_len"] for c in clips[:4]] and all(0 < n < 512 for n in lengths)
    assert shard["text"].shape == (sum(lengths), 32) and shard["latents"].shape == (4, 16, 3, 4, 4)
    assert oct(os.stat(prepared.out / shards["00000"]["file"]).st_mode & 0o777) != "0o600"


def test_cached_latents_serves_one_draw_per_video_per_epoch(prepared):
    data = CachedLatents(prepared.out)  # sample="epoch"
    assert len(data) == 3 and len(CachedLatents(prepared.out, sample="all")) == 6
    for epoch, draw in ((0, 0), (1, 1), (2, 0)):
        data.set_epoch(epoch)
        assert [data[i]["draw"] for i in range(3)] == [draw] * 3
    batch = collate_clips([data[0], data[1]])
    assert batch["latents"].shape == (2, 16, 3, 4, 4) and batch["text"].shape == (2, 512, 32)
    assert batch["crop"].shape == (2, 4) and batch["skipped"] == []
    stats = DataStats()
    stats.update(batch)
    assert (stats.clips, stats.short, len(stats.skipped)) == (2, 0, 0)


def test_cache_datamodule_refuses_another_condition_geometry_or_backbone(prepared, shot):
    def setup(**kwargs):
        LatentCacheDataModule(str(prepared.out), **kwargs).setup("fit")

    setup(condition=shot, backbone_name="tiny", dims={"latent_channels": 16, "text_dim": 32}, **SMALL)  # fits
    film = FilmCondition()
    with pytest.raises(CacheMismatchError, match=r"(?s)cache 'shot'.*training 'film'.*K=5"):
        setup(condition=film)
    with pytest.raises(CacheMismatchError, match=r"data.num_frames: cache 9, training 17"):
        setup(num_frames=17)
    with pytest.raises(CacheMismatchError, match=r"backbone: cache 'tiny', training 'wan21_i2v_14b'"):
        setup(backbone_name="wan21_i2v_14b")
    with pytest.raises(CacheMismatchError, match=r"backbone.dims.text_dim: cache 32, training 4096"):
        setup(dims={"text_dim": 4096})
    with pytest.raises(FileNotFoundError, match="svi-prepare"):
        LatentCacheDataModule(str(prepared.out / "nope")).setup("fit")


def test_interrupted_preparation_resumes_and_skips_finished_shards(videos, tiny_stack, shot, tmp_path,
                                                                   monkeypatch):
    dataset = VideoClipDataset(videos, **SMALL, seed=0)
    kwargs = dict(clips_per_video=1, videos_per_shard=2, backbone_name="tiny", progress=False)
    calls = []
    real = cache_mod._prepare_shard

    def interrupted(*args, **kw):
        if calls:
            raise KeyboardInterrupt  # the user stops the run during the second shard
        calls.append(args[4])
        return real(*args, **kw)

    monkeypatch.setattr(cache_mod, "_prepare_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(tiny_stack, shot, dataset, tmp_path, **kwargs)
    index = read_index(tmp_path)
    assert not index["complete"] and sorted(index["shards"]) == ["00000"]
    with pytest.raises(ValueError, match=r"incomplete \(1 of 3 shards\)"):
        CachedLatents(tmp_path)
    assert len(CachedLatents(tmp_path, allow_incomplete=True)) == 2
    first = tmp_path / "shard_00000.safetensors"
    stamp = first.stat().st_mtime_ns

    def counted(*args, **kw):
        calls.append(args[4])
        return real(*args, **kw)

    monkeypatch.setattr(cache_mod, "_prepare_shard", counted)
    summary = prepare_cache(tiny_stack, shot, dataset, tmp_path, **kwargs)
    assert calls == ["00000", "00001", "00002"]  # shard 0 was not encoded again
    assert first.stat().st_mtime_ns == stamp
    assert (summary["shards_reused"], summary["shards_written"], summary["clips"]) == (1, 2, 3)
    assert read_index(tmp_path)["complete"] and not list(tmp_path.glob("*.tmp"))
    # Continuing with other settings would mix two caches: refused before any work.
    with pytest.raises(CacheMismatchError, match=r"clips_per_video: 1 there, 2 now"):
        prepare_cache(tiny_stack, shot, dataset, tmp_path, **{**kwargs, "clips_per_video": 2})


def test_folder_datamodule_batches_raw_clips_new_draws_per_epoch_and_counts_skips(videos):
    data = VideoFolderDataModule(videos, **SMALL, max_stride=2, seed=0)
    data.setup("fit")
    assert len(data.dataset) == 5

    def one_epoch(epoch):
        data.set_epoch(epoch)
        stats, params = DataStats(), {}
        for batch in data.train_dataloader():
            assert batch["video"].shape == (1, 3, 9, 32, 32) and batch["ref_image"].shape == (1, 3, 32, 32)
            assert isinstance(batch["caption"], list)
            stats.update(batch)
            params[int(batch["index"])] = (int(batch["stride"]), batch["crop"].tolist())
        return stats, params

    with pytest.warns(UserWarning, match="skipping video"):
        stats0, params0 = one_epoch(0)
    stats1, params1 = one_epoch(1)
    assert stats0.clips == 5 and sorted(os.path.basename(p) for p in stats0.skipped) == sorted(BAD)
    assert len(stats1.skipped) == 2  # a bad file is counted again each epoch, never raised
    assert params0 != params1


# ----------------------------------------------------------------------------------------------
# End to end: svi-prepare -> svi-train data=cache, and svi-train data=folders
# ----------------------------------------------------------------------------------------------

def _compose(name, overrides):
    """compose() with the Hydra config set, as in a real run (so ${hydra:runtime.choices.*} resolves)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    finally:
        HydraConfig.instance().cfg = None  # leave no global Hydra state to other tests
    return cfg


# The data path is under test here, not the paper's LoRA size: a small LoRA without gradient checkpointing
# trains the tiny backbone ~6x faster on a CPU. The documented commands run unchanged in the slow test.
FAST = ["trainer=cpu", "logger=csv", "lora.rank=8", "lora.alpha=8", "model.gradient_checkpointing=false",
        "+trainer.enable_progress_bar=false"]


def _metric_rows(run_dir):
    return list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))


@pytest.fixture(scope="module")
def native_cache(videos, tmp_path_factory):
    """svi-prepare at the tiny backbone's native geometry, one draw per video."""
    from svi.prepare import prepare

    out = tmp_path_factory.mktemp("native_cache")
    cfg = _compose("prepare", ["data=folders", f"data.root={videos}", "backbone=tiny", f"out={out}",
                               "clips_per_video=1", "progress=false"])
    return out, prepare(cfg)


def test_svi_prepare_records_the_composed_settings_and_reports_skips(native_cache, videos, capsys):
    from svi.prepare import prepare

    out, summary = native_cache
    index = read_index(out)
    assert index["backbone"] == "tiny" and index["geometry"] == {"num_frames": 17, "height": 64, "width": 64}
    assert index["condition"]["name"] == "shot" and index["source"]["layout"] == "official"
    assert summary["clips"] == 3 and len(summary["skipped"]) == 2
    # The same command again: everything is already done, nothing is encoded; skips are still reported.
    cfg = _compose("prepare", ["data=folders", f"data.root={videos}", "backbone=tiny", f"out={out}",
                               "clips_per_video=1", "progress=false"])
    again = prepare(cfg)
    assert (again["shards_written"], again["shards_reused"], again["clips"]) == (0, 1, 3)
    printed = capsys.readouterr().out
    assert "3 clips of 3 videos" in printed and "1 already done" in printed
    assert "2 video(s) skipped" in printed
    assert "broken.mp4" in printed and "missing.mp4: file not found" in printed


def test_svi_prepare_requires_out_and_raw_videos(videos):
    from svi.prepare import prepare

    with pytest.raises(SystemExit, match="out not given"):
        prepare(_compose("prepare", ["backbone=tiny", f"data.root={videos}"]))
    with pytest.raises(SystemExit, match="use data=folders"):
        prepare(_compose("prepare", ["backbone=tiny", "data=synthetic", "out=x"]))


def test_train_on_the_cache_sees_a_new_draw_each_epoch(prepared, tmp_path):
    import lightning as L

    from svi.train import build, train

    class Recorder(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append((trainer.current_epoch, int(batch["index"]), int(batch["draw"])))

    root = str(prepared.out)  # 3 videos x 2 draws at the reduced geometry
    geometry = [f"data.{k}={v}" for k, v in SMALL.items()]
    cfg = _compose("train", ["experiment=svi_shot", "backbone=tiny", "data=cache", f"data.root={root}",
                             *geometry, *FAST, "trainer.max_steps=7", f"paths.output_dir={tmp_path}"])
    model, data, trainer = build(cfg)
    recorder = Recorder()
    trainer.callbacks.append(recorder)
    trainer.fit(model, datamodule=data)
    assert [(epoch, draw) for epoch, _, draw in recorder.seen] == \
           [(0, 0)] * 3 + [(1, 1)] * 3 + [(2, 0)]  # epoch e serves draw e mod clips_per_video
    assert sorted(index for epoch, index, _ in recorder.seen if epoch == 0) == [0, 1, 2]
    rows = _metric_rows(tmp_path)
    losses = [float(r["train/loss"]) for r in rows if r["train/loss"]]
    assert len(losses) == 7 and all(torch.isfinite(torch.tensor(losses)))
    epochs = [r for r in rows if r.get("data/clips")]
    assert [float(r["data/clips"]) for r in epochs] == [3, 3, 1]  # stopped at step 7
    assert all(float(r["data/skipped"]) == 0 for r in epochs)
    # Training with another condition than the cache's is refused before the first step.
    film = _compose("train", ["experiment=svi_film", "backbone=tiny", "data=cache", f"data.root={root}",
                              *geometry, *FAST, "trainer.max_steps=1", f"paths.output_dir={tmp_path}"])
    with pytest.raises(CacheMismatchError, match="film"):
        train(film)


@pytest.mark.filterwarnings("ignore::svi.data.video.VideoSkipWarning")
def test_train_on_raw_video_folders_counts_bad_files(videos, tmp_path):
    from svi.train import train

    # Reduced geometry and one epoch (5 items: 3 videos + 2 bad entries replaced by the next readable one).
    cfg = _compose("train", ["experiment=svi_shot", "backbone=tiny", "data=folders", f"data.root={videos}",
                             "data.num_frames=9", "data.height=32", "data.width=32", *FAST,
                             "trainer.max_steps=5", f"paths.output_dir={tmp_path}"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    epoch = [r for r in _metric_rows(tmp_path) if r.get("data/skipped")]
    assert len(epoch) == 1
    assert [float(epoch[0][f"data/{k}"]) for k in ("clips", "skipped", "short")] == [5, 2, 0]


@pytest.mark.slow
@pytest.mark.parametrize("data", ["cache", "folders"])
def test_contract_commands(data, videos, native_cache, tmp_path):
    """The documented commands, as a user types them (native geometry, 10 steps)."""
    root = native_cache[0] if data == "cache" else videos
    cmd = [sys.executable, "-m", "svi.train", "experiment=svi_shot", "backbone=tiny", f"data={data}",
           f"data.root={root}", "trainer=cpu", "logger=csv", "trainer.max_steps=10",
           f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sum(bool(r["train/loss"]) for r in _metric_rows(tmp_path)) == 10
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()

