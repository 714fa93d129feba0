"""The implementation behind :mod:`evonorm_plugins.functional` (internal; its public names are
re-exported there): input checks, the per-channel affine, and for each series the dispatch between
the lean kernels and the reference implementation in plain autograd ops, which is the specification
the kernels are tested against and the path for TorchScript, tracing and export."""
from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from .kernels.batch import evonorm_batch_fused
from .kernels.batch_sync import evonorm_batch_synchronized
from .kernels.common import compute_dtype, current_mode
from .kernels.distributed import synchronized_moments
from .kernels.sample import evonorm_sample_fused


@torch.jit.unused
def lean_kernels_run() -> bool:
    """Whether the lean kernels may run now: not in the "reference" mode, and not under tracing, ONNX
    export or torch.compile, which take the reference implementation."""
    if current_mode() == "reference" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and (compiler.is_compiling() or getattr(compiler, "is_exporting", bool)()))


@torch.jit.unused
def use_lean_kernels(x: Tensor) -> bool:
    return x.numel() != 0 and x.dim() >= 3 and x.is_floating_point() and lean_kernels_run()


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


def check_input(x: Tensor, name: str) -> None:
    if x.dim() < 3:
        raise ValueError(
            f"{name} expects an input of shape (N, C, H, W) (or (N, C, *spatial)), got a {x.dim()}-D "
            f"tensor of shape {list(x.shape)}; add the spatial dimensions, e.g. x[..., None, None]"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}; convert it with x.float()")


def check_channels(param: Optional[Tensor], what: str, num_channels: int, name: str) -> None:
    if param is not None and param.numel() != num_channels:
        raise ValueError(
            f"{name}: the input has {num_channels} channels but {what} has {param.numel()} elements; "
            f"build the layer with num_features={num_channels} (or fix the layer before it)"
        )


def per_channel(param: Optional[Tensor], shape: List[int], dtype: torch.dtype) -> Optional[Tensor]:
    if param is None:
        return None
    return param.to(dtype).view(shape)


def affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shape: List[int]) -> Tensor:
    w = per_channel(weight, shape, y.dtype)
    b = per_channel(bias, shape, y.dtype)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


def update_running_stat(running: Tensor, batch: Tensor, momentum: float, count: int) -> None:
    """``running ← (1 − momentum)·running + momentum·batch`` in place, with no autograd graph.

    Channels whose new value would not be finite keep their old value; batches with at most one value
    per channel (their variance is meaningless) leave the buffer untouched.
    """
    if count <= 1:
        return
    new = running * (1.0 - momentum) + batch.detach().to(running.dtype) * momentum
    running.copy_(torch.where(torch.isfinite(new), new, running))


def check_batch_args(
    x: Tensor, running_var: Optional[Tensor], v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor],
    training: bool, name: str,
) -> None:
    check_input(x, name)
    c = x.shape[1]
    check_channels(running_var, "running_var", c, name)
    check_channels(v, "v", c, name)
    check_channels(weight, "weight", c, name)
    check_channels(bias, "bias", c, name)
    if not training and running_var is None:
        raise ValueError(
            f"{name}: evaluation (training=False) uses the running variance, but running_var is None; "
            f"pass the running_var buffer, or training=True to use the batch variance"
        )


