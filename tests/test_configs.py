"""Every experiment x ablation composes and instantiates; paper values are the official settings (docs/method.md)."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from svi.paths import CONF_DIR
from tests.conftest import TINY, compose_config

PRETRAIN = {"toy_pretrain", "toy_pretrain_more"}  # train a base (from scratch or further): no LoRA, no injection, nothing to ablate
EXPERIMENTS = sorted(p.stem for p in Path(CONF_DIR, "experiment").glob("*.yaml") if p.stem not in PRETRAIN)
ABLATIONS = sorted(p.stem for p in Path(CONF_DIR, "ablation").glob("*.yaml"))


def test_the_grid_is_not_empty():
    assert {"svi_shot", "svi_film", "toy_shot", "toy_shot_k2", "toy_film"} <= set(EXPERIMENTS)
    assert {"none", "no_erft", "no_img", "no_noi", "no_vid"} <= set(ABLATIONS)


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_ablation_composes_and_instantiates(experiment, ablation, tmp_path):
    paper = compose_config("train", [f"experiment={experiment}", f"ablation={ablation}"])
    assert paper.ablation_name == ablation
    # Instantiate on this CPU machine: tiny backbone, synthetic data, CPU trainer (paper values otherwise kept).
    # The tiny backbone has the real Wan VAE, which the toy's image-error sources refuse (they need the toy's
    # linear autoencoder; tests/toy/test_toy_image_errors.py covers the refusal), so those use the window source.
    linear_only = ["img_source=window"] if "toy" in paper.img_source._target_ else []
    cfg = compose_config("train", [f"experiment={experiment}", f"ablation={ablation}", *TINY, *linear_only,
                                   f"paths.output_dir={tmp_path}", "data.num_samples=2"])
    model = instantiate(cfg.model)
    data = instantiate(cfg.data)
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    assert model.injection.enabled == (ablation != "no_erft")
    assert model.injection.p_clean == paper.injection.p_clean
    assert model.condition.num_motion_frames == paper.condition.num_motion_frames
    replay = next(c for c in callbacks if type(c).__name__ == "ErrorReplayCallback")
    assert (replay.memory is None) == (ablation == "no_erft")
    data.setup("fit")
    item = data.dataset[0]
    assert item["y"].shape[0] == 20 and item["latents"].shape[0] == 16
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("experiment,K,ref_pad,p_clean", [("svi_shot", 1, -1, 0.2), ("svi_film", 5, 0, 0.5)])
def test_paper_experiments_carry_the_official_settings(experiment, K, ref_pad, p_clean):
    cfg = compose_config("train", [f"experiment={experiment}"])
    assert (cfg.lora.rank, cfg.lora.alpha) == (128, 128)
    assert list(cfg.lora.targets) == ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]
    assert cfg.optimizer.lr == 1e-4 and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.trainer.max_steps == 5000
    assert (cfg.memory.capacity, cfg.memory.num_grids, cfg.memory.replacement) == (500, 50, "l2")
    assert cfg.memory.warmup_steps == 50
    inj = cfg.injection
    assert (inj.p_noi, inj.p_img, inj.p_vid, inj.p_clean) == (0.01, 0.9, 0.9, p_clean)
    assert (inj.clean_buffer_update_prob, inj.y_error_num, inj.error_modulate_factor) == (0.1, 3, 0.0)
    assert (cfg.condition.num_motion_frames, cfg.condition.ref_pad_num) == (K, ref_pad)
    assert cfg.condition.mask_all_motion_frames is False
    assert (cfg.flow.shift, cfg.flow.loss_weight) == (5.0, "svi_bell")
    assert (cfg.data.num_frames, cfg.data.height, cfg.data.width) == (81, 480, 832)
    assert cfg.backbone.env_var == "SVI_WAN21_I2V_14B_DIR"
    # the official choices behind the fidelity knobs
    assert cfg.img_source._target_ == "svi.erft.image_error.WindowImageError" and cfg.img_source.window == "random"
    assert (cfg.img_source.max_sigma, cfg.img_source.scale) == (1.0, 1.0)
    assert inj.clean_flag == "coin" and cfg.backbone.clip_resize == "squash"
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.gradient_checkpointing and cfg.model.offload_activations
    if experiment == "svi_film":
        assert cfg.condition.full_motion_prob == 0.9 and cfg.condition.prompt_per_clip


def test_debug_tiny_runs_a_recipe_on_the_cpu():
    """debug=tiny swaps backbone, data, trainer and logger for a recipe and keeps its method settings."""
    for experiment, p_clean in (("svi_shot", 0.2), ("svi_film", 0.5)):
        cfg = compose_config("train", [f"experiment={experiment}", "debug=tiny"])
        assert cfg.experiment_name == f"{experiment}_tiny" and cfg.injection.p_clean == p_clean
        assert cfg.backbone._target_ == "svi.backbones.build_tiny_wan"
        assert cfg.data._target_.endswith("SyntheticDataModule") and cfg.trainer.accelerator == "cpu"
        assert not cfg.model.gradient_checkpointing and cfg.callbacks.rollout.enabled
        assert cfg.condition.name == experiment.removeprefix("svi_")


def test_ablations_flip_exactly_one_knob():
    base = OmegaConf.to_container(compose_config("train", ["experiment=svi_shot"]).injection)
    flips = {"no_erft": {"enabled": False}, "no_img": {"p_img": 0.0}, "no_noi": {"p_noi": 0.0},
             "no_vid": {"p_vid": 0.0}, "none": {}}
    for ablation, change in flips.items():
        inj = OmegaConf.to_container(compose_config("train", ["experiment=svi_shot", f"ablation={ablation}"]).injection)
        assert inj == {**base, **change}, ablation


def test_typos_fail_at_compose_time():
    with pytest.raises(Exception, match="p_nio"):
        compose_config("train", ["injection.p_nio=0.1"])
    with pytest.raises(Exception, match="capcity"):
        compose_config("train", ["memory.capcity=3"])
    with pytest.raises(Exception):
        compose_config("train", ["injection.p_img=lots"])
    with pytest.raises(Exception, match="full_motion_pro"):  # a condition type's own schema
        compose_config("train", ["condition=film", "condition.full_motion_pro=0.5"])
    with pytest.raises(Exception, match="full_motion_prob"):  # shot has no such knob
        compose_config("train", ["condition=shot", "condition.full_motion_prob=0.5"])
    with pytest.raises(Exception, match="windw"):
        compose_config("train", ["img_source.windw=last"])


def test_cfg_job_prints_the_paper_values():
    out = subprocess.run([sys.executable, "-m", "svi.train", "experiment=svi_shot", "--cfg", "job"],
                         capture_output=True, text=True, check=True).stdout
    cfg = OmegaConf.create(out)
    assert cfg.experiment_name == "svi_shot"
    assert cfg.injection.p_clean == 0.2 and cfg.injection.p_img == 0.9 and cfg.injection.p_noi == 0.01
    assert cfg.lora.rank == 128 and cfg.memory.capacity == 500 and cfg.condition.num_motion_frames == 1
