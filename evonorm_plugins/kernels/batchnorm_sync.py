"""Synchronized BatchNorm on any device, for ``BatchNormReLU``/``SiLU(sync_stats=True)``: what
``nn.SyncBatchNorm`` computes (which runs on GPUs only), with its two collectives.

On (N, C, L) with the group's mean μ, inverse std r = 1/√(σ² + ε) and count n, x̂ = (x − μ)·r and
y = x̂·γ + β; forward gathers (count, mean, M2) once (:func:`~.distributed.gather_moments`), and
backward all-reduces the per-channel sums Σdy and Σdy·x̂ once:

    dx = γ·r·(dy − Σ_group dy / n − x̂·Σ_group(dy·x̂) / n),   dγ = Σ dy·x̂,   dβ = Σ dy (this process's sums)

Only the input and per-channel statistics are saved. A double backward recomputes the forward with
differentiable collectives (:func:`synchronized_batch_norm_reference`, the specification).
"""
from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import channel_moments
from .common import differentiable_backward
from .distributed import all_reduce_, gather_moments, synchronized_moments


def batch_norm_statistics(x3: Tensor, process_group: Optional[Any]) -> Tuple[Tensor, Tensor, int]:
    """Mean and biased variance (1, C, 1) of the group's concatenated batch, and its count; no autograd."""
    c = x3.shape[1]
    with torch.no_grad():
        if x3.numel() > 0:
            mean, var = (t.view(1, c, 1) for t in channel_moments(x3.unsqueeze(1))[:2])
        else:
            mean = var = x3.new_zeros(1, c, 1)
        return gather_moments(mean, var, x3.numel() // c, process_group)


def _affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    if weight is not None:
        y = y * weight.to(y.dtype).view(1, -1, 1)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1)
    return y


def synchronized_batch_norm_reference(
    x3: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float, process_group: Optional[Any]
) -> Tensor:
    """The synchronized BatchNorm of ``x3`` (N, C, L) in differentiable ops and collectives."""
    mean, var, _ = synchronized_moments(x3, process_group)
    return _affine((x3 - mean) * torch.rsqrt(var + eps), weight, bias)


class SyncBatchNormFunction(torch.autograd.Function):
    """x̂·γ + β for given global statistics; the closed-form backward with its one all-reduce."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x3: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor, count: int,
        eps: float, process_group: Optional[Any],
    ) -> Tensor:
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x3, weight, bias, mean, invstd)
        ctx.config = (count, eps, process_group)
        # BatchNorm's inference kernel with the group's statistics: one fused pass over x.
        weight_, bias_ = (None if t is None else t.to(x3.dtype) for t in (weight, bias))
        return F.batch_norm(x3, mean.view(-1), var.view(-1), weight_, bias_, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        x3, weight, bias, mean, invstd = ctx.saved_tensors
        count, eps, process_group = ctx.config
        unused = (None,) * 5
        if torch.is_grad_enabled():
            grads = differentiable_backward(
                lambda: synchronized_batch_norm_reference(x3, weight, bias, eps, process_group),
                (x3, weight, bias), ctx.needs_input_grad[:3], dy,
            )
            return (*grads, *unused)
        c = x3.shape[1]
        x_hat = torch.addcmul(-mean * invstd, x3, invstd)
        sums = torch.cat([dy.sum(dim=[0, 2]), (dy * x_hat).sum(dim=[0, 2])])
        d_weight = sums[c:].clone() if weight is not None and ctx.needs_input_grad[1] else None
        d_bias = sums[:c].clone() if bias is not None and ctx.needs_input_grad[2] else None
        all_reduce_(sums, process_group)
        mean_dy, mean_dy_x_hat = (sums / max(count, 1)).view(2, 1, c, 1).unbind(0)
        scale = invstd if weight is None else invstd * weight.to(invstd.dtype).view(1, c, 1)
        # In place on x̂: on CPU each fresh full-size tensor costs page faults.
        dx = x_hat.mul_(-mean_dy_x_hat * scale).addcmul_(dy, scale).sub_(mean_dy * scale)
        return (dx, d_weight, d_bias, *unused)


def synchronized_batch_norm(
    x3: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], mean: Tensor, var: Tensor, count: int, eps: float,
    process_group: Optional[Any],
) -> Tensor:
    """BatchNorm of ``x3`` (N, C, L) with the group's statistics (from :func:`batch_norm_statistics`)."""
    return SyncBatchNormFunction.apply(x3, weight, bias, mean, var, count, eps, process_group)
