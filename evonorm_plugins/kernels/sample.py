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

The kernels take and return 4-D views made outside them (:func:`_view`), so that under
``torch.compile`` every size is a symbol of its own: computed inside, C/G is a floor division of two
symbols, and Inductor, unable to prove the loops of a grouped and a flat view equal, split the backward
into five passes over the input instead of two.

These functions are the spec, and the kernels wherever the hand-written CPU ones (:mod:`.native`,
``csrc/sample_cpu.cpp``) do not run: on GPU, without a C++ toolchain, in the ``"eager"`` mode.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import native
from .common import (
    as_base,
    channel_sums,
    channels_last,
    compute_dtype,
    current_mode,
    default_parameters,
    differentiable_backward,
    group_moments,
    kernel_layout,
    run_kernel,
)


def _view(t: Tensor, groups: int) -> Tensor:
    """The view the kernels run on: grouped (N, G, C/G, L) for a contiguous input, per channel
    (N, 1, C, L) for a channels-last one, whose contiguous axis is C (the grouped view would leave loops
    over C/G channels, e.g. 4, to vectorize). A (C,) parameter becomes (1, G, C/G, 1) or (1, 1, C, 1)."""
    if t.dim() == 1:
        return t.view(1, groups, -1, 1)
    n, c = t.shape[0], t.shape[1]
    length = math.prod(t.shape[2:])
    return t.view(n, 1, c, length) if channels_last(t) else t.view(n, groups, c // groups, length)


def _group_stats(x4: Tensor, variant: int, eps: float) -> Tuple[Tensor, Tensor]:
    """(mean, r) per (N, G, 1, 1) of a grouped view: r = 1/√(var + ε) (S0, S1), or mean 0 and
    r = 1/√(μ(x²) + ε) (S2), μ(x²) being var + mean²: the statistic's gradient is then 2(x − mean)/M in
    both cases."""
    mean, var = group_moments(x4)
    if variant == 2:
        return torch.zeros_like(mean), torch.rsqrt(var + mean * mean + eps)
    return mean, torch.rsqrt(var + eps)


def _repeat_per_channel(stat: Tensor, channels: int) -> Tensor:
    """A per-group statistic (N, G, 1, 1) repeated per channel, (N, 1, C, 1)."""
    n, g = stat.shape[0], stat.shape[1]
    return stat.expand(n, g, channels // g, 1).reshape(n, 1, channels, 1)


def sample_statistics(x4: Tensor, variant: int, groups: int, eps: float) -> Tuple[Tensor, Tensor]:
    """Group mean and r repeated per channel, (N, 1, C, 1), of a per-channel view (channels-last input):
    a kernel of its own. Fused into the element-wise loops, a per-group value is a gather per vector
    lane (the group of a channel is a division by the symbolic C/G); read from a finished per-channel
    tensor it is a vector load."""
    n, _, c, length = x4.shape
    mean, r = _group_stats(x4.to(compute_dtype(x4)).reshape(n, groups, c // groups, length), variant, eps)
    return _repeat_per_channel(mean, c), _repeat_per_channel(r, c)


def _statistic_coefficient(dy_a: Tensor, gamma: Tensor, r: Tensor, length: int, groups: Optional[int]) -> Tensor:
    """coef such that the statistic adds coef·(x − mean) to dx: per group (N, G, 1, 1) on a grouped
    view (``groups`` None), repeated per channel (N, 1, C, 1) on a per-channel view of ``groups``
    groups."""
    t = dy_a * gamma  # (N, G', C', 1)
    if groups is None:
        d_r, count = t.sum(dim=2, keepdim=True), t.shape[2] * length
    else:
        n, c = t.shape[0], t.shape[2]
        d_r = _repeat_per_channel(t.reshape(n, groups, c // groups, 1).sum(dim=2, keepdim=True), c)
        count = c // groups * length
    return -0.5 * r ** 3 * d_r * (2.0 / count)


def sample_forward(
    x4: Tensor, v4: Tensor, weight4: Tensor, bias4: Tensor, variant: int, eps: float, apply_act: bool,
    mean: Optional[Tensor] = None, r: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Output (the view's shape and layout, in x's dtype) and the statistics backward needs: computed
    here per group of a grouped view, or given per channel (:func:`sample_statistics`)."""
    dtype = compute_dtype(x4)
    xd = x4.to(dtype)
    if mean is None or r is None:
        mean, r = _group_stats(xd, variant, eps)
    a = xd * torch.sigmoid(xd * v4.to(dtype)) if apply_act else xd
    return torch.addcmul(bias4.to(dtype), a, r * weight4.to(dtype)).to(x4.dtype), mean, r


def sample_backward_sums(
    dy4: Tensor, x4: Tensor, v4: Tensor, weight4: Tensor, r: Tensor, groups: Optional[int], apply_act: bool,
    needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Compiled backward, first part: one pass of reductions over x and dy, giving the statistic's
    coefficient (:func:`_statistic_coefficient`), dv, dγ and dβ in the view's shapes."""
    dtype = compute_dtype(x4)
    x4, dy4 = x4.to(dtype), dy4.to(dtype)
    gamma = weight4.to(dtype)
    s = torch.sigmoid(x4 * v4.to(dtype)) if apply_act else None
    a = x4 * s if s is not None else x4
    dy_a = channel_sums(dy4 * a, keep_batch=True)  # Σ_L dy·a per instance and channel
    d_weight = (dy_a * r).sum(0, keepdim=True) if needs_weight else None
    d_bias = channel_sums(dy4, keep_batch=False) if needs_bias else None
    d_v = None
    if s is not None and needs_v:  # Σ da·x²·s(1−s), da = dy·γ·r
        d_v = (channel_sums(dy4 * a * (1.0 - s) * x4, keep_batch=True) * (gamma * r)).sum(0, keepdim=True)
    return _statistic_coefficient(dy_a, gamma, r, x4.shape[3], groups), d_v, d_weight, d_bias


def sample_backward_dx(
    dy4: Tensor, x4: Tensor, v4: Tensor, weight4: Tensor, mean: Tensor, r: Tensor, coef: Tensor, apply_act: bool
) -> Tensor:
    """Compiled backward, second part: dx, element-wise, in the view's shape and x's dtype. σ(v·x) is
    recomputed rather than kept from the first part: a full-size buffer costs more than the exp."""
    dtype = compute_dtype(x4)
    xd, dy4 = x4.to(dtype), dy4.to(dtype)
    da = dy4 * (weight4.to(dtype) * r)
    if apply_act:
        vx = xd * v4.to(dtype)
        s = torch.sigmoid(vx)
        da = da * (s * (1.0 + vx * (1.0 - s)))  # ∂a/∂x = s + v·x·s(1−s)
    # x − mean is formed first: coef·x − coef·mean would cancel two large products, which in float32
    # loses the gradient where a group holds one value (C = groups at 1×1).
    return (da + (xd - mean) * coef).to(x4.dtype)


def sample_backward(
    dy4: Tensor, x4: Tensor, v4: Tensor, weight4: Tensor, mean: Tensor, r: Tensor, groups: Optional[int],
    apply_act: bool, needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The eager backward: the same gradients as the two compiled parts, op by op, with few fresh
    full-size tensors (updated in place: on CPU each new one costs page faults) and σ(v·x) once."""
    dtype = compute_dtype(x4)
    x4, dy4 = x4.to(dtype), dy4.to(dtype)
    gamma = weight4.to(dtype)
    if apply_act:
        vx = x4 * v4.to(dtype)
        s = torch.sigmoid(vx)
        a = x4 * s
    else:
        a = x4
    dy_a = channel_sums(dy4 * a, keep_batch=True)
    d_weight = (dy_a * r).sum(0, keepdim=True) if needs_weight else None
    d_bias = channel_sums(dy4, keep_batch=False) if needs_bias else None
    coef = _statistic_coefficient(dy_a, gamma, r, x4.shape[3], groups)
    da = dy4 * (gamma * r)
    d_v = None
    if apply_act:
        one_minus_s = torch.rsub(s, 1.0)
        if needs_v:  # Σ da·x²·s(1−s) = Σ da·x·a·(1−s)
            d_v = channel_sums(a.mul_(one_minus_s).mul_(x4).mul_(da), keep_batch=False)
        da.mul_(vx.mul_(one_minus_s).add_(1.0).mul_(s))  # ∂a/∂x = s·(1 + vx·(1−s))
    centred = torch.sub(x4, mean, out=a) if apply_act else x4 - mean  # a's storage is free again
    return da.addcmul_(centred, coef), d_v, d_weight, d_bias


class EvoNormSampleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, variant: int, groups: int, eps: float, apply_act: bool) -> Tensor:  # type: ignore[override]
        y, mean, r = _forward(x, variant, groups, v, weight, bias, eps, apply_act)
        ctx.save_for_backward(x, v, weight, mean, r)
        ctx.config = (variant, groups, apply_act)
        ctx.mode = current_mode()  # backward runs the kernels its forward ran
        ctx.native = native.runs(x, ctx.mode)
        ctx.bias, ctx.eps = bias, eps  # for a double backward only
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):  # type: ignore[override]
        x, v, weight, mean, r = ctx.saved_tensors
        variant, groups, apply_act = ctx.config
        if torch.is_grad_enabled():
            bias = ctx.bias
            grads = differentiable_backward(
                lambda: _forward(x, variant, groups, v, weight, bias, ctx.eps, apply_act, mode="eager")[0],
                (x, v, weight, bias), ctx.needs_input_grad[:4], dy,
            )
            return (*grads, None, None, None, None)
        needs = ctx.needs_input_grad[1:4]
        if ctx.native:
            dx, *param_grads = native.sample_backward(dy, x, v, weight, mean, r, groups, apply_act)
            param_grads = [g if needed else None for g, needed in zip(param_grads, needs)]
            return (dx, *param_grads, None, None, None, None)
        dy = dy if dy.stride() == x.stride() else torch.empty_like(x, dtype=dy.dtype).copy_(dy)  # x's layout
        dy4, x4 = _view(dy, groups), _view(x, groups)
        v4, weight4 = _view(v, x4.shape[1]), _view(weight, x4.shape[1])
        stat_groups = groups if channels_last(x) else None
        if ctx.mode == "compiled":
            coef, *param_grads = run_kernel(sample_backward_sums, ctx.mode, dy4, x4, v4, weight4, r, stat_groups, apply_act, *needs)
            dx = run_kernel(sample_backward_dx, ctx.mode, dy4, x4, v4, weight4, mean, r, coef, apply_act)
        else:
            dx, *param_grads = sample_backward(dy4, x4, v4, weight4, mean, r, stat_groups, apply_act, *needs)
        param_grads = [g.reshape(x.shape[1]) if g is not None else None for g in param_grads]
        return (dx.reshape(x.shape).to(x.dtype), *param_grads, None, None, None, None)


def _forward(
    x: Tensor, variant: int, groups: int, v: Tensor, weight: Tensor, bias: Tensor, eps: float, apply_act: bool,
    mode: Optional[str] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Output (a base tensor of x's shape and layout: hosts such as torchvision's ResNet add the residual
    to it in place, which autograd forbids on a view returned by a custom Function) and the statistics."""
    mode = mode or current_mode()
    if native.runs(x, mode):
        return native.sample_forward(x, v, weight, bias, groups, variant, eps, apply_act)
    x4 = _view(x, groups)
    params = tuple(_view(p, x4.shape[1]) for p in (v, weight, bias))
    stats = run_kernel(sample_statistics, mode, x4, variant, groups, eps) if channels_last(x) else ()
    y4, mean, r = run_kernel(sample_forward, mode, x4, *params, variant, eps, apply_act, *stats)
    return as_base(y4, x.shape), mean, r


def evonorm_sample_fused(
    x: Tensor, variant: int, groups: int, v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor], eps: float, apply_act: bool
) -> Tensor:
    """S0/S1/S2 with the lean backward; ``None`` parameters act as 1, 1, 0 and receive no gradient."""
    v_t, w_t, b_t, record = default_parameters(x, v, weight, bias)
    if record:
        return EvoNormSampleFunction.apply(kernel_layout(x), v_t, w_t, b_t, variant, groups, eps, apply_act)
    return _forward(kernel_layout(x), variant, groups, v_t, w_t, b_t, eps, apply_act)[0]
