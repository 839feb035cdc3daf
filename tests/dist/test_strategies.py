"""Multi-GPU trainer configs compose and their strategies instantiate on this CPU machine (the Trainer
itself needs GPUs); DeepSpeed is optional: without the package only composition is checked."""

import importlib.util

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from tests.conftest import TINY, compose_config


def _trainer_cfg(name: str, tmp_path):
    return compose_config("train", ["experiment=svi_shot", f"trainer={name}", f"paths.output_dir={tmp_path}"]).trainer


def test_ddp(tmp_path):
    cfg = _trainer_cfg("ddp", tmp_path)
    assert cfg.strategy == "ddp" and cfg.accelerator == "gpu" and cfg.devices == -1
    assert cfg.plugins[0]._target_.endswith("AtomicCheckpointIO")


def test_fsdp(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    cfg = _trainer_cfg("fsdp", tmp_path)
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)
    assert [c.__name__ for c in policy._module_classes] == ["WanTransformerBlock"]
    assert strategy.kwargs["use_orig_params"] is True


def test_deepspeed_stage_2(tmp_path):
    cfg = _trainer_cfg("deepspeed_stage_2", tmp_path)
    assert isinstance(cfg.strategy, DictConfig) and cfg.strategy.stage == 2
    assert cfg.strategy.exclude_frozen_parameters is True and cfg.plugins is None
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (optional): composition checked, instantiation skipped")
    strategy = instantiate(cfg.strategy)
    assert strategy.zero_stage_3 is False and strategy.exclude_frozen_parameters


def test_ddp_cpu_trainer_instantiates_with_gloo(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    cfg = compose_config("train", ["experiment=svi_shot", *TINY, "trainer=ddp_cpu", f"paths.output_dir={tmp_path}"])
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer.strategy.process_group_backend == "gloo"
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
