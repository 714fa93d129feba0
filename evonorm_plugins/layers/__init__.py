"""The six EvoNorm modules."""
from .base import EvoNormBase
from .evonorm_b import EvoNormB0, EvoNormB1, EvoNormB2, EvoNormBatch
from .evonorm_s import EvoNormS0, EvoNormS1, EvoNormS2, EvoNormSample

__all__ = [
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
