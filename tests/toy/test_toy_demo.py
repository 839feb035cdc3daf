"""`make demo` end to end at a tiny budget: pretraining path, fine-tunes, rollouts, summary, plot, videos."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svi.toy.backbone import load_toy_base


@pytest.mark.slow
def test_toy_pretrain_trains_the_whole_transformer_and_exports_a_loadable_base(tmp_path):
    out = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "svi.train", "experiment=toy_pretrain", "trainer.max_steps=3",
                    "data.batch_size=2", f"hydra.run.dir={tmp_path / 'run'}", f"callbacks.backbone_export.dirpath={out}"],
                   check=True, capture_output=True)
    stack = load_toy_base(str(out))
    assert type(stack.vae).__name__ == "PatchAutoencoder"
    from hydra.utils import instantiate

    from tests.conftest import compose_config

    init = instantiate(compose_config("train", ["experiment=toy_pretrain"]).backbone)
    trained = stack.transformer.state_dict()
    changed = [k for k, v in init.transformer.state_dict().items() if not (trained[k] - v).abs().max() < 1e-9]
    assert len(changed) > 0.8 * len(trained)  # full training, not an adapter
    ckpt = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert not any("lora" in k for k in ckpt)


@pytest.mark.slow
def test_demo_writes_summary_plot_and_videos(toy_base_dir, tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "svi.toy.demo", f"base={toy_base_dir}", "steps=3", "seeds=[0,1]",
                           "eval.num_videos=2", "eval.num_clips=2", "eval.num_inference_steps=2", "num_side_by_side=1",
                           "train_overrides=['data.batch_size=2']", f"hydra.run.dir={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "world_rmse_late_minus_ceiling" and set(summary["drift"]) == {"base", "plain_lora", "erft"}
    assert set(summary["background_drift"]) == set(summary["drift"])  # the background alone, reported beside it
    assert len(summary["background_drift_per_seed"]["erft"]) == 2
    for model in ("base", "plain_lora", "erft"):
        assert len(summary["per_seed"][model]) == 2
        assert abs(summary["drift"][model] - sum(summary["per_seed"][model]) / 2) < 1e-9
    paired = summary["paired"]["erft_minus_plain"]["pooled"]
    assert paired["n"] == 4 and paired["low"] <= paired["mean"] <= paired["high"]
    assert (out / "drift_vs_time.png").stat().st_size > 10_000
    assert (out / "frames.png").stat().st_size > 5_000 and summary["files"]["frames"].endswith("frames.png")
    assert all(len(c["pose_err"]) == 2 for c in summary["curves"].values())  # the sprite lag, per clip
    # per-video, per-clip metrics saved: the summary's drift is re-derivable from them
    import numpy as np

    from svi.toy.evaluate import late_clips

    per_clip = np.load(out / "per_clip.npz")
    for i, seed in enumerate((0, 1)):
        w, c = per_clip[f"seed{seed}/erft/world_rmse"], per_clip[f"seed{seed}/ceiling/world_rmse"]
        assert w.shape == (2, 2)  # videos x clips
        late = late_clips(2)
        drift = np.nanmean(np.nanmean(w[:, late], 1) - np.nanmean(c[:, late], 1))
        assert abs(drift - summary["per_seed"]["erft"][i]) < 1e-9
    assert len(list((out / "videos").glob("*.mp4"))) == 1
    assert "ratio ERFT / plain drift" in proc.stdout
    # fine-tuned runs are reused on a second call (a killed demo resumes); a further variant is compared too
    again = subprocess.run([sys.executable, "-m", "svi.toy.demo", f"base={toy_base_dir}", "steps=3", "seeds=[0,1]",
                            "eval.num_videos=2", "eval.num_clips=2", "eval.num_inference_steps=2",
                            "num_side_by_side=1", "train_overrides=['data.batch_size=2']",
                            "+models.erft_self=['ablation=none','img_source=toy_self']",
                            "+models.erft_roll=['ablation=none','img_source=toy_rollout','img_source.steps=2']",
                            "+models.erft_hand=['ablation=none','img_source=toy_handoff','img_source.steps=2',"
                            "'data.prev_clip=true']",
                            f"hydra.run.dir={out}"], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 fine-tune(s) already done" in again.stdout + again.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in ("erft_self", "erft_roll", "erft_hand"):
        variant = summary["variants_vs_plain"][name]
        assert variant["pooled"]["n"] == 4 and set(variant["per_seed"]) == {"0", "1"}
        assert abs(variant["ratio"] - summary["drift"][name] / summary["drift"]["plain_lora"]) < 1e-9
    assert "erft_self - plain LoRA" in again.stdout
    # the hand-off diagnostic of experiments/toy_demo reads the same run: rollouts again, the ERFT replay memory
    script = Path(__file__).resolve().parents[2] / "experiments" / "toy_demo" / "handoff_errors.py"
    diag = subprocess.run([sys.executable, str(script), str(out), "--clips", "2", "--models", "base", "erft"],
                          capture_output=True, text=True)
    assert diag.returncode == 0, diag.stdout[-3000:] + diag.stderr[-3000:]
    report = json.loads((out / "handoff_errors.json").read_text())
    assert report["handoff"]["base"][0] == 0 and report["handoff"]["erft"][1] > 0  # clip 0 starts from true frames
    assert len(report["bank"]["erft"]["rms"]) == 50 and sum(report["bank"]["erft"]["counts"]) > 0
    assert (out / "handoff_errors.png").stat().st_size > 5_000
    # the table of every model, mean +- std over seeds, built from the scored runs (and each run's metrics.json)
    table = (out / "table.md").read_text()
    assert all(f"| {name} | 0,1 |" in table for name in ("base", "plain_lora", "erft", "erft_self", "erft_roll",
                                                                    "erft_hand"))
    run = out / "train" / "erft_seed0"
    assert json.loads((run / "metrics.json").read_text())["summary"]["drift"] == pytest.approx(
        summary["per_seed"]["erft"][0])
    assert not (out / "base_seed0").exists()  # no stand-in run folders for the base


def test_demo_default_is_the_papers_recipe_on_the_long_k2_base_and_the_variants_inherit_it():
    """`make demo`: the 12000-step K = 2 base shipped in the package, the headline ERFT model is the paper's
    Shot recipe (toy_svi_shot: E_img from the video-error bank over all buckets, the official probabilities and
    clean rule), 200 steps, 60 clips sampled with 5 steps; toy/demo_v1 (base v1) and toy/demo_k2 inherit."""
    from tests.conftest import compose_config

    cfg = compose_config("toy/demo", [])
    stack = load_toy_base(cfg.base)  # ${svi.asset:toy_base_k2_long} resolves to a loadable base
    assert cfg.base.endswith("svi/assets/toy_base_k2_long") and type(stack.vae).__name__ == "PatchAutoencoder"
    assert cfg.condition.num_motion_frames == 2 and cfg.train_experiment == "toy_svi_shot"
    assert (cfg.steps, cfg.eval.num_clips, cfg.eval.num_inference_steps, list(cfg.seeds)) == (200, 60, 5, [0, 1, 2])
    assert list(cfg.models.erft) == ["ablation=none"] and list(cfg.models.plain_lora) == ["ablation=no_erft"]
    assert set(cfg.models) == {"plain_lora", "erft"}  # variants are extra rows on request, never the headline
    train = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.models.erft])
    assert train.backbone.path == cfg.base and train.condition.num_motion_frames == 2  # the same base and K
    assert train.img_source._target_ == "svi.erft.image_error.WindowImageError"  # the paper's E_img
    assert (train.img_source.window, train.img_source.max_sigma, train.img_source.scale) == ("random", 1.0, 1.0)
    inj = train.injection
    assert (inj.p_clean, inj.p_vid, inj.p_img, inj.p_noi, inj.clean_flag) == (0.2, 0.9, 0.9, 0.01, "coin")
    assert inj.y_error_num == 2 and train.memory.replacement == "l2" and train.memory.num_grids == 50
    plain = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.models.plain_lora])
    assert not plain.injection.enabled and plain.lora.rank == train.lora.rank

    k2 = compose_config("toy/demo_k2", [])  # the same recipe at 600 steps and 10 sampling steps
    assert (k2.base, k2.train_experiment, k2.eval.num_clips) == (cfg.base, cfg.train_experiment, 60)
    assert (k2.steps, k2.eval.num_inference_steps) == (600, 10)

    v1 = compose_config("toy/demo_v1", [])  # base v1: the earlier toy Table 4
    assert v1.base is None and v1.condition.num_motion_frames == 1 and v1.train_experiment == "toy_shot"
    assert (v1.steps, v1.eval.num_clips, v1.eval.num_inference_steps) == (600, 30, 10)
    assert v1.eval.world == cfg.eval.world and v1.seeds == cfg.seeds  # inherited, not copied


def _fake_results(drift_by_model: dict, seeds=(0, 1), videos=6, clips=6, rng=None):
    """ModelEval per seed and model: world_rmse = ceiling + the model's drift (plus small per-video noise)."""
    import numpy as np

    from svi.toy.evaluate import ModelEval

    rng = rng or np.random.default_rng(0)
    results = {}
    for s in seeds:
        ceiling = np.full((videos, clips), 8.0)
        r = {"ceiling": ModelEval({k: ceiling.copy() for k in ("world_rmse", "bg_rmse", "col_shift", "hf_ratio")}
                                  | {"objects": np.full((videos, clips), 2.0)})}
        for name, (first, last, objects) in drift_by_model.items():
            ramp = np.linspace(first, last, clips)[None] + rng.normal(0, 0.05, (videos, clips))
            r[name] = ModelEval({"world_rmse": ceiling + ramp, "bg_rmse": ceiling + ramp / 2,
                                 "col_shift": ramp, "hf_ratio": np.ones((videos, clips)),
                                 "objects": np.full((videos, clips), objects)})
        results[s] = r
    return results


