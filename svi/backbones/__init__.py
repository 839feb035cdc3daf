"""Wan components from config (tiny random-init) or from a local diffusers-format directory, and LoRA."""

from svi.backbones.lora import LoraSpec, attach_lora, load_adapter, save_adapter
from svi.backbones.wan import WanStack, build_tiny_wan, load_wan_dir, load_wan_from_env, save_stack

__all__ = ["LoraSpec", "WanStack", "attach_lora", "build_tiny_wan", "load_adapter", "load_wan_dir",
           "load_wan_from_env", "save_adapter", "save_stack"]
