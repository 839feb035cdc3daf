"""The toy backbone: linear patch autoencoder with Wan's latent layout, save/load through load_wan_dir."""

import pytest
import torch

from svi.toy.autoencoder import PatchAutoencoder
from svi.toy.backbone import load_toy_base
from svi.toy.clips import TEST, ToyClips, toy_videos


def _psnr(a, b):
    return float(10 * torch.log10(4 / (a - b).pow(2).mean()))


def test_patch_autoencoder_has_wan_layout_and_reconstructs_held_out_clips(toy_stack):
    videos = toy_videos(4, 17, seed=3, split=TEST)  # scenes never used for fitting
    z = toy_stack.encode_video(videos)
    assert z.shape == (4, 64, 5, 8, 8)  # 1 + (17-1)/4 latent frames, /4 spatially, 4 frames x 16 coefficients
    # normalised latents: roughly zero-mean, unit-variance per channel
    assert z.mean().abs() < 0.3 and 0.5 < z.std() < 1.5
    rec = toy_stack.decode_latents(z)
    assert rec.shape == videos.shape
    assert _psnr(rec, videos) > 25.0  # 26.8 dB on these clips (the 16-coefficient 4x4 px basis)
    # causal layout: latent frame 0 depends only on pixel frame 0
    other = videos.clone()
    other[:, :, 1:] = 0
    assert torch.allclose(toy_stack.encode_video(other)[:, :, 0], z[:, :, 0], atol=1e-5)