def test_summary_says_whether_the_demo_shows_the_papers_picture():
    """paper_picture: the issue's checks computed from the per-clip curves and paired per-video intervals."""
    from omegaconf import OmegaConf

    from svi.toy.demo import drift_table, summarise

    cfg = OmegaConf.create({"seeds": [0, 1], "models": {"plain_lora": [], "erft": []}, "eval": {"signal_metrics": []}})
    # (world RMSE above the ceiling at the first clip, at the last clip, objects): base 1.25x the ceiling
    good = summarise(cfg, _fake_results({"base": (2.0, 40.0, 1.95), "plain_lora": (2.0, 40.0, 1.0),
                                         "erft": (2.0, 4.0, 1.5)}), {})
    checks = good["paper_picture"]
    assert checks["base_first_clip_over_ceiling"]["value"] == pytest.approx(10.0 / 8.0, abs=0.02)
    assert all(c["met"] for c in checks.values()), checks
    assert checks["erft_last_clip_over_first_clip"]["value"] == pytest.approx(12.0 / 10.0, abs=0.02)
    assert "| erft_over_plain_per_seed |" in drift_table(good)
    bad = summarise(cfg, _fake_results({"base": (6.0, 40.0, 1.5), "plain_lora": (2.0, 40.0, 1.0),
                                        "erft": (3.0, 30.0, 0.5)}), {})["paper_picture"]
    assert not bad["base_first_clip_over_ceiling"]["met"] and not bad["base_objects_first_clip"]["met"]
    assert not bad["erft_last_clip_over_first_clip"]["met"] and not bad["erft_over_plain_per_seed"]["met"]
    assert not bad["objects_all_clips_erft_vs_plain"]["met"] and not bad["objects_last_clip_erft_vs_plain"]["met"]
    assert not bad["first_clip_erft_minus_plain"]["met"]  # ERFT's first clip is 1 worse on every video
    assert bad["first_clip_erft_minus_plain"]["value"]["mean"] == pytest.approx(1.0, abs=0.05)


