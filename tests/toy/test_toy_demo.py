"""`make demo` end to end at a tiny budget: pretraining path, fine-tunes, rollouts, summary, plot, videos."""

import json
import subprocess
import sys

import pytest
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
                            f"hydra.run.dir={out}"], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 fine-tune(s) already done" in again.stdout + again.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in ("erft_self", "erft_roll"):
        variant = summary["variants_vs_plain"][name]
        assert variant["pooled"]["n"] == 4 and set(variant["per_seed"]) == {"0", "1"}
        assert abs(variant["ratio"] - summary["drift"][name] / summary["drift"]["plain_lora"]) < 1e-9
    assert "erft_self - plain LoRA" in again.stdout
    # the table of every model, mean +- std over seeds, built from the scored runs (and each run's metrics.json)
    table = (out / "table.md").read_text()
    assert all(f"| {name} | 0,1 |" in table for name in ("base", "plain_lora", "erft", "erft_self", "erft_roll"))
    run = out / "train" / "erft_seed0"
    assert json.loads((run / "metrics.json").read_text())["summary"]["drift"] == pytest.approx(
        summary["per_seed"]["erft"][0])
    assert not (out / "base_seed0").exists()  # no stand-in run folders for the base


def test_demo_default_is_the_k2_preset_and_the_variants_inherit_it():
    """`make demo`: the K = 2 base shipped in the package, its recipe (toy_shot_k2: per-sample image errors),
    200 steps, 60 clips sampled with 5 steps; toy/demo_v1 (base v1) and toy/demo_k2 inherit and compose."""
    from tests.conftest import compose_config

    cfg = compose_config("toy/demo", [])
    stack = load_toy_base(cfg.base)  # ${svi.asset:toy_base_k2} resolves to a loadable base
    assert cfg.base.endswith("svi/assets/toy_base_k2") and type(stack.vae).__name__ == "PatchAutoencoder"
    assert cfg.condition.num_motion_frames == 2 and cfg.train_experiment == "toy_shot_k2"
    assert (cfg.steps, cfg.eval.num_clips, cfg.eval.num_inference_steps, list(cfg.seeds)) == (200, 60, 5, [0, 1, 2])
    assert list(cfg.models.erft) == ["ablation=none"] and list(cfg.models.plain_lora) == ["ablation=no_erft"]
    train = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.models.erft])
    assert train.backbone.path == cfg.base and train.condition.num_motion_frames == 2  # the same base and K
    assert train.img_source._target_ == "svi.toy.image_errors.SelfImageError" and train.injection.y_error_num == 2
    plain = compose_config("train", [f"experiment={cfg.train_experiment}", *cfg.models.plain_lora])
    assert not plain.injection.enabled and plain.lora.rank == train.lora.rank

    k2 = compose_config("toy/demo_k2", [])  # the same recipe at 600 steps and 10 sampling steps
    assert (k2.base, k2.train_experiment, k2.eval.num_clips) == (cfg.base, cfg.train_experiment, 60)
    assert (k2.steps, k2.eval.num_inference_steps) == (600, 10)

    v1 = compose_config("toy/demo_v1", [])  # base v1: the toy Table 4 and Film mode
    assert v1.base is None and v1.condition.num_motion_frames == 1 and v1.train_experiment == "toy_shot"
    assert (v1.steps, v1.eval.num_clips, v1.eval.num_inference_steps) == (600, 30, 10)
    assert v1.eval.world == cfg.eval.world and v1.seeds == cfg.seeds  # inherited, not copied
