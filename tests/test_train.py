"""svi-train end to end on CPU: the command contract, learning, memory, checkpoints, resume, ablations."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svi.train import build, train


def _metrics(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    return [r for r in rows if r.get("train/loss")]


def _replay(trainer):
    return next(c for c in trainer.callbacks if type(c).__name__ == "ErrorReplayCallback")


def test_contract_command_writes_checkpoint_and_adapter(tmp_path):
    cmd = [sys.executable, "-m", "svi.train", "experiment=svi_shot", "backbone=tiny", "data=synthetic",
           "trainer=cpu", "logger=csv", "trainer.max_steps=20", f"hydra.run.dir={tmp_path}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / ".hydra" / "config.yaml").exists()
    rows = _metrics(tmp_path)
    assert len(rows) == 20 and all(torch.isfinite(torch.tensor(float(r["train/loss"]))) for r in rows)


@pytest.mark.parametrize("overrides", [["experiment=svi_film"], ["experiment=svi_shot", "ablation=none"],
                                       ["experiment=svi_shot", "ablation=no_img"],
                                       ["experiment=svi_shot", "ablation=no_noi"],
                                       ["experiment=svi_shot", "ablation=no_vid"]])
def test_paper_experiments_and_ablations_train_on_the_tiny_backbone(train_config, tmp_path, overrides):
    cfg = train_config(*overrides, "backbone=tiny", "data=synthetic", "trainer=cpu", "logger=csv",
                       "trainer.max_steps=8", "memory.warmup_steps=2")
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()
    assert metrics["erft/bank/vid/fill"] > 0


def test_loss_decreases_on_a_fixed_batch_and_memory_fills(train_config, tmp_path):
    cfg = train_config("experiment=svi_shot", "debug=tiny", "data.num_samples=1", "trainer.max_steps=80",
                       "flow.loss_weight=none")
    model, data, trainer = build(cfg)
    trainer.fit(model, datamodule=data)
    losses = [float(r["train/loss"]) for r in _metrics(tmp_path)]
    assert len(losses) == 80 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.9 * first, (first, last)  # the fresh noise each step keeps a large irreducible part
    memory = _replay(trainer).memory
    assert len(memory.vid) > 10 and len(memory.vid) == len(memory.noi)
    assert (memory.vid.counts > 0).sum() > 5  # errors spread over several timestep buckets
    assert memory.vid.num_nonfinite == 0
    # Injection happened once the banks held errors.
    rows = _metrics(tmp_path)
    assert max(float(r["erft/inject/vid"]) for r in rows) > 0


def test_resume_restores_step_optimizer_memory_and_rng(train_config, tmp_path):
    overrides = ["experiment=svi_shot", "debug=tiny", "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=3"]
    model, data, trainer = build(train_config(*overrides))
    trainer.fit(model, datamodule=data)
    ckpt_path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["optimizer_states"] and ckpt["callbacks"]
    assert all("lora_" in k for k in ckpt["state_dict"])  # trainable tensors only, no frozen base
    saved_memory = _replay(trainer).memory

    model2, data2, trainer2 = build(train_config(*overrides, f"ckpt_path={ckpt_path}"))
    trainer2.fit(model2, datamodule=data2, ckpt_path=str(ckpt_path))  # restores, already at max_steps
    assert trainer2.global_step == 6
    restored = _replay(trainer2).memory
    assert torch.equal(restored.vid.counts, saved_memory.vid.counts)
    for b in torch.nonzero(saved_memory.vid.counts).flatten().tolist():
        assert torch.equal(restored.vid.entries(b), saved_memory.vid.entries(b))
        assert torch.equal(restored.noi.entries(b), saved_memory.noi.entries(b))
    assert _replay(trainer2).iterations == 6
    opt1, opt2 = trainer.optimizers[0].state_dict(), trainer2.optimizers[0].state_dict()
    for k, state in opt1["state"].items():
        assert torch.equal(state["exp_avg"], opt2["state"][k]["exp_avg"])
    assert torch.equal(model.generator.get_state(), model2.generator.get_state())
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), model2.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_no_erft_is_plain_lora_fine_tuning(train_config, tmp_path):
    model, data, trainer = build(train_config("experiment=svi_shot", "debug=tiny", "ablation=no_erft", "trainer.max_steps=6"))
    trainer.fit(model, datamodule=data)
    assert _replay(trainer).memory is None and model.error_memory is None
    assert not model.injection.enabled
    rows = _metrics(tmp_path)
    assert len(rows) == 6 and "erft/inject/vid" not in rows[0]
    assert (tmp_path / "adapter" / "pytorch_lora_weights.safetensors").exists()


def test_missing_resume_checkpoint_is_a_clear_error(train_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        train(train_config("experiment=svi_shot", "debug=tiny", f"ckpt_path={tmp_path}/nope.ckpt"))