def test_table4_orderings_hold_or_fail_with_their_intervals():
    from omegaconf import OmegaConf

    from svi.toy.demo import drift_table, summarise

    models = {"none": [], "no_img": [], "no_noi": [], "no_vid": [], "no_erft": []}
    cfg = OmegaConf.create({"seeds": [0, 1], "models": models, "eval": {"signal_metrics": []}})
    paper = {"base": (5, 40, 1), "no_img": (5, 35, 1), "no_noi": (5, 11, 1), "no_vid": (5, 11.5, 1),
             "none": (5, 10, 1), "no_erft": (5, 40, 1)}
    orderings = summarise(cfg, _fake_results(paper), {})["table4_orderings"]
    assert all(o["holds"] for o in orderings.values()), orderings
    assert set(orderings["full_is_best"]["intervals"]) == {"no_img - none", "no_noi - none", "no_vid - none"}
    assert "| full is best" in drift_table(summarise(cfg, _fake_results(paper), {}))
    # the toy v1 picture: dropping E_noi helps, E_img's removal is near-free, nothing far from the base
    toy = dict(paper, no_img=(5, 39.5, 1), no_noi=(5, 38, 1), no_vid=(5, 39, 1), none=(5, 39, 1))
    orderings = summarise(cfg, _fake_results(toy), {})["table4_orderings"]
    assert not orderings["full_is_best"]["holds"] and not orderings["every_variant_far_above_base"]["holds"]


