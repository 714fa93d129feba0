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
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .common import affine_output, channel_sums, compute_dtype, differentiable_backward, per_channel


def _batch_moments(x4: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over (N, L), two-pass (torch.var is slow on CPU)."""
    mean = torch.mean(x4, dim=(0, 3), keepdim=True)
    centred = x4 - mean
    return mean, torch.mean(centred * centred, dim=(0, 3), keepdim=True)


def _instance_stats(x4: Tensor, variant: int, eps: float) -> Tuple[Tensor, Tensor]:
    """(μ_L, si) for B0 or (0, ri) for B1/B2, each (N, 1, C, 1)."""
    n, _, c, length = x4.shape
    if variant == 0:
        _, mean, rstd = torch.native_group_norm(x4.reshape(n, c, length), None, None, n, c, length, c, eps)
        return mean.view(n, 1, c, 1), (1.0 / rstd).view(n, 1, c, 1)
    second = torch.mean(x4 * x4, dim=3, keepdim=True)
    return torch.zeros_like(second), torch.sqrt(second + eps)


def _right(x4: Tensor, variant: int, vv: Tensor, inst: Tensor) -> Tensor:
    if variant == 0:
        return torch.addcmul(inst, x4, vv)
    if variant == 1:
        return (x4 + 1.0) * inst
    return inst - x4


def batch_forward(
    x: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], eps: float, apply_act: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Output (x's dtype), batch variance per channel, and the statistics backward needs.

    ``left_var`` is the running variance to use (eval), or ``None`` to use the batch's (training).
    """
    n, c = x.shape[0], x.shape[1]
    dtype = compute_dtype(x)
    x4 = x.to(dtype).reshape(n, 1, c, -1)
    if left_var is None:
        batch_mean, batch_var = _batch_moments(x4)
    else:
        batch_var = left_var.to(dtype).view(1, 1, c, 1)
        batch_mean = torch.zeros_like(batch_var)
    left = torch.sqrt(batch_var + eps)
    if apply_act:
        inst_mean, inst = _instance_stats(x4, variant, eps)
        d = torch.maximum(left, _right(x4, variant, per_channel(v, 1, dtype), inst))
    else:
        inst_mean = inst = torch.zeros((n, 1, c, 1), dtype=dtype, device=x.device)
        d = left
    y = affine_output(x, x4 / d, per_channel(weight, 1, dtype), per_channel(bias, 1, dtype))
    return y, batch_var.reshape(c), batch_mean, left, inst_mean, inst


class EvoNormBatchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], variant: int, eps: float, apply_act: bool):  # type: ignore[override]
        y, batch_var, batch_mean, left, inst_mean, inst = batch_forward(x, variant, v, weight, bias, left_var, eps, apply_act)
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
        needs_v, needs_weight, needs_bias = ctx.needs_input_grad[1:4]
        n, c = x.shape[0], x.shape[1]
        dtype = compute_dtype(x)
        x4 = x.to(dtype).reshape(n, 1, c, -1)
        length = x4.shape[3]
        dy4 = dy.to(dtype).reshape(x4.shape)
        gamma = per_channel(weight, 1, dtype)
        vv = per_channel(v, 1, dtype)

        if apply_act:
            right = _right(x4, variant, vv, inst)
            wins = right > left
            d = torch.where(wins, right, left)
        else:
            wins = None
            d = left
        out = x4 / d  # y = out·γ + β
        d_weight = channel_sums(dy4 * out, keep_batch=False).reshape(c) if needs_weight else None
        d_bias = channel_sums(dy4, keep_batch=False).reshape(c) if needs_bias else None
        g = dy4 * gamma / d
        dd = -g * out  # ∂L/∂d
        dx4 = g
        coef = torch.zeros_like(inst)  # dx gets coef·x + offset from the statistics
        offset = torch.zeros_like(inst)
        d_v = None
        if apply_act:
            d_right = torch.where(wins, dd, torch.zeros_like(dd))
            d_left_elems = dd - d_right
            if variant == 0:
                dx4 = torch.addcmul(dx4, d_right, vv)
                d_inst = channel_sums(d_right, keep_batch=True)
                if needs_v:
                    d_v = channel_sums(d_right * x4, keep_batch=False).reshape(c)
                coef = d_inst / (length * inst)
                offset = -coef * inst_mean
            elif variant == 1:
                dx4 = torch.addcmul(dx4, d_right, inst)
                coef = channel_sums(d_right * (x4 + 1.0), keep_batch=True) / (length * inst)
            else:
                dx4 = dx4 - d_right
                coef = channel_sums(d_right, keep_batch=True) / (length * inst)
        else:
            d_left_elems = dd
        if batch_statistics:
            d_left = channel_sums(d_left_elems, keep_batch=False)
            left_coef = d_left / (n * length * left)
            coef = coef + left_coef
            offset = offset - left_coef * batch_mean
        dx4 = torch.addcmul(dx4 + offset, x4, coef)
        return dx4.reshape(x.shape).to(x.dtype), d_v, d_weight, d_bias, None, None, None, None


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
    c = x.shape[1]
    options = dict(dtype=weight.dtype if weight is not None else torch.float32, device=x.device)
    v_t = v if v is not None else torch.ones(c, **options)
    w_t = weight if weight is not None else torch.ones(c, **options)
    b_t = bias if bias is not None else torch.zeros(c, **options)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, v_t, w_t, b_t)):
        return EvoNormBatchFunction.apply(x.contiguous(), v_t, w_t, b_t, left_var, variant, eps, apply_act)
    y, batch_var = batch_forward(x.contiguous(), variant, v_t, w_t, b_t, left_var, eps, apply_act)[:2]
    return y, batch_var
