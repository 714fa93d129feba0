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
from typing import List, Optional

import torch
from torch import Tensor

from .kernels.batch import evonorm_batch_fused
from .kernels.common import compute_dtype, current_mode, kernel_mode, set_kernel_mode
from .kernels.sample import evonorm_sample_fused

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


@torch.jit.unused
def _use_lean_kernels(x: Tensor) -> bool:
    if current_mode() == "reference" or x.numel() == 0 or x.dim() < 3 or not x.is_floating_point():
        return False
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and (compiler.is_compiling() or getattr(compiler, "is_exporting", bool)()))


def resolve_groups(num_channels: int, groups: int) -> int:
    """The number of groups actually used: the largest divisor of ``num_channels`` that is ``<= groups``.

    This is the official code's rule (``g = 32`` or the largest divisor of C below it), so a layer with
    C = 24 and groups = 32 uses 24 groups and C = 80 uses 20.
    """
    if groups <= 0:
        raise ValueError(f"groups must be a positive integer, got {groups}; use e.g. groups=32")
    if num_channels <= 0:
        raise ValueError(f"the number of channels must be positive, got {num_channels}")
    g = min(groups, num_channels)
    while num_channels % g != 0:
        g -= 1
    return g


def _check_input(x: Tensor, name: str) -> None:
    if x.dim() < 3:
        raise ValueError(
            f"{name} expects an input of shape (N, C, H, W) (or (N, C, *spatial)), got a {x.dim()}-D "
            f"tensor of shape {list(x.shape)}; add the spatial dimensions, e.g. x[..., None, None]"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}; convert it with x.float()")


def _check_channels(param: Optional[Tensor], what: str, num_channels: int, name: str) -> None:
    if param is not None and param.numel() != num_channels:
        raise ValueError(
            f"{name}: the input has {num_channels} channels but {what} has {param.numel()} elements; "
            f"build the layer with num_features={num_channels} (or fix the layer before it)"
        )


def _per_channel(param: Optional[Tensor], shape: List[int], dtype: torch.dtype) -> Optional[Tensor]:
    if param is None:
        return None
    return param.to(dtype).view(shape)