def test_film_demo_is_the_papers_film_preset_on_a_film_base():
    """toy/demo_film: the Film base (Film condition, 9-frame clips), the paper's Film preset as the headline."""
    from tests.conftest import compose_config

    cfg = compose_config("toy/demo_film", [])
    assert cfg.base.endswith("svi/assets/toy_base_film") and cfg.eval.num_frames == 9
    assert cfg.condition.name == "film" and cfg.condition.num_motion_frames == 5 and cfg.condition.ref_pad_num == 0
    assert (cfg.steps, cfg.eval.num_clips, list(cfg.seeds)) == (200, 60, [0, 1, 2])
    train = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.models.erft])
    assert train.backbone.path == cfg.base and train.backbone.native.num_frames == 9
    assert train.condition.name == "film" and train.condition.num_motion_frames == 5
    assert train.condition.prompt_per_clip and train.condition.full_motion_prob == 0.9  # the official K = 1 mix
    assert (train.injection.p_clean, train.injection.clean_flag) == (0.5, "coin")
    assert train.img_source._target_ == "svi.erft.image_error.WindowImageError"


def test_larger_sprite_and_nine_frame_demos_change_one_thing_and_fine_tune_like_their_base():
    """toy/demo_big and toy/demo_f9: make demo with one change each (the world's sprite size / the clip
    length), carried to the base, the fine-tunes' data and the held-out worlds alike."""
    from tests.conftest import compose_config

    demo = compose_config("toy/demo", [])
    for name, base, changed in (("toy/demo_big", "toy_base_big", "sprite_size"), ("toy/demo_f9", "toy_base_k2_f9", "frames")):
        cfg = compose_config(name, [])
        assert cfg.base.endswith(f"svi/assets/{base}") and (Path(cfg.base) / "transformer").is_dir()
        assert (cfg.train_experiment, cfg.steps, cfg.eval.num_clips) == ("toy_svi_shot", 200, 60)
        assert dict(cfg.models) == dict(demo.models)
        train = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.train_overrides,
                                         f"backbone.path={cfg.base}", *cfg.models.erft])
        assert train.injection.y_error_num == 2 and train.img_source._target_ == "svi.erft.image_error.WindowImageError"
        if changed == "sprite_size":
            assert list(cfg.eval.world.sprite_size) == [0.15, 0.22] == list(train.data.world.sprite_size)
            assert cfg.eval.num_frames == train.backbone.native.num_frames == 5
        else:
            assert list(cfg.eval.world.sprite_size) == list(demo.eval.world.sprite_size) == [0.07, 0.14]
            assert cfg.eval.num_frames == train.backbone.native.num_frames == train.data.num_frames == 9


