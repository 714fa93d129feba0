"""Memory-lean B0/B1/B2: an autograd Function that saves only the input and per-channel / per-instance
statistics, recomputing the element-wise rest in backward. On the view (N, 1, C, L), with
left = √(s²_{N,L} + ε) per channel (the running variance in eval), per instance (N, C):

    B0: right = v·x + si,       si = √(s²_L(x) + ε)
    B1: right = (x + 1)·ri,     ri = √(μ_L(x²) + ε)
    B2: right = ri − x
    d = max(left, right),  y = x/d·γ + β   (apply_act=False: d = left)

    g = dy·γ/d,  dd = −g·x/d,  m = [right > left]
    dx = g + m·dd·∂right/∂x + Σ_L(m·dd)·∂(si or ri)/∂x + Σ_{N,L}((1−m)·dd)·∂left/∂x

with ∂si/∂x = (x − μ_L)/(L·si), ∂ri/∂x = x/(L·ri), ∂left/∂x = (x − μ_{N,L})/(N·L·left) in training
(0 in eval). Where left and right tie, the gradient goes to ``left`` (torch.maximum splits it; ties
have measure zero for real-valued inputs).

These functions are the spec, and the kernels wherever the hand-written CPU ones (:mod:`.native`,
``csrc/batch_cpu.cpp``) do not run: on GPU, without a C++ toolchain, in the ``"eager"`` mode.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from . import native
from .common import (
    affine_output,
    channel_sums,
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


def channel_moments(x4: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel batch mean and biased variance (1, 1, C, 1) and per-instance mean and variance
    (N, 1, C, 1) of the (N, 1, C, L) view, from one moments pass: the batch variance is the mean
    instance variance plus the variance of the instance means (torch.var over (N, L) is several times
    slower on CPU)."""
    n, _, c, length = x4.shape
    inst_mean, inst_var = group_moments(x4.reshape(n, c, 1, length))
    inst_mean, inst_var = inst_mean.view(n, 1, c, 1), inst_var.view(n, 1, c, 1)
    batch_mean = inst_mean.mean(dim=0, keepdim=True)
    spread = inst_mean - batch_mean
    batch_var = inst_var.mean(dim=0, keepdim=True) + (spread * spread).mean(dim=0, keepdim=True)
    return batch_mean, batch_var, inst_mean, inst_var


