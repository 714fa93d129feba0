"""Memory-lean S0/S1/S2: an autograd Function that saves only the input and per-group statistics.

The reference path (``functional._evonorm_sample_reference``) lets autograd keep every intermediate
(σ(v·x), x·σ, the normalized tensor, ...: 4× the input). Here backward recomputes the cheap
element-wise parts from x and applies the closed-form gradient. Notation on the grouped view
(N, G, C/G, L), M = C/G·L elements per group, per-channel γ, β, v:

    s = σ(v·x),  a = x·s (or a = x without activation),  r = (stat + ε)^(-1/2),  y = a·r·γ + β
    stat = var(x) (S0, S1) or μ(x²) (S2) over the group

    dβ = Σ dy                      dγ = Σ dy·a·r                 da = dy·γ·r
    dr = Σ_group dy·γ·a            dstat = -½·r³·dr
    dx = da·(s + v·x·s·(1−s)) + dstat·2(x − μ)/M    (S2: dstat·2x/M)
    dv = Σ da·x²·s·(1−s)
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .common import (
    affine_output,
    channel_sums,
    channels_last,
    compute_dtype,
    current_mode,
    default_parameters,
    differentiable_backward,
    group_moments,
    kernel_layout,
    per_channel,
    per_input,
    run_kernel,
)


def _group_stats(x4: Tensor, variant: int, eps: float) -> Tuple[Tensor, Tensor]:
    """(mean, r) per (N, G, 1, 1): r = 1/√(var + ε) (S0, S1), or mean 0 and r = 1/√(μ(x²) + ε) (S2),
    μ(x²) being var + mean²: the statistic's gradient is then 2(x − mean)/M in both cases."""
    mean, var = group_moments(x4)
    if variant == 2:
        return torch.zeros_like(mean), torch.rsqrt(var + mean * mean + eps)
    return mean, torch.rsqrt(var + eps)


