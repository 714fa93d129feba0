"""EvoNorm B-series: batch-dependent layers that keep a running variance for evaluation."""
from typing import Any

import torch
from torch import Tensor

from .._ops import evonorm_batch, evonorm_batch_synchronized_training
from ..functional import channel_affine
from .base import EvoNormBase


class EvoNormBatch(EvoNormBase):
    """Common part of B0, B1 and B2: ``x / max(batch std, right term) · γ + β``.

    The ``running_var`` buffer holds the biased batch variance averaged with ``momentum`` (the official
    code's moving variance, initialized to 1); it is updated without autograd in training mode, used in
    eval mode, and never receives NaN or inf. It stays float32 (or wider) when the module is cast to
    half precision, because variances of fp16 activations overflow fp16.

    With ``sync_stats=True`` and more than one process in ``process_group``, training takes the batch
    variance over the concatenated batch of the group's processes (each may hold a different batch
    size, or none) and its backward reduces the matching per-channel sums across them: outputs,
    gradients and the running variance are those one process would compute on the whole batch. It runs
    the lean synchronized kernels (1.0× the input saved), in the kernel mode in force, outside
    ``torch.compile``: a compiled model calls it as an eager graph break.
    """

    float32_buffers = ("running_var",)

    def __init__(self, num_features: int, *, momentum: float = 0.1, **kwargs: Any) -> None:
        super().__init__(num_features, momentum=momentum, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1], got {momentum}; the paper uses 0.1")
        self.momentum = float(momentum)
        device = self.weight.device
        if self.affine_only:
            self.register_buffer("running_var", None)
        else:
            self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=torch.float32))
        self.batch_statistics = not self.affine_only

    def reset_running_stats(self) -> None:
        """Set the running variance back to 1."""
        if self.running_var is not None:
            self.running_var.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.affine_only:
            return self.drop(channel_affine(x, self.weight, self.bias))
        if not torch.jit.is_scripting() and self.synchronized():
            return self.drop(self._synchronized_forward(x))
        return self.drop(evonorm_batch(
            x, self.variant, self.running_var, self.v, self.weight, self.bias,
            self.training, self.momentum, self.eps, self.apply_act, self.layer_name,
        ))

    @torch.jit.unused
    @torch.compiler.disable
    def _synchronized_forward(self, x: Tensor) -> Tensor:
        return evonorm_batch_synchronized_training(
            x, self.variant, self.running_var, self.v, self.weight, self.bias,
            self.momentum, self.eps, self.apply_act, self.layer_name, self.process_group,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", momentum={self.momentum}"


class EvoNormB0(EvoNormBatch):
    """EvoNorm-B0: ``x / max(√(s²_{N,H,W}(x)+ε), v·x + √(s²_{H,W}(x)+ε)) · γ + β``."""

    has_v = True
    variant = 0


class EvoNormB1(EvoNormBatch):
    """EvoNorm-B1: ``x / max(√(s²_{N,H,W}(x)+ε), (x+1)·√(μ_{H,W}(x²)+ε)) · γ + β``."""

    variant = 1


class EvoNormB2(EvoNormBatch):
    """EvoNorm-B2: ``x / max(√(s²_{N,H,W}(x)+ε), √(μ_{H,W}(x²)+ε) − x) · γ + β``."""

    variant = 2