def forward_statistics(x4: Tensor, variant: int, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-channel batch mean and variance (1, 1, C, 1), and per instance (N, 1, C, 1) the mean and
    ``si`` = √(s²_L + ε) (B0) or mean 0 and ``ri`` = √(μ_L(x²) + ε) (B1, B2)."""
    batch_mean, batch_var, inst_mean, inst_var = channel_moments(x4)
    if variant == 0:
        return batch_mean, batch_var, inst_mean, torch.sqrt(inst_var + eps)
    return batch_mean, batch_var, torch.zeros_like(inst_mean), torch.sqrt(inst_var + inst_mean * inst_mean + eps)


def _right(x4: Tensor, variant: int, vv: Tensor, inst: Tensor) -> Tensor:
    if variant == 0:
        return torch.addcmul(inst, x4, vv)
    if variant == 1:
        return (x4 + 1.0) * inst
    return inst - x4


def grouped(x: Tensor) -> Tensor:
    """x as the (N, 1, C, L) view the kernels work on, in the compute dtype."""
    return x.to(compute_dtype(x)).flatten(2).unsqueeze(1)


def normalized_output(
    x: Tensor, x4: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, batch_var: Tensor, inst: Tensor,
    eps: float, apply_act: bool,
) -> Tuple[Tensor, Tensor]:
    """The output (x's dtype) for the per-channel variance ``batch_var`` (1, 1, C, 1), and ``left``."""
    dtype = x4.dtype
    left = torch.sqrt(batch_var + eps)
    d = torch.maximum(left, _right(x4, variant, per_channel(v, 1, dtype), inst)) if apply_act else left
    return affine_output(x, x4 / d, per_channel(weight, 1, dtype), per_channel(bias, 1, dtype)), left


def batch_forward(
    x: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], eps: float, apply_act: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Output (x's dtype), batch variance per channel, and the statistics backward needs.

    ``left_var`` is the running variance to use (eval), or ``None`` to use the batch's (training).
    """
    c = x.shape[1]
    x4 = grouped(x)
    batch_mean, batch_var, inst_mean, inst = forward_statistics(x4, variant, eps)
    if left_var is not None:  # eval: the running variance replaces the batch's
        batch_var = left_var.to(x4.dtype).view(1, 1, c, 1)
        batch_mean = torch.zeros_like(batch_var)
    y, left = normalized_output(x, x4, variant, v, weight, bias, batch_var, inst, eps, apply_act)
    return y, batch_var.reshape(c), batch_mean, left, inst_mean, inst


def backward_reductions(
    dy: Tensor, x4: Tensor, v: Tensor, weight: Tensor, left: Tensor, inst: Tensor, variant: int, apply_act: bool,
    needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The backward's full-size part and its reductions: ``g`` (∂L/∂x at fixed statistics, with the
    right term's direct part), a scratch tensor of x4's size, the instance statistic's coefficient
    (N, 1, C, 1), the per-instance sums of −∂L/∂left (N, 1, C, 1), and dv, dγ, dβ (local sums)."""
    c = x4.shape[2]
    length = x4.shape[3]
    dtype = x4.dtype
    dy4 = dy.to(dtype).reshape(x4.shape)
    vv = per_channel(v, 1, dtype)
    # Fresh full-size tensors are few and updated in place: on CPU each new one costs page faults.
    if apply_act:
        d = _right(x4, variant, vv, inst)
        wins = d > left
        inv_d = d.clamp_min_(left).reciprocal_()
    else:
        wins = None
        inv_d = left.reciprocal()
    out = x4 * inv_d  # y = out·γ + β
    d_weight = channel_sums(dy4 * out, keep_batch=False).reshape(c) if needs_weight else None
    d_bias = channel_sums(dy4, keep_batch=False).reshape(c) if needs_bias else None
    g = (dy4 * per_channel(weight, 1, dtype)).mul_(inv_d)  # ∂L/∂x through x/d at fixed d
    neg_dd = out.mul_(g)  # −∂L/∂d
    total = channel_sums(neg_dd, keep_batch=True)
    coef = torch.zeros_like(inst)  # the instance statistic adds coef·(x − μ_L) (B0) or coef·x (B1, B2) to dx
    d_v = None
    if apply_act:
        neg_dright = neg_dd.mul_(wins)  # −∂L/∂right where right is the max
        right_sum = channel_sums(neg_dright, keep_batch=True)
        total = total - right_sum  # what remains goes to left
        if variant == 0:
            if needs_v:
                d_v = -channel_sums(neg_dright * x4, keep_batch=False).reshape(c)
            g.addcmul_(neg_dright, vv, value=-1.0)
            coef = -right_sum / (length * inst)
        elif variant == 1:
            g.addcmul_(neg_dright, inst, value=-1.0)
            coef = -(channel_sums(neg_dright * x4, keep_batch=True) + right_sum) / (length * inst)
        else:
            g.add_(neg_dright)
            coef = -right_sum / (length * inst)
    return g, neg_dd, coef, total, d_v, d_weight, d_bias


def input_gradient(
    x: Tensor, x4: Tensor, g: Tensor, scratch: Optional[Tensor], coef: Tensor, left_coef: Optional[Tensor],
    batch_mean: Tensor, inst_mean: Tensor, variant: int,
) -> Tensor:
    """dx = g + coef·(x − μ_inst) + left_coef·(x − μ_batch) (μ_inst = 0 for B1, B2), where
    ``left_coef`` = −Σ_{N,L}(−∂L/∂left) / (N·L·left) is ``None`` when ``left`` is a constant (eval).
    ``scratch`` (a free tensor of x4's size, or ``None``) receives the centred x."""
    # Written as g + (coef + left_coef)·(x − centre) + offset with one centre per instance and a small
    # offset. The centred x − centre is formed first: coef·x − coef·μ would cancel two large products,
    # which in float32 loses the gradient where a statistic covers one value (N·H·W = 1 or H·W = 1).
    centre = inst_mean if variant == 0 else batch_mean  # batch_mean is 0 in eval
    if left_coef is not None:
        offset = left_coef * (inst_mean - batch_mean) if variant == 0 else coef * batch_mean
        coef = coef + left_coef
    else:
        offset = None
    if torch.compiler.is_compiling():  # the last op in x's shape, so dx is laid out like x
        dx = torch.addcmul(g.reshape(x.shape), (x4 - centre).reshape(x.shape), per_input(coef, x4, x))
        if offset is not None:
            dx = dx + per_input(offset, x4, x)
        return dx.to(x.dtype)
    centred = torch.sub(x4, centre) if scratch is None else torch.sub(x4, centre, out=scratch)
    dx4 = g.addcmul_(centred, coef)
    if offset is not None:
        dx4 = dx4.add_(offset)
    return dx4.reshape(x.shape).to(x.dtype)


def batch_backward(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, batch_mean: Tensor, left: Tensor, inst_mean: Tensor, inst: Tensor,
    variant: int, apply_act: bool, batch_statistics: bool, needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """The closed-form gradients (dx, dv, dγ, dβ) from the input and the forward's statistics."""
    x4 = grouped(x)
    g, scratch, coef, total, d_v, d_weight, d_bias = backward_reductions(
        dy, x4, v, weight, left, inst, variant, apply_act, needs_v, needs_weight, needs_bias
    )
    left_coef = -total.sum(dim=0, keepdim=True) / (x4.shape[0] * x4.shape[3] * left) if batch_statistics else None
    dx = input_gradient(x, x4, g, scratch, coef, left_coef, batch_mean, inst_mean, variant)
    return dx, d_v, d_weight, d_bias


def _forward(
    x: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], eps: float, apply_act: bool, mode: str
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`batch_forward` in ``mode``'s kernels: the hand-written CPU ones (:mod:`.native`) or these."""
    if native.runs(x, mode):
        return native.batch_forward(x, v, weight, bias, left_var, variant, eps, apply_act)
    return run_kernel(batch_forward, mode, x, variant, v, weight, bias, left_var, eps, apply_act)


class EvoNormBatchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], variant: int, eps: float, apply_act: bool):  # type: ignore[override]
        ctx.mode = current_mode()  # backward runs the kernels its forward ran
        ctx.native = native.runs(x, ctx.mode)
        y, batch_var, batch_mean, left, inst_mean, inst = _forward(x, variant, v, weight, bias, left_var, eps, apply_act, ctx.mode)
        ctx.save_for_backward(x, v, weight, batch_mean, left, inst_mean, inst)
        ctx.config = (variant, apply_act, left_var is None)
        ctx.bias, ctx.left_var, ctx.eps = bias, left_var, eps  # for a double backward only
        ctx.mark_non_differentiable(batch_var)
        return y, batch_var

    @staticmethod
    def backward(ctx, dy: Tensor, _unused: Optional[Tensor]):  # type: ignore[override]
        x, v, weight, batch_mean, left, inst_mean, inst = ctx.saved_tensors
        variant, apply_act, batch_statistics = ctx.config
        if torch.is_grad_enabled():
            bias, left_var = ctx.bias, ctx.left_var
            grads = differentiable_backward(
                lambda: batch_forward(x, variant, v, weight, bias, left_var, ctx.eps, apply_act)[0],
                (x, v, weight, bias), ctx.needs_input_grad[:4], dy,
            )
            return (*grads, None, None, None, None)
        if ctx.native:
            grads = native.batch_backward(dy, x, v, weight, batch_mean, left, inst_mean, inst, variant, apply_act, batch_statistics)
            needs = ctx.needs_input_grad[1:4]
            return (grads[0], *(g if needed else None for g, needed in zip(grads[1:], needs)), None, None, None, None)
        grads = run_kernel(
            batch_backward, ctx.mode, dy, x, v, weight, batch_mean, left, inst_mean, inst, variant, apply_act, batch_statistics, *ctx.needs_input_grad[1:4]
        )
        return (*grads, None, None, None, None)


def evonorm_batch_fused(
    x: Tensor,
    variant: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    left_var: Optional[Tensor],
    eps: float,
    apply_act: bool,
) -> Tuple[Tensor, Tensor]:
    """B0/B1/B2 with the lean backward: (output, batch variance). ``None`` parameters act as 1, 1, 0."""
    v_t, w_t, b_t, record = default_parameters(x, v, weight, bias)
    if record:
        return EvoNormBatchFunction.apply(kernel_layout(x), v_t, w_t, b_t, left_var, variant, eps, apply_act)
    y, batch_var = _forward(kernel_layout(x), variant, v_t, w_t, b_t, left_var, eps, apply_act, current_mode())[:2]
    return y, batch_var
