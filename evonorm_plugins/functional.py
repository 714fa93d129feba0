"""Functional forms of the six EvoNorm layers (Liu, Brock, Simonyan, Le; NeurIPS 2020).

Every function takes an input of shape ``(N, C, *spatial)`` (usually ``(N, C, H, W)``) and per-channel
parameters of shape ``(C,)``; ``s²`` is the biased variance, ``μ`` the mean, ``σ`` the logistic sigmoid:

* B0: ``x / max(√(s²_{N,H,W}(x)+ε), v·x + √(s²_{H,W}(x)+ε)) · γ + β``
* B1: ``x / max(√(s²_{N,H,W}(x)+ε), (x+1)·√(μ_{H,W}(x²)+ε)) · γ + β``
* B2: ``x / max(√(s²_{N,H,W}(x)+ε), √(μ_{H,W}(x²)+ε) − x) · γ + β``
* S0: ``x·σ(v·x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``
* S1: ``x·σ(x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``
* S2: ``x·σ(x) / √(μ_{H,W,C/g}(x²)+ε) · γ + β``

Conventions shared by all six (they follow the official TensorFlow code):

* Statistics and arithmetic run in float32 for float16/bfloat16 inputs (float64 stays float64), and
  the result is cast back to the input dtype, so fp16 inputs up to |x| = 1e4 cannot overflow.
* ``apply_act=False`` keeps the layer's normalizing denominator and drops its non-linear part:
  B-series divide by the batch std, S0/S1 by the group std, S2 by the group RMS.
* ``v``, ``weight`` (γ) and ``bias`` (β) may be ``None``: they then act as their initial values 1, 1, 0.
* B-series ``running_var`` holds the *biased* batch variance (as the official code; timm keeps the
  unbiased one), is updated in place without autograd when ``training`` is true, and is used instead
  of the batch variance when ``training`` is false. An update whose batch variance is not finite, or
  whose batch has at most one value per channel (an empty batch included), is skipped, so NaN or inf
  never enters the buffer.
* ``groups`` that does not divide C is lowered to the largest divisor of C not above it (the official
  behaviour); see :func:`resolve_groups`.
"""
from typing import Optional

from torch import Tensor

from ._ops import (
    affine,
    check_channels,
    check_input,
    compute_dtype,
    evonorm_batch,
    evonorm_sample,
    resolve_groups,
    update_running_stat,
)
from .kernels.common import kernel_mode, set_kernel_mode

__all__ = [
    "resolve_groups",
    "channel_affine",
    "update_running_stat",
    "set_kernel_mode",
    "kernel_mode",
    "evonorm_b0",
    "evonorm_b1",
    "evonorm_b2",
    "evonorm_s0",
    "evonorm_s1",
    "evonorm_s2",
]


def channel_affine(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    """``x · γ + β`` per channel: the official code's ``nonlinearity=False`` form (no normalization)."""
    check_input(x, "channel_affine")
    check_channels(weight, "weight", x.shape[1], "channel_affine")
    check_channels(bias, "bias", x.shape[1], "channel_affine")
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return affine(x.to(compute_dtype(x)), weight, bias, shape).to(x.dtype)



def evonorm_b0(
    x: Tensor,
    running_var: Optional[Tensor],
    v: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-B0: ``x / max(√(s²_{N,H,W}(x)+ε), v·x + √(s²_{H,W}(x)+ε)) · γ + β``.

    Arguments mirror :func:`torch.nn.functional.batch_norm`; see the module docstring for conventions.
    """
    return evonorm_batch(x, 0, running_var, v, weight, bias, training, momentum, eps, apply_act, "evonorm_b0")


def evonorm_b1(
    x: Tensor,
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-B1: ``x / max(√(s²_{N,H,W}(x)+ε), (x+1)·√(μ_{H,W}(x²)+ε)) · γ + β``."""
    return evonorm_batch(x, 1, running_var, None, weight, bias, training, momentum, eps, apply_act, "evonorm_b1")


def evonorm_b2(
    x: Tensor,
    running_var: Optional[Tensor],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-B2: ``x / max(√(s²_{N,H,W}(x)+ε), √(μ_{H,W}(x²)+ε) − x) · γ + β``."""
    return evonorm_batch(x, 2, running_var, None, weight, bias, training, momentum, eps, apply_act, "evonorm_b2")


def evonorm_s0(
    x: Tensor,
    groups: int = 32,
    v: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-S0: ``x·σ(v·x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``.

    Arguments mirror :func:`torch.nn.functional.group_norm`; see the module docstring for conventions.
    """
    return evonorm_sample(x, 0, groups, v, weight, bias, eps, apply_act, "evonorm_s0")


def evonorm_s1(
    x: Tensor,
    groups: int = 32,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-S1: ``x·σ(x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``."""
    return evonorm_sample(x, 1, groups, None, weight, bias, eps, apply_act, "evonorm_s1")


def evonorm_s2(
    x: Tensor,
    groups: int = 32,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-S2: ``x·σ(x) / √(μ_{H,W,C/g}(x²)+ε) · γ + β``."""
    return evonorm_sample(x, 2, groups, None, weight, bias, eps, apply_act, "evonorm_s2")
