"""Fixtures shared by every test package."""
import pytest
import torch

from evonorm_plugins.registry import REGISTRY


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clean_registry():
    """Layers a test registers are forgotten after it."""
    with REGISTRY.snapshot():
        yield REGISTRY
