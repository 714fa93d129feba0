"""EvoNorm S-series: batch-independent layers with per-sample group statistics."""
from typing import Any, Optional

from torch import Tensor

from .._ops import evonorm_sample
from ..functional import channel_affine
from .base import EvoNormBase, num_groups_for


class EvoNormSample(EvoNormBase):
    """Common part of S0, S1 and S2: ``x·σ(·) / group statistic · γ + β``, identical in train and eval.

    ``groups`` (default 32) that does not divide C is lowered to the largest divisor of C not above it,
    as in the official code (C = 24 → 24 groups, C = 80 → 20); ``group_size`` must divide C.
    """

    def __init__(self, num_features: int, *, groups: int = 32, group_size: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(num_features, groups=groups, group_size=group_size, **kwargs)
        self.groups = num_groups_for(type(self).__name__, num_features, groups, group_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.affine_only:
            return self.drop(channel_affine(x, self.weight, self.bias))
        return self.drop(evonorm_sample(
            x, self.variant, self.groups, self.v, self.weight, self.bias, self.eps, self.apply_act, self.layer_name
        ))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


class EvoNormS0(EvoNormSample):
    """EvoNorm-S0: ``x·σ(v·x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``."""

    has_v = True
    variant = 0


class EvoNormS1(EvoNormSample):
    """EvoNorm-S1: ``x·σ(x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``."""

    variant = 1


class EvoNormS2(EvoNormSample):
    """EvoNorm-S2: ``x·σ(x) / √(μ_{H,W,C/g}(x²)+ε) · γ + β``."""

    variant = 2