def _affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shape: List[int]) -> Tensor:
    w = _per_channel(weight, shape, y.dtype)
    b = _per_channel(bias, shape, y.dtype)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def channel_affine(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
    """``x · γ + β`` per channel: the official code's ``nonlinearity=False`` form (no normalization)."""
    _check_input(x, "channel_affine")
    _check_channels(weight, "weight", x.shape[1], "channel_affine")
    _check_channels(bias, "bias", x.shape[1], "channel_affine")
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    return _affine(x.to(compute_dtype(x)), weight, bias, shape).to(x.dtype)


def update_running_stat(running: Tensor, batch: Tensor, momentum: float, count: int) -> None:
    """``running ← (1 − momentum)·running + momentum·batch`` in place, with no autograd graph.

    Channels whose new value would not be finite keep their old value; batches with at most one value
    per channel (their variance is meaningless) leave the buffer untouched.
    """
    if count <= 1:
        return
    new = running * (1.0 - momentum) + batch.detach().to(running.dtype) * momentum
    running.copy_(torch.where(torch.isfinite(new), new, running))


def _check_batch_args(
    x: Tensor, running_var: Optional[Tensor], v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
    training: bool, name: str,
) -> None:
    _check_input(x, name)
    c = x.shape[1]
    _check_channels(running_var, "running_var", c, name)
    _check_channels(v, "v", c, name)
    _check_channels(weight, "weight", c, name)
    _check_channels(bias, "bias", c, name)
    if not training and running_var is None:
        raise ValueError(
            f"{name}: evaluation (training=False) uses the running variance, but running_var is None; "
            f"pass the running_var buffer, or training=True to use the batch variance"
        )


def _evonorm_batch(
    x: Tensor,
    variant: int,
    running_var: Optional[Tensor],
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    """B0 (variant 0), B1 (1) or B2 (2): the lean kernel where it can run, else the reference."""
    if torch.jit.is_scripting() or not _use_lean_kernels(x):
        return _evonorm_batch_reference(x, variant, running_var, v, weight, bias, training, momentum, eps, apply_act, name)
    return _evonorm_batch_lean(x, variant, running_var, v, weight, bias, training, momentum, eps, apply_act, name)


@torch.jit.unused
def _evonorm_batch_lean(
    x: Tensor,
    variant: int,
    running_var: Optional[Tensor],
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    _check_batch_args(x, running_var, v, weight, bias, training, name)
    left_var = None if training else running_var
    y, batch_var = evonorm_batch_fused(x, variant, v, weight, bias, left_var, eps, apply_act)
    if training and running_var is not None:
        update_running_stat(running_var, batch_var, momentum, x.numel() // x.shape[1])
    return y


def _evonorm_batch_reference(
    x: Tensor,
    variant: int,
    running_var: Optional[Tensor],
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    """B0 (variant 0), B1 (1) or B2 (2) on a ``(N, C, L)`` view of the input, in plain autograd ops:
    the specification the lean kernel is tested against, and the path for TorchScript and export."""
    _check_batch_args(x, running_var, v, weight, bias, training, name)
    n, c = x.shape[0], x.shape[1]
    dtype = compute_dtype(x)
    x3 = x.to(dtype).flatten(2)
    shape = [1, c, 1]
    if x3.numel() == 0:  # no statistics to take; keep the parameters in the graph
        return _affine(x3, weight, bias, shape).reshape(x.shape).to(x.dtype)

    if training:
        batch_var = torch.var(x3, dim=[0, 2], unbiased=False)
        if running_var is not None:
            update_running_stat(running_var, batch_var, momentum, n * x3.shape[2])
    else:
        assert running_var is not None  # checked above; refines the type for TorchScript
        batch_var = running_var.to(dtype)
    left = torch.sqrt(batch_var + eps).view(shape)

    if not apply_act:
        y = x3 / left
    else:
        if variant == 0:
            v3 = _per_channel(v, shape, dtype)
            vx = x3 if v3 is None else v3 * x3
            right = vx + torch.sqrt(torch.var(x3, dim=2, unbiased=False, keepdim=True) + eps)
        else:
            rms = torch.sqrt(torch.mean(x3 * x3, dim=2, keepdim=True) + eps)
            right = (x3 + 1.0) * rms if variant == 1 else rms - x3
        y = x3 / torch.maximum(left, right)
    return _affine(y, weight, bias, shape).reshape(x.shape).to(x.dtype)


def _check_sample_args(x: Tensor, v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor], name: str) -> None:
    _check_input(x, name)
    c = x.shape[1]
    _check_channels(v, "v", c, name)
    _check_channels(weight, "weight", c, name)
    _check_channels(bias, "bias", c, name)


def _evonorm_sample(
    x: Tensor,
    variant: int,
    groups: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    """S0 (variant 0), S1 (1) or S2 (2): the lean kernel where it can run, else the reference."""
    if torch.jit.is_scripting() or not _use_lean_kernels(x):
        return _evonorm_sample_reference(x, variant, groups, v, weight, bias, eps, apply_act, name)
    return _evonorm_sample_lean(x, variant, groups, v, weight, bias, eps, apply_act, name)


@torch.jit.unused
def _evonorm_sample_lean(
    x: Tensor,
    variant: int,
    groups: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    _check_sample_args(x, v, weight, bias, name)
    return evonorm_sample_fused(x, variant, resolve_groups(x.shape[1], groups), v, weight, bias, eps, apply_act)


def _evonorm_sample_reference(
    x: Tensor,
    variant: int,
    groups: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
    name: str,
) -> Tensor:
    """S0 (variant 0), S1 (1) or S2 (2) on a ``(N, G, C/G, L)`` view of the input, in plain autograd
    ops (the specification, and the path for TorchScript and export). The grouped view lets
    per-group statistics broadcast without being expanded to x's size."""
    _check_sample_args(x, v, weight, bias, name)
    n, c = x.shape[0], x.shape[1]
    g = resolve_groups(c, groups)
    dtype = compute_dtype(x)
    x3 = x.to(dtype).flatten(2)
    x4 = x3.view(n, g, c // g, x3.shape[2])
    shape = [1, g, c // g, 1]
    if x4.numel() == 0:
        return _affine(x4, weight, bias, shape).reshape(x.shape).to(x.dtype)

    if variant == 2:
        inv_denominator = torch.rsqrt(torch.mean(x4 * x4, dim=[2, 3], keepdim=True) + eps)
    else:
        inv_denominator = torch.rsqrt(torch.var(x4, dim=[2, 3], unbiased=False, keepdim=True) + eps)
    if apply_act:
        v4 = _per_channel(v, shape, dtype) if variant == 0 else None
        x4 = x4 * torch.sigmoid(x4 if v4 is None else v4 * x4)
    y = x4 * inv_denominator
    return _affine(y, weight, bias, shape).reshape(x.shape).to(x.dtype)


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
    return _evonorm_batch(x, 0, running_var, v, weight, bias, training, momentum, eps, apply_act, "evonorm_b0")


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
    return _evonorm_batch(x, 1, running_var, None, weight, bias, training, momentum, eps, apply_act, "evonorm_b1")


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
    return _evonorm_batch(x, 2, running_var, None, weight, bias, training, momentum, eps, apply_act, "evonorm_b2")


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
    return _evonorm_sample(x, 0, groups, v, weight, bias, eps, apply_act, "evonorm_s0")


def evonorm_s1(
    x: Tensor,
    groups: int = 32,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-S1: ``x·σ(x) / √(s²_{H,W,C/g}(x)+ε) · γ + β``."""
    return _evonorm_sample(x, 1, groups, None, weight, bias, eps, apply_act, "evonorm_s1")


def evonorm_s2(
    x: Tensor,
    groups: int = 32,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    """EvoNorm-S2: ``x·σ(x) / √(μ_{H,W,C/g}(x²)+ε) · γ + β``."""
    return _evonorm_sample(x, 2, groups, None, weight, bias, eps, apply_act, "evonorm_s2")