def test_the_stronger_base_demo_is_make_demo_on_another_base_with_the_same_autoencoder():
    """toy/demo_36k: make demo with only the base changed; that base (two more pretraining rounds from make demo's)
    keeps make demo's autoencoder and architecture, so its latents mean the same."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    demo, strong = compose_config("toy/demo", []), compose_config("toy/demo_36k", [])
    a, b = OmegaConf.to_container(demo), OmegaConf.to_container(strong)
    assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} == {"base", "experiment_name"}
    assert strong.base.endswith("svi/assets/toy_base_k2_36k")
    old, new = load_toy_base(demo.base), load_toy_base(strong.base)
    assert all(torch.equal(v, new.vae.state_dict()[k]) for k, v in old.vae.state_dict().items())
    arch = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert arch(old.transformer) == arch(new.transformer)
    assert any(not torch.equal(v, new.transformer.state_dict()[k]) for k, v in old.transformer.state_dict().items())


def test_the_still_world_demo_is_make_demo_with_still_sprites_everywhere():
    """toy/demo_still: make demo with the world's sprite speed set to zero for the held-out worlds and the
    fine-tunes alike, on its own base (make demo's, pretrained further in that world: same autoencoder)."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    demo, still = compose_config("toy/demo", []), compose_config("toy/demo_still", [])
    a, b = OmegaConf.to_container(demo), OmegaConf.to_container(still)
    assert {k for k in set(a) | set(b) if a.get(k) != b.get(k)} == {"base", "experiment_name", "train_overrides", "eval"}
    assert list(still.train_overrides) == ["data.world.speed=[0.0, 0.0]"]
    assert {k for k in a["eval"] if a["eval"][k] != b["eval"][k]} == {"world"}
    assert {k for k in a["eval"]["world"] if a["eval"]["world"][k] != b["eval"]["world"][k]} == {"speed"}
    assert list(still.eval.world.speed) == [0.0, 0.0] and list(demo.eval.world.speed) == [0.008, 0.03]
    assert still.base.endswith("svi/assets/toy_base_k2_still")
    train = compose_config("train", [f"experiment={still.train_experiment}", *still.train_overrides,
                                     f"backbone.path={still.base}", *still.models.erft])
    assert list(train.data.world.speed) == [0.0, 0.0]
    assert list(compose_config("train", ["experiment=toy_svi_shot"]).data.world.speed) == [0.008, 0.03]
    old, new = load_toy_base(demo.base), load_toy_base(still.base)
    assert all(torch.equal(v, new.vae.state_dict()[k]) for k, v in old.vae.state_dict().items())


def test_the_pretraining_autoencoder_is_fitted_on_the_training_worlds_sprite_size():
    from tests.conftest import compose_config

    big = compose_config("train", ["experiment=toy_pretrain", "data.world.sprite_size=[0.15,0.22]"])
    assert list(big.backbone.fit.world.sprite_size) == [0.15, 0.22]
    assert list(compose_config("train", ["experiment=toy_pretrain"]).backbone.fit.world.sprite_size) == [0.07, 0.14]


def test_a_bad_motion_source_is_refused_before_any_fine_tune(tmp_path):
    import pytest

    from svi.toy.demo import run
    from tests.conftest import compose_config

    cfg = compose_config("toy/demo", [f"out_dir={tmp_path / 'demo'}", "eval.motion_from=true"])
    with pytest.raises(ValueError, match="eval.motion_from"):
        run(cfg)
    assert not (tmp_path / "demo").exists()
    assert compose_config("toy/demo", []).eval.motion_from == "generated"


def test_frames_strip_shows_the_last_frame_of_each_chosen_clip_per_video_and_model(tmp_path):
    import numpy as np

    from svi.toy.demo import frame_clips, plot_frames, strip_frames

    assert frame_clips(60) == [0, 1, 2, 4, 8, 16, 32, 59] and frame_clips(2) == [0, 1] and frame_clips(1) == [0]
    K, new, clips = 2, 3, 4
    N = K + clips * new
    # every pixel of frame t of video b of model m holds (m, b, t): the strip must pick frame K + (c + 1) new - 1
    videos = {}
    for m, name in enumerate(("ground_truth", "base", "erft")):
        v = np.zeros((3, N, 4, 4, 3), dtype=np.uint8)
        v[..., 0], v[..., 1] = m, np.arange(3)[:, None, None, None]
        v[..., 2] = np.arange(N)[None, :, None, None]
        videos[name] = v
    strip, rows = strip_frames(videos, K, new, [0, 3], num_videos=2)
    assert strip.shape == (6, 2, 4, 4, 3)
    assert rows == [(0, "ground_truth"), (0, "base"), (0, "erft"), (1, "ground_truth"), (1, "base"), (1, "erft")]
    assert strip[4, 1, 0, 0].tolist() == [1, 1, K + 4 * new - 1] and strip[0, 0, 0, 0].tolist() == [0, 0, K + new - 1]
    assert plot_frames(videos, K, new, tmp_path / "f.png").stat().st_size > 1000
    assert plot_frames({}, K, new, tmp_path / "none.png") is None


def test_demo_threads_cap_the_fine_tunes_as_they_cap_the_rollouts():
    """threads=1 on a shared machine must reach the fine-tune processes too, or two jobs spin 4 threads on 2 cores."""
    from svi.toy.demo import finetune_threads

    assert finetune_threads(1, 1, 2) == 1 and finetune_threads(1, 2, 2) == 1 and finetune_threads(3, 1, 8) == 3
    assert finetune_threads(None, 2, 2) == 1 and finetune_threads(None, 2, 16) == 8 and finetune_threads(None, 3, 2) == 1
    assert finetune_threads(None, 1, 2) is None  # a lone fine-tune: torch's default, every core