def _layout(x: Tensor, groups: int) -> Tuple[int, Tuple[int, int, int, int]]:
    """The view the element-wise work runs on: grouped (N, G, C/G, L) for a contiguous x, per channel
    (N, 1, C, L) for a channels-last one, whose contiguous axis is C (the grouped view would leave loops
    over C/G channels, e.g. 4, to vectorize)."""
    n, c = x.shape[0], x.shape[1]
    length = x.numel() // (n * c) if n * c else 0
    if channels_last(x):
        return 1, (n, 1, c, length)
    return groups, (n, groups, c // groups, length)


def _per_view(stat: Tensor, shape: Tuple[int, int, int, int]) -> Tensor:
    """A per-group statistic (N, G, 1, 1) broadcastable against the view."""
    if shape[1] == stat.shape[1]:
        return stat
    n, g = stat.shape[0], stat.shape[1]
    return stat.expand(n, g, shape[2] // g, 1).reshape(n, 1, shape[2], 1)


def sample_statistics(x: Tensor, variant: int, groups: int, eps: float) -> Tuple[Tensor, Tensor]:
    """Group mean and r repeated per channel, (N, 1, C, 1): a kernel of its own for a channels-last
    input under Inductor. Fused into the element-wise loops, a per-group value is a gather per vector
    lane (the group of a channel is a division by the symbolic C/G); read from a finished per-channel
    tensor it is a vector load."""
    n, c = x.shape[0], x.shape[1]
    mean, r = _group_stats(x.to(compute_dtype(x)).reshape(n, groups, c // groups, -1), variant, eps)
    shape = (n, 1, c, 1)
    return _per_view(mean, shape), _per_view(r, shape)


def _split_channels_last(x: Tensor, mode: str) -> bool:
    """Whether the kernels run in two compiled parts with per-channel statistics between them."""
    return mode == "compiled" and channels_last(x)


def _statistic_coefficient(dy_a: Tensor, gamma: Tensor, r: Tensor, groups: int, shape: Tuple[int, int, int, int]) -> Tensor:
    """coef per group (N, G, 1, 1): the statistic adds coef·(x − mean) to dx (r per group, or repeated
    per channel)."""
    n, c = dy_a.shape[0], dy_a.shape[1] * dy_a.shape[2]
    if r.shape[1] != groups:  # (N, 1, C, 1), C > 1 and groups > 1: one value per group
        r = r.reshape(n, groups, c // groups, 1)[:, :, :1]
    d_stat = -0.5 * r ** 3 * (dy_a * gamma).reshape(n, groups, c // groups, 1).sum(dim=2, keepdim=True)
    return d_stat * (2.0 / ((c // groups) * shape[3]))


def sample_forward(
    x: Tensor, variant: int, groups: int, v: Tensor, weight: Tensor, bias: Tensor, eps: float, apply_act: bool,
    mean: Optional[Tensor] = None, r: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Output (in x's dtype) and the statistics backward needs: group mean and r, (N, G, 1, 1), or the
    per-channel ones from :func:`sample_statistics` when given (channels-last input)."""
    n, c = x.shape[0], x.shape[1]
    dtype = compute_dtype(x)
    xd = x.to(dtype)
    if mean is None or r is None:
        mean, r = _group_stats(xd.reshape(n, groups, c // groups, -1), variant, eps)
    view_groups, shape = _layout(x, groups)
    x4 = xd.reshape(shape)
    a = x4 * torch.sigmoid(x4 * per_channel(v, view_groups, dtype)) if apply_act else x4
    scale = _per_view(r, shape) * per_channel(weight, view_groups, dtype)  # r·γ, small
    return affine_output(x, a, scale, per_channel(bias, view_groups, dtype)), mean, r


def sample_backward(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, mean: Tensor, r: Tensor,
    variant: int, groups: int, apply_act: bool, needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The closed-form gradients (dx, dv, dγ, dβ) from the input and the forward's statistics."""
    c = x.shape[1]
    dtype = compute_dtype(x)
    view_groups, shape = _layout(x, groups)
    x4 = x.to(dtype).reshape(shape)
    dy4 = dy.to(dtype).reshape(shape)
    gamma = per_channel(weight, view_groups, dtype)
    r_v, mean_v = _per_view(r, shape), _per_view(mean, shape)
    # Fresh full-size tensors are few and updated in place: on CPU each new one costs page faults.
    if apply_act:
        vx = x4 * per_channel(v, view_groups, dtype)
        s = torch.sigmoid(vx)
        a = x4 * s
    else:
        a = x4
    dy_a = channel_sums(dy4 * a, keep_batch=True)  # Σ_L dy·a per instance and channel
    d_weight = (dy_a * r_v).sum(0).reshape(c) if needs_weight else None
    d_bias = channel_sums(dy4, keep_batch=False).reshape(c) if needs_bias else None
    coef = _per_view(_statistic_coefficient(dy_a, gamma, r, groups, shape), shape)  # adds coef·(x − mean) to dx
    da = dy4 * (gamma * r_v)
    d_v = None
    if apply_act:
        one_minus_s = torch.rsub(s, 1.0)
        if needs_v:  # Σ da·x²·s(1−s) = Σ da·x·a·(1−s)
            d_v = channel_sums(a.mul_(one_minus_s).mul_(x4).mul_(da), keep_batch=False).reshape(c)
        # ∂a/∂x = s + v·x·s(1−s) = s·(1 + vx·(1−s))
        da.mul_(vx.mul_(one_minus_s).add_(1.0).mul_(s))
    # x − mean is formed first: coef·x − coef·mean would cancel two large products, which in float32
    # loses the gradient where a group holds one value (C = groups at 1×1).
    if torch.compiler.is_compiling():  # the last op in x's shape, so dx is laid out like x
        dx = torch.addcmul(da.reshape(x.shape), (x4 - mean_v).reshape(x.shape), per_input(coef, x4, x))
        return dx.to(x.dtype), d_v, d_weight, d_bias
    centred = torch.sub(x4, mean_v, out=a) if apply_act else x4 - mean_v  # a's storage is free again
    dx4 = da.addcmul_(centred, coef)
    return dx4.reshape(x.shape).to(x.dtype), d_v, d_weight, d_bias


def sample_backward_sums(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, r: Tensor, groups: int, apply_act: bool,
    needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Channels-last under Inductor, first part: the reductions, giving dv, dγ, dβ and the statistic's
    coefficient repeated per channel (N, 1, C, 1); r is per channel (:func:`sample_statistics`)."""
    c = x.shape[1]
    dtype = compute_dtype(x)
    _, shape = _layout(x, groups)
    x4, dy4 = x.to(dtype).reshape(shape), dy.to(dtype).reshape(shape)
    gamma = per_channel(weight, 1, dtype)
    if apply_act:
        s = torch.sigmoid(x4 * per_channel(v, 1, dtype))
        a = x4 * s
    else:
        a = x4
    dy_a = channel_sums(dy4 * a, keep_batch=True)
    d_weight = (dy_a * r).sum(0).reshape(c) if needs_weight else None
    d_bias = channel_sums(dy4, keep_batch=False).reshape(c) if needs_bias else None
    d_v = None
    if apply_act and needs_v:
        d_v = channel_sums(dy4 * (gamma * r) * a * (1.0 - s) * x4, keep_batch=False).reshape(c)
    return _per_view(_statistic_coefficient(dy_a, gamma, r, groups, shape), shape), d_v, d_weight, d_bias


def sample_backward_dx(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, mean: Tensor, r: Tensor, coef: Tensor, apply_act: bool
) -> Tensor:
    """Channels-last under Inductor, second part: dx, element-wise, from per-channel mean, r and coef."""
    dtype = compute_dtype(x)
    _, shape = _layout(x, 1)
    x4, dy4 = x.to(dtype).reshape(shape), dy.to(dtype).reshape(shape)
    da = dy4 * (per_channel(weight, 1, dtype) * r)
    if apply_act:
        vx = x4 * per_channel(v, 1, dtype)
        s = torch.sigmoid(vx)
        da = da * (s * (1.0 + vx * (1.0 - s)))
    dx = torch.addcmul(da.reshape(x.shape), (x4 - mean).reshape(x.shape), per_input(coef, x4, x))
    return dx.to(x.dtype)


class EvoNormSampleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, variant: int, groups: int, eps: float, apply_act: bool) -> Tensor:  # type: ignore[override]
        y, mean, r = _forward(x, variant, groups, v, weight, bias, eps, apply_act)
        ctx.save_for_backward(x, v, weight, mean, r)
        ctx.config = (variant, groups, apply_act)
        ctx.mode = current_mode()  # backward runs the kernels its forward ran
        ctx.bias, ctx.eps = bias, eps  # for a double backward only
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, v, weight, mean, r = ctx.saved_tensors
        variant, groups, apply_act = ctx.config
        if torch.is_grad_enabled():
            bias = ctx.bias
            grads = differentiable_backward(
                lambda: sample_forward(x, variant, groups, v, weight, bias, ctx.eps, apply_act)[0],
                (x, v, weight, bias), ctx.needs_input_grad[:4], dy,
            )
            return (*grads, None, None, None, None)
        if _split_channels_last(x, ctx.mode):
            coef, *param_grads = run_kernel(sample_backward_sums, ctx.mode, dy, x, v, weight, r, groups, apply_act, *ctx.needs_input_grad[1:4])
            dx = run_kernel(sample_backward_dx, ctx.mode, dy, x, v, weight, mean, r, coef, apply_act)
            return (dx, *param_grads, None, None, None, None)
        grads = run_kernel(sample_backward, ctx.mode, dy, x, v, weight, mean, r, variant, groups, apply_act, *ctx.needs_input_grad[1:4])
        return (*grads, None, None, None, None)


def _forward(x: Tensor, variant: int, groups: int, v: Tensor, weight: Tensor, bias: Tensor, eps: float, apply_act: bool) -> Tuple[Tensor, Tensor, Tensor]:
    mode = current_mode()
    if _split_channels_last(x, mode):
        mean, r = run_kernel(sample_statistics, mode, x, variant, groups, eps)
        return run_kernel(sample_forward, mode, x, variant, groups, v, weight, bias, eps, apply_act, mean, r)
    return run_kernel(sample_forward, mode, x, variant, groups, v, weight, bias, eps, apply_act)


def evonorm_sample_fused(
    x: Tensor, variant: int, groups: int, v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor], eps: float, apply_act: bool
) -> Tensor:
    """S0/S1/S2 with the lean backward; ``None`` parameters act as 1, 1, 0 and receive no gradient."""
    v_t, w_t, b_t, record = default_parameters(x, v, weight, bias)
    if record:
        return EvoNormSampleFunction.apply(kernel_layout(x), v_t, w_t, b_t, variant, groups, eps, apply_act)
    return _forward(kernel_layout(x), variant, groups, v_t, w_t, b_t, eps, apply_act)[0]