def test_frame_separable_autoencoder_codes_each_frame_alone():
    videos = toy_videos(8, 9, seed=0)
    ae = PatchAutoencoder(z_dim=64, patch_size=4, frame_separable=True).fit(videos)
    # block-diagonal: channels 16f..16f+15 of a latent frame read pixel frame f of its 4 only
    blocks = ae.components.view(4, 16, 4, 48)
    off = [blocks[i, :, j].abs().max() for i in range(4) for j in range(4) if i != j]
    assert max(off) == 0 and all(blocks[i, :, i].abs().max() > 0 for i in range(4))
    # so a frame moved in time moves its code: swapping pixel frames 1 and 2 swaps their channel blocks
    z = ae.encode(videos).latent_dist.mode()
    swapped = videos.clone()
    swapped[:, :, [1, 2]] = videos[:, :, [2, 1]]
    zs = ae.encode(swapped).latent_dist.mode()
    assert torch.allclose(zs[:, 0:16, 1], z[:, 16:32, 1], atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        PatchAutoencoder(z_dim=30, patch_size=4, frame_separable=True)


def test_patch_autoencoder_rejects_bad_frame_counts():
    ae = PatchAutoencoder()
    with pytest.raises(ValueError, match="1\\+4k"):
        ae.encode(torch.zeros(1, 3, 8, 32, 32))


def test_saved_toy_stack_loads_through_the_real_path(toy_stack, toy_base_dir):
    loaded = load_toy_base(str(toy_base_dir))
    assert type(loaded.vae).__name__ == "PatchAutoencoder"
    video = toy_videos(2, 9, seed=1, split=TEST)
    assert torch.allclose(loaded.encode_video(video), toy_stack.encode_video(video), atol=1e-5)
    x = torch.randn(2, 64, 3, 8, 8)
    y = torch.randn(2, 68, 3, 8, 8)
    text = loaded.encode_text(["a red disc", "a blue square"])
    assert torch.allclose(text, toy_stack.encode_text(["a red disc", "a blue square"]), atol=1e-6)
    t = torch.full((2,), 500.0)
    assert torch.allclose(loaded.velocity(x, y, t, text, None), toy_stack.velocity(x, y, t, text, None), atol=1e-5)


def test_missing_toy_base_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("SVI_TOY_BASE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="make toy-base"):
        load_toy_base(str(tmp_path / "nowhere"))


def test_toy_clips_are_deterministic_and_well_formed():
    ds = ToyClips(num_frames=9, seed=5)
    a, b = ds[3], ds[3]
    assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]
    assert a["video"].shape == (3, 9, 32, 32) and a["ref_image"].shape == (3, 32, 32)
    assert a["video"].min() >= -1 and a["video"].max() <= 1
    assert not torch.equal(ds[4]["video"], a["video"])
    with pytest.raises(ValueError, match="1\\+4k"):
        ToyClips(num_frames=8)


def test_another_pretraining_round_is_toy_pretrain_from_a_named_base(toy_base_dir, tmp_path):
    """experiment=toy_pretrain_more: toy_pretrain's recipe on a loaded base (only the backbone differs), the path
    required; one step trains the whole loaded transformer and exports it with the base's autoencoder."""
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    more = OmegaConf.to_container(compose_config("train", ["experiment=toy_pretrain_more", "backbone.path=/b"]))
    first = OmegaConf.to_container(compose_config("train", ["experiment=toy_pretrain", "trainer.max_steps=12000"]))
    differs = {k for k in set(more) | set(first) if more.get(k) != first.get(k)}
    assert differs == {"backbone", "experiment_name"}, differs
    assert more["backbone"]["_target_"] == "svi.toy.backbone.load_toy_base" and more["backbone"]["path"] == "/b"
    missing = subprocess.run([sys.executable, "-m", "svi.train", "experiment=toy_pretrain_more", "trainer.max_steps=1",
                              f"hydra.run.dir={tmp_path / 'none'}"], capture_output=True, text=True)
    assert missing.returncode != 0 and "backbone.path" in missing.stdout + missing.stderr
    out = tmp_path / "round2"
    subprocess.run([sys.executable, "-m", "svi.train", "experiment=toy_pretrain_more", f"backbone.path={toy_base_dir}",
                    "trainer.max_steps=1", "data.batch_size=2", "seed=1", f"hydra.run.dir={tmp_path / 'run'}",
                    f"callbacks.backbone_export.dirpath={out}"], check=True, capture_output=True)
    before, after = load_toy_base(str(toy_base_dir)), load_toy_base(str(out))
    changed = [k for k, v in before.transformer.state_dict().items()
               if not torch.equal(v, after.transformer.state_dict()[k])]
    assert len(changed) > 0.8 * len(before.transformer.state_dict())
    assert all(torch.equal(v, after.vae.state_dict()[k]) for k, v in before.vae.state_dict().items())


def test_a_stack_saved_after_loading_does_not_name_the_directory_it_came_from(toy_base_dir, tmp_path):
    """diffusers writes a loaded model's source path (`_name_or_path`) back on save; save_stack drops it, so a base
    trained further from another (make toy-base-36k) is a self-contained directory."""
    import json

    from svi.backbones.wan import save_stack

    loaded = load_toy_base(str(toy_base_dir))
    assert "_name_or_path" in loaded.transformer.config  # what diffusers records on loading
    save_stack(loaded, tmp_path / "again")
    for sub in ("transformer", "vae"):
        saved = json.loads((tmp_path / "again" / sub / "config.json").read_text())
        assert "_name_or_path" not in saved and saved["_class_name"]
    again = load_toy_base(str(tmp_path / "again"))
    assert all(torch.equal(v, again.transformer.state_dict()[k]) for k, v in loaded.transformer.state_dict().items())


@pytest.mark.slow
def test_a_multirun_with_a_base_path_keeps_its_job_folders_flat(toy_base_dir, tmp_path):
    """A path override (backbone.path) never goes into a job folder's name, where its slashes would nest folders."""
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    subprocess.run([sys.executable, "-m", "svi.train", "-m", "experiment=toy_pretrain_more", f"backbone.path={toy_base_dir}",
                    "trainer.max_steps=1", "data.batch_size=2", "seed=0,1", f"hydra.sweep.dir={sweep}"],
                   check=True, capture_output=True)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_data.batch_size=2,seed=0,trainer.max_steps=1", "1_data.batch_size=2,seed=1,trainer.max_steps=1"]
    assert all((sweep / j / "toy_base" / "transformer").is_dir() for j in jobs)