def evonorm_batch(
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
    if torch.jit.is_scripting() or not use_lean_kernels(x):
        return evonorm_batch_reference(x, variant, running_var, v, weight, bias, training, momentum, eps, apply_act, name)
    return evonorm_batch_lean(x, variant, running_var, v, weight, bias, training, momentum, eps, apply_act, name)


@torch.jit.unused
def evonorm_batch_lean(
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
    check_batch_args(x, running_var, v, weight, bias, training, name)
    left_var = None if training else running_var
    y, batch_var = evonorm_batch_fused(x, variant, v, weight, bias, left_var, eps, apply_act)
    if training and running_var is not None:
        update_running_stat(running_var, batch_var, momentum, x.numel() // x.shape[1])
    return y


def evonorm_batch_reference(
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
    check_batch_args(x, running_var, v, weight, bias, training, name)
    n, c = x.shape[0], x.shape[1]
    dtype = compute_dtype(x)
    x3 = x.to(dtype).flatten(2)
    if x3.numel() == 0:  # no statistics to take; keep the parameters in the graph
        return affine(x3, weight, bias, [1, c, 1]).reshape(x.shape).to(x.dtype)

    if training:
        batch_var = torch.var(x3, dim=[0, 2], unbiased=False)
        if running_var is not None:
            update_running_stat(running_var, batch_var, momentum, n * x3.shape[2])
    else:
        assert running_var is not None  # checked above; refines the type for TorchScript
        batch_var = running_var.to(dtype)
    return batch_reference_output(x, x3, variant, batch_var, v, weight, bias, eps, apply_act)


def batch_reference_output(
    x: Tensor,
    x3: Tensor,
    variant: int,
    batch_var: Tensor,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
) -> Tensor:
    """The B-series output of ``x3`` (x as (N, C, L) in the compute dtype) given the per-channel
    variance ``batch_var`` (C,) of the left term, in x's shape and dtype."""
    shape = [1, x3.shape[1], 1]
    dtype = x3.dtype
    left = torch.sqrt(batch_var + eps).view(shape)

    if not apply_act:
        y = x3 / left
    else:
        if variant == 0:
            v3 = per_channel(v, shape, dtype)
            vx = x3 if v3 is None else v3 * x3
            right = vx + torch.sqrt(torch.var(x3, dim=2, unbiased=False, keepdim=True) + eps)
        else:
            rms = torch.sqrt(torch.mean(x3 * x3, dim=2, keepdim=True) + eps)
            right = (x3 + 1.0) * rms if variant == 1 else rms - x3
        y = x3 / torch.maximum(left, right)
    return affine(y, weight, bias, shape).reshape(x.shape).to(x.dtype)


@torch.jit.unused
def evonorm_batch_synchronized_training(
    x: Tensor,
    variant: int,
    running_var: Optional[Tensor],
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    momentum: float,
    eps: float,
    apply_act: bool,
    name: str,
    process_group: Optional[Any],
) -> Tensor:
    """B0 (variant 0), B1 (1) or B2 (2) in training with the batch statistics of the concatenated batch
    of ``process_group`` (the layers' ``sync_stats``): the lean synchronized kernels, or the synchronized
    reference where the kernels do not run. The running variance is updated with the global batch
    variance, skipped when the global batch has at most one value per channel.

    The choice between the two never depends on this process's batch (an empty one included), since
    they exchange different collectives and every process must make the same.
    """
    check_batch_args(x, running_var, v, weight, bias, True, name)
    if lean_kernels_run():
        y, batch_var, count = evonorm_batch_synchronized(x, variant, v, weight, bias, eps, apply_act, process_group)
    else:
        y, batch_var, count = evonorm_batch_synchronized_reference(x, variant, v, weight, bias, eps, apply_act, process_group)
    if running_var is not None:
        update_running_stat(running_var, batch_var, momentum, count)
    return y


@torch.jit.unused
def evonorm_batch_synchronized_reference(
    x: Tensor,
    variant: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
    process_group: Optional[Any],
) -> Tuple[Tensor, Tensor, int]:
    """The synchronized B-series in plain autograd ops and differentiable collectives (the
    specification of the lean synchronized kernels): (output, global batch variance (C,), global count)."""
    dtype = compute_dtype(x)
    x3 = x.to(dtype).flatten(2)
    _, batch_var, count = synchronized_moments(x3, process_group)
    batch_var = batch_var.view(x.shape[1])
    return batch_reference_output(x, x3, variant, batch_var, v, weight, bias, eps, apply_act), batch_var, count


def check_sample_args(x: Tensor, v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor], name: str) -> None:
    check_input(x, name)
    c = x.shape[1]
    check_channels(v, "v", c, name)
    check_channels(weight, "weight", c, name)
    check_channels(bias, "bias", c, name)


def evonorm_sample(
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
    if torch.jit.is_scripting() or not use_lean_kernels(x):
        return evonorm_sample_reference(x, variant, groups, v, weight, bias, eps, apply_act, name)
    return evonorm_sample_lean(x, variant, groups, v, weight, bias, eps, apply_act, name)


@torch.jit.unused
def evonorm_sample_lean(
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
    check_sample_args(x, v, weight, bias, name)
    return evonorm_sample_fused(x, variant, resolve_groups(x.shape[1], groups), v, weight, bias, eps, apply_act)


def evonorm_sample_reference(
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
    check_sample_args(x, v, weight, bias, name)
    n, c = x.shape[0], x.shape[1]
    g = resolve_groups(c, groups)
    dtype = compute_dtype(x)
    x3 = x.to(dtype).flatten(2)
    x4 = x3.view(n, g, c // g, x3.shape[2])
    shape = [1, g, c // g, 1]
    if x4.numel() == 0:
        return affine(x4, weight, bias, shape).reshape(x.shape).to(x.dtype)

    if variant == 2:
        inv_denominator = torch.rsqrt(torch.mean(x4 * x4, dim=[2, 3], keepdim=True) + eps)
    else:
        inv_denominator = torch.rsqrt(torch.var(x4, dim=[2, 3], unbiased=False, keepdim=True) + eps)
    if apply_act:
        v4 = per_channel(v, shape, dtype) if variant == 0 else None
        x4 = x4 * torch.sigmoid(x4 if v4 is None else v4 * x4)
    y = x4 * inv_denominator
    return affine(y, weight, bias, shape).reshape(x.shape).to(x.dtype)
