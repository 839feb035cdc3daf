"""Typed schemas for our own config groups, registered with Hydra's ConfigStore.

A YAML file of a typed group starts with `defaults: [schema, _self_]` (or `[<name>_schema, _self_]` for a
plug-in), so a misspelt key (`injection.p_nio=0.1`) or a wrong type fails when the config is composed,
not hours into a run. A plug-in's schema (a condition type, an image-error source) is derived from its
constructor's arguments by `register_schema`. Third-party objects (Trainer, loggers, callbacks) stay
plain `_target_` nodes.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, Union

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from svi.backbones.lora import LoraSpec
from svi.conditions import DanceCondition, FilmCondition, ShotCondition, TalkCondition
from svi.erft.image_error import WindowImageError
from svi.erft.injection import InjectionConfig
from svi.erft.memory import MemoryConfig
from svi.flow import FlowConfig

T = TypeVar("T")
_PLAIN = (str, int, float, bool)


@dataclass
class LoraSchema:
    rank: int = 128
    alpha: int = 128
    targets: list[str] = field(default_factory=lambda: list(LoraSpec().targets))
    dropout: float = 0.0
    init_path: Optional[str] = None


def _schema_of(cls) -> Any:
    """A structured config with the dataclass's fields (dataclasses with __post_init__ validate later)."""
    return OmegaConf.structured(cls)


def _field_type(annotation: Any) -> Any:
    """A constructor annotation -> a type OmegaConf can check (plain types, Optional of them, lists); else Any."""
    if annotation in _PLAIN:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and rest[0] in _PLAIN:
            return Optional[rest[0]] if type(None) in args else rest[0]
    if origin in (list, typing.List) and args and args[0] in _PLAIN:
        return list[args[0]]
    return Any


def register_schema(group: str, name: str, cls: type) -> None:
    """Store `group/name` in the ConfigStore: a typed schema of `cls`'s constructor arguments plus its
    `_target_`, so a YAML option of a plug-in starting `defaults: [name, _self_]` is checked at compose."""
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple] = [("_target_", str, f"{cls.__module__}.{cls.__qualname__}")]
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = _field_type(hints.get(param.name, Any))
        default = param.default if param.default is not param.empty else dataclasses.MISSING
        if isinstance(default, (list, dict)):
            fields.append((param.name, kind, field(default_factory=lambda d=default: type(d)(d))))
        else:
            fields.append((param.name, kind, default))
    schema = dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)
    ConfigStore.instance().store(group=group, name=name, node=schema)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="injection", name="schema", node=_schema_of(InjectionConfig))
    cs.store(group="flow", name="schema", node=_schema_of(FlowConfig))
    cs.store(group="memory", name="schema", node=_schema_of(MemoryConfig))
    cs.store(group="lora", name="schema", node=_schema_of(LoraSchema))
    register_schema("condition", "shot_schema", ShotCondition)
    register_schema("condition", "film_schema", FilmCondition)
    register_schema("condition", "dance_schema", DanceCondition)
    register_schema("condition", "talk_schema", TalkCondition)
    register_schema("img_source", "window_schema", WindowImageError)


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
