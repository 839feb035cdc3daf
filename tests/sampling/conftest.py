"""Fixtures for the long-generation tests: the tiny backbone from conf/backbone/tiny.yaml, an image, prompts."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import svi.config  # noqa: F401
import svi.sampling.config  # noqa: F401
from svi.backbones import build_tiny_wan
from svi.paths import CONF_DIR

# Small geometry for speed: 5 frames (2 latent frames) at 32x32 unless a test needs more.
SMALL = ["backbone=tiny", "num_frames=5", "height=32", "width=32", "flow.num_inference_steps=2", "progress=false"]


def tiny_backbone_cfg() -> dict:
    return OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/backbone/tiny.yaml"), resolve=True)


def make_tiny_stack(components=("transformer", "vae", "text_encoder", "image_encoder")):
    cfg = {k: v for k, v in tiny_backbone_cfg().items() if k != "_target_"}
    return build_tiny_wan(**{**cfg, "components": list(components)})


def compose_generate(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("generate", overrides=overrides)


def write_image(path, height=32, width=32, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128.0)], -1)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def stack():
    """A tiny stack shared read-only within a module (tests that merge a LoRA build their own)."""
    return make_tiny_stack()


@pytest.fixture
def image_file(tmp_path):
    return write_image(tmp_path / "image.png")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red disc drifts to the right\n# a comment line\n\na blue square spins\n")
    return path
