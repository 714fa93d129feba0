"""evonorm-plugins: EvoNorm normalization-activation layers and their framework plugins.

``import evonorm_plugins`` loads only torch; the framework integrations live in submodules that are
imported on demand.
"""
from . import functional
from .layers import (
    EvoNormB0,
    EvoNormB1,
    EvoNormB2,
    EvoNormBase,
    EvoNormBatch,
    EvoNormS0,
    EvoNormS1,
    EvoNormS2,
    EvoNormSample,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "EvoNormBase",
    "EvoNormBatch",
    "EvoNormSample",
    "EvoNormB0",
    "EvoNormB1",
    "EvoNormB2",
    "EvoNormS0",
    "EvoNormS1",
    "EvoNormS2",
]
