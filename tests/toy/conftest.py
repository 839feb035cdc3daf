"""A random-init toy stack (conf/backbone/toy_init.yaml) saved like the shipped base."""

import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config


@pytest.fixture(scope="session")
def toy_stack():
    return instantiate(compose_config("train", ["experiment=toy_pretrain"]).backbone)


@pytest.fixture(scope="session")
def toy_base_dir(toy_stack, tmp_path_factory):
    from svi.backbones.wan import save_stack

    path = tmp_path_factory.mktemp("toy_base")
    save_stack(toy_stack, path)
    return path
