"""Typed schemas for our own config groups, registered with Hydra's ConfigStore.

A YAML file of a typed group starts with `defaults: [schema, _self_]`, so a misspelt key
(`injection.p_nio=0.1`) or a wrong type fails when the config is composed, not hours into a run.
Third-party objects (Trainer, loggers, callbacks) stay plain `_target_` nodes.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from svi.backbones.lora import LoraSpec
from svi.erft.injection import InjectionConfig
from svi.flow import FlowConfig

T = TypeVar("T")


@dataclass
class MemoryConfig:
    """The replay memory (SPEC §3 step 7)."""

    num_grids: int = 50  # N_test: buckets = nearest of the 50 shifted inference timesteps
    capacity: int = 500  # Z: errors kept per bucket
    replacement: str = "l2"  # l2 (nearest entry) | l2_sketch (nearest in sketch space) | random | fifo
    warmup_steps: int = 50  # W: iterations during which all ranks all-gather their errors
    dtype: str = "float32"  # storage dtype of the banks: float32 | bfloat16 | float16 | float8
    device: str = "cpu"  # where the banks live: cpu (pinned when CUDA is available) | cuda
    budget_gib: Optional[float] = None  # cap on both banks' bytes; Z shrinks to fit (None: Z only)
    grow_by: int = 16  # entries allocated at a time as a bucket fills
    sketch_dim: int = 256  # l2_sketch: count-sketch size per entry
    sketch_rerank: int = 0  # l2_sketch: re-rank this many best sketch candidates exactly (0: none)
    pin_memory: Optional[bool] = None  # pin CPU storage; None: when CUDA is available


@dataclass
class ConditionSchema:
    _target_: str = "svi.conditions.I2VCondition"
    name: str = "shot"
    num_motion_frames: int = 1  # K
    ref_pad_num: int = -1  # -1 reference repeated | 0 zeros | n copies then zeros
    mask_all_motion_frames: bool = False  # mark all K motion frames known (officially only frame 0)
    prompt_per_clip: bool = False  # Film: a prompt stream, one prompt per clip


@dataclass
class LoraSchema:
    rank: int = 128
    alpha: int = 128
    targets: list[str] = field(default_factory=lambda: list(LoraSpec().targets))
    dropout: float = 0.0


def _schema_of(cls) -> Any:
    """A structured config with the dataclass's fields (dataclasses with __post_init__ validate later)."""
    return OmegaConf.structured(cls)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="injection", name="schema", node=_schema_of(InjectionConfig))
    cs.store(group="flow", name="schema", node=_schema_of(FlowConfig))
    cs.store(group="memory", name="schema", node=_schema_of(MemoryConfig))
    cs.store(group="condition", name="schema", node=_schema_of(ConditionSchema))
    cs.store(group="lora", name="schema", node=_schema_of(LoraSchema))


def as_dataclass(cls: type[T], value: Any) -> T:
    """Accept a dataclass instance, a dict or a DictConfig and return `cls` (running its validation)."""
    if isinstance(value, cls):
        return value
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return cls()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; valid keys: {sorted(names)}")
    return cls(**value)


def sweep_job_name(prefix: str = "") -> str:
    """`${svi.sweep_job:-}`: in a multirun, `prefix` + the job's override_dirname; "" in a single run.

    Loggers name their runs with it, so the jobs of a sweep are told apart by what they override
    (`injection.p_img=0.5`) while a single run keeps its plain names and paths.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    name = HydraConfig.get().job.override_dirname
    return f"{prefix}{name}" if name else ""


def run_tags(tags, ablation: str) -> list[str]:
    """`${svi.tags:${tags},${ablation_name}}`: the run's tags plus `ablation:<name>` (W&B filters on tags)."""
    out = [str(t) for t in (tags or [])]
    return out if f"ablation:{ablation}" in out else [*out, f"ablation:{ablation}"]


def asset_dir(name: str) -> str:
    """`${svi.asset:toy_base_k2}`: a directory shipped in the package's `svi/assets/`."""
    from svi.paths import REPO_ROOT

    return str(REPO_ROOT / "svi" / "assets" / str(name))


register_configs()
OmegaConf.register_new_resolver("svi.asset", asset_dir, replace=True)
OmegaConf.register_new_resolver("svi.sweep_job", sweep_job_name, replace=True)
OmegaConf.register_new_resolver("svi.tags", run_tags, replace=True)
# conf/hydra/launcher/{joblib,submitit_slurm}.yaml keep the plugins' names, so Hydra validates them
# against the plugins' schemas (a misspelt launcher key fails); its notice about that is noise here.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name",
                        category=UserWarning)
