"""Shared fixtures: compose the real configs (never hand-built dicts) and shrink them for CPU."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import svi.config  # noqa: F401  (registers the typed schemas)
from svi.paths import CONF_DIR

TINY = ["backbone=tiny", "data=synthetic", "trainer=cpu", "logger=csv"]


def compose_config(name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture
def train_config(tmp_path):
    """compose('train', overrides) with the run directory redirected to a temp folder."""

    def _compose(*overrides: str):
        return compose_config("train", [*overrides, f"paths.output_dir={tmp_path}"])

    return _compose


@pytest.fixture(scope="session")
def tiny_stack():
    """One tiny random-init Wan stack (conf/backbone/tiny.yaml) shared by read-only tests."""
    from hydra.utils import instantiate

    return instantiate(compose_config("train", TINY).backbone)
