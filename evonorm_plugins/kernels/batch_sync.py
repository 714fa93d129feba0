"""Memory-lean B0/B1/B2 whose batch statistics cover the concatenated batch of a process group.

The kernels of :mod:`.batch`, split where a collective must come in between (each part runs in the
kernel mode like the unsynchronized kernels, compiled or eager):

* forward: local moments → :func:`~.distributed.gather_moments` (one all-gather of count, mean and M2
  per process) → the output from the global variance;
* backward: the full-size part and its per-channel sums → one all-reduce of Σ(−∂L/∂left), the only
  reduction that spans the batch (dv, dγ, dβ are per-process parameter gradients, which DDP reduces) →
  dx with ∂left/∂x = (x − μ_global)/(n_global·left).

Each process's dx is thus the gradient of the sum of every process's loss, as with ``nn.SyncBatchNorm``,
so DDP's average of the parameter gradients is the gradient of the mean loss. Only the input and
per-channel / per-instance statistics are saved (1.0× the input). A process with an empty batch skips
the kernels but takes part in both collectives. A double backward (``create_graph=True``) recomputes
the forward with differentiable collectives (:func:`synchronized_reference`).
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

from .batch import (
    backward_reductions,
    forward_statistics,
    grouped,
    input_gradient,
    normalized_output,
)
from .common import (
    compute_dtype,
    current_mode,
    default_parameters,
    differentiable_backward,
    kernel_layout,
    run_kernel,
)
from .distributed import all_reduce_, gather_moments, synchronized_moments


def _local_statistics(x: Tensor, variant: int, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    return forward_statistics(grouped(x), variant, eps)


def _output(
    x: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, batch_var: Tensor, inst: Tensor, eps: float, apply_act: bool
) -> Tuple[Tensor, Tensor]:
    return normalized_output(x, grouped(x), variant, v, weight, bias, batch_var, inst, eps, apply_act)


def _reductions(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, left: Tensor, inst: Tensor, variant: int, apply_act: bool,
    needs_v: bool, needs_weight: bool, needs_bias: bool,
) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    g, scratch, coef, total, d_v, d_weight, d_bias = backward_reductions(
        dy, grouped(x), v, weight, left, inst, variant, apply_act, needs_v, needs_weight, needs_bias
    )
    # Compiled, the scratch tensor would be one more full-size output; the compiled input gradient needs none.
    scratch = None if torch.compiler.is_compiling() else scratch
    return g, scratch, coef, total.sum(dim=0, keepdim=True), d_v, d_weight, d_bias


def _input_gradient(
    x: Tensor, g: Tensor, scratch: Optional[Tensor], coef: Tensor, left_coef: Tensor, batch_mean: Tensor, inst_mean: Tensor, variant: int
) -> Tensor:
    return input_gradient(x, grouped(x), g, scratch, coef, left_coef, batch_mean, inst_mean, variant)


def synchronized_statistics(
    x: Tensor, variant: int, eps: float, process_group: Optional[Any]
) -> Tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Global batch mean and variance (1, 1, C, 1), this process's instance statistics (N, 1, C, 1)
    and the global count, without autograd."""
    n, c = x.shape[0], x.shape[1]
    if x.numel() > 0:
        with torch.no_grad():
            batch_mean, batch_var, inst_mean, inst = run_kernel(_local_statistics, current_mode(), x, variant, eps)
    else:
        batch_mean = batch_var = torch.zeros(1, 1, c, 1, dtype=compute_dtype(x), device=x.device)
        inst_mean = inst = torch.zeros(n, 1, c, 1, dtype=compute_dtype(x), device=x.device)
    batch_mean, batch_var, count = gather_moments(batch_mean, batch_var, x.numel() // c, process_group)
    return batch_mean, batch_var, inst_mean, inst, count


def synchronized_reference(
    x: Tensor, variant: int, v: Tensor, weight: Tensor, bias: Tensor, eps: float, apply_act: bool, process_group: Optional[Any]
) -> Tensor:
    """The synchronized output in differentiable ops and collectives (for a double backward)."""
    x4 = grouped(x)
    n, _, c, length = x4.shape
    _, batch_var, _ = synchronized_moments(x4.reshape(n, c, length), process_group)
    inst_var, inst_mean = torch.var_mean(x4, dim=3, keepdim=True, correction=0)
    inst = torch.sqrt(inst_var + eps) if variant == 0 else torch.sqrt(inst_var + inst_mean * inst_mean + eps)
    return normalized_output(x, x4, variant, v, weight, bias, batch_var.view(1, 1, c, 1), inst, eps, apply_act)[0]


class SyncEvoNormBatchFunction(torch.autograd.Function):
    """The output for given global statistics, and the closed-form backward with its one all-reduce."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, batch_mean: Tensor, batch_var: Tensor,
        inst_mean: Tensor, inst: Tensor, count: int, variant: int, eps: float, apply_act: bool, process_group: Optional[Any],
    ) -> Tensor:
        if x.numel() > 0:
            y, left = run_kernel(_output, current_mode(), x, variant, v, weight, bias, batch_var, inst, eps, apply_act)
        else:
            y, left = torch.empty_like(x), torch.sqrt(batch_var + eps)
        ctx.save_for_backward(x, v, weight, batch_mean, left, inst_mean, inst)
        ctx.config = (count, variant, eps, apply_act, process_group)
        ctx.mode = current_mode()  # backward runs the kernels its forward ran
        ctx.bias = bias  # for a double backward only
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        x, v, weight, batch_mean, left, inst_mean, inst = ctx.saved_tensors
        count, variant, eps, apply_act, process_group = ctx.config
        unused = (None,) * 9
        if torch.is_grad_enabled():
            grads = differentiable_backward(
                lambda: synchronized_reference(x, variant, v, weight, ctx.bias, eps, apply_act, process_group),
                (x, v, weight, ctx.bias), ctx.needs_input_grad[:4], dy,
            )
            return (*grads, *unused)
        needs_v, needs_weight, needs_bias = ctx.needs_input_grad[1:4]
        if x.numel() > 0:
            g, scratch, coef, left_sum, d_v, d_weight, d_bias = run_kernel(
                _reductions, ctx.mode, dy, x, v, weight, left, inst, variant, apply_act, needs_v, needs_weight, needs_bias
            )
        else:  # nothing to reduce here, but the peers wait for this process's share of the all-reduce
            left_sum = torch.zeros_like(left)
            d_v, d_weight, d_bias = (torch.zeros_like(p) if needed else None for p, needed in zip((v, weight, ctx.bias), (needs_v, needs_weight, needs_bias)))
        all_reduce_(left_sum, process_group)
        if x.numel() == 0:
            return (torch.zeros_like(x), d_v, d_weight, d_bias, *unused)
        left_coef = -left_sum / (count * left)
        dx = run_kernel(_input_gradient, ctx.mode, x, g, scratch, coef, left_coef, batch_mean, inst_mean, variant)
        return (dx, d_v, d_weight, d_bias, *unused)


def evonorm_batch_synchronized(
    x: Tensor,
    variant: int,
    v: Optional[Tensor],
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    apply_act: bool,
    process_group: Optional[Any],
) -> Tuple[Tensor, Tensor, int]:
    """B0/B1/B2 in training with the group's batch statistics and the lean backward: (output, global
    batch variance per channel, global count). ``None`` parameters act as 1, 1, 0."""
    x = kernel_layout(x)
    v_t, w_t, b_t, record = default_parameters(x, v, weight, bias)
    batch_mean, batch_var, inst_mean, inst, count = synchronized_statistics(x, variant, eps, process_group)
    if record:
        y = SyncEvoNormBatchFunction.apply(
            x, v_t, w_t, b_t, batch_mean, batch_var, inst_mean, inst, count, variant, eps, apply_act, process_group
        )
    elif x.numel() > 0:
        y = run_kernel(_output, current_mode(), x, variant, v_t, w_t, b_t, batch_var, inst, eps, apply_act)[0]
    else:
        y = torch.empty_like(x)
    return y, batch_var.reshape(x.shape[1]), count
