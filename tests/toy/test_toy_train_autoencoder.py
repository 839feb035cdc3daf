"""A trained toy AutoencoderKLWan (svi.toy.train_autoencoder): the toy latent's shape, exact resume, and the
toy backbone reading it at build and at load, through the real save/load path."""

import csv

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from svi.toy.clips import TEST, toy_videos
from svi.toy.train_autoencoder import main
from tests.conftest import compose_config

TINY = ["--base-dim", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_once")
    main(["--out", str(out), "--steps", "4", "--eval-every", "2", *TINY])
    return out


def test_trained_vae_has_the_toy_latent_and_logs_its_heldout_psnr(trained):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(trained / "vae")
    clip = toy_videos(2, 5, seed=1, split=TEST)
    with torch.no_grad():
        z = vae.encode(clip).latent_dist.mode()
    assert z.shape == (2, 64, 2, 8, 8)  # the toy DiT's latent: 64 channels, causal 1 + 4 frames, 8x8
    assert len(vae.config.latents_mean) == len(vae.config.latents_std) == 64
    assert min(vae.config.latents_std) > 0
    rows = list(csv.DictReader((trained / "log.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(5 < float(r["heldout_psnr_db"]) < 60 for r in rows)


def test_a_run_continued_from_its_checkpoint_equals_one_run(trained, tmp_path):
    out = tmp_path / "twice"
    main(["--out", str(out), "--steps", "2", "--eval-every", "2", *TINY])
    main(["--out", str(out), "--steps", "4", "--eval-every", "2", *TINY])
    once = torch.load(trained / "checkpoint.pt", weights_only=True)
    twice = torch.load(out / "checkpoint.pt", weights_only=True)
    assert twice["step"] == 4
    for k, v in once["model"].items():
        assert torch.equal(v, twice["model"][k]), k
    a, b = (list(csv.DictReader((d / "log.csv").open())) for d in (trained, out))
    assert [(r["step"], r["train_l1"], r["heldout_psnr_db"]) for r in a] == \
           [(r["step"], r["train_l1"], r["heldout_psnr_db"]) for r in b]
    exported = main(["--out", str(out), "--steps", "4", "--export", str(tmp_path / "asset"), *TINY])  # nothing to train
    assert exported == tmp_path / "asset" and (exported / "config.json").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    with pytest.raises(SystemExit, match="base_dim/z_dim"):  # another size into the same folder
        main(["--out", str(out), "--steps", "6", "--base-dim", "16", "--threads", "1"])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="--steps must be >= 1"):
        main(["--out", str(tmp_path), "--steps", "0"])
    # a VAE whose latent is not the toy DiT's 64 channels is refused when a base is built on it
    narrow = main(["--out", str(tmp_path / "z8"), "--steps", "1", "--z-dim", "8", *TINY])
    cfg = compose_config("train", ["experiment=toy_pretrain", f"backbone.vae.path={narrow}"])
    with pytest.raises(InstantiationException, match="8 latent channels but the toy DiT predicts 64"):
        instantiate(cfg.backbone)


def test_toy_backbone_builds_and_loads_with_the_trained_vae(trained, tmp_path):
    from svi.backbones.wan import save_stack
    from svi.toy.backbone import load_toy_base

    cfg = compose_config("train", ["experiment=toy_pretrain", f"backbone.vae.path={trained / 'vae'}"])
    stack = instantiate(cfg.backbone)
    assert type(stack.vae).__name__ == "AutoencoderKLWan"
    assert not any(p.requires_grad for p in stack.vae.parameters())
    video = toy_videos(2, 5, seed=1, split=TEST)
    z = stack.encode_video(video)
    assert z.shape == (2, 64, 2, 8, 8)
    save_stack(stack, tmp_path / "base")
    loaded = load_toy_base(str(tmp_path / "base"))
    assert type(loaded.vae).__name__ == "AutoencoderKLWan"
    assert torch.allclose(loaded.encode_video(video), z, atol=1e-5)
    bad = compose_config("train", ["experiment=toy_pretrain", f"backbone.vae.path={tmp_path / 'nowhere'}"])
    with pytest.raises(InstantiationException, match="backbone.vae.path: no autoencoder"):
        instantiate(bad.backbone)
