"""Batch statistics across the processes of a ``torch.distributed`` group (synchronized layers).

Two forms, for two kinds of caller:

* :func:`gather_moments` combines per-process (count, mean, biased variance) into the statistics of
  the concatenated batch, with no autograd: the lean synchronized kernels take it in forward and do
  the matching reduction of their closed-form backward with :func:`all_reduce_` themselves.
* :func:`synchronized_moments` / :func:`synchronized_statistic` are differentiable: per-process sums
  go through :class:`AllReduceSum`, an all-reduce whose backward all-reduces the gradient, so autograd
  composes the backward of any expression of them (the reference implementation, evolved layers'
  batch aggregations, ``BatchNormReLU``).

Processes may hold different batch sizes, empty ones included: an empty process contributes count 0
and still takes part in every collective, in the same order as the others, so no peer waits for it.
Every process must call the same synchronized layers in the same order (as with ``nn.SyncBatchNorm``).
"""
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def synchronizes(process_group: Optional[Any]) -> bool:
    """Whether a synchronized layer has peers: ``torch.distributed`` is initialized and the group
    (``None``: the default group) has more than one process. Otherwise a synchronized layer computes
    exactly what the unsynchronized one does."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1


def all_reduce_(t: Tensor, process_group: Optional[Any]) -> Tensor:
    """Sum ``t`` over the group, in place (no autograd)."""
    dist.all_reduce(t, dist.ReduceOp.SUM, group=process_group)
    return t


class AllReduceSum(torch.autograd.Function):
    """``Σ_ranks t``. Each process's output is the same sum, so the gradient of the sum of every
    process's loss with respect to its ``t`` is the sum of the gradients that reach the outputs."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, process_group: Optional[Any]) -> Tensor:  # type: ignore[override]
        ctx.process_group = process_group
        return all_reduce_(t.clone(memory_format=torch.contiguous_format), process_group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Tensor, None]:  # type: ignore[override]
        return all_reduce_(grad.clone(memory_format=torch.contiguous_format), ctx.process_group), None


def _global_sums(t3: Tensor, process_group: Optional[Any]) -> Tuple[Tensor, int]:
    """Per-channel sums of ``t3`` (N, C, L) over the concatenated batch, (1, C, 1) and differentiable,
    with the global count N·L; one collective carries both."""
    local_count = t3.new_full((1,), float(t3.shape[0] * t3.shape[2]))
    summed = AllReduceSum.apply(torch.cat([t3.sum(dim=[0, 2]), local_count]), process_group)
    count = int(summed[-1].item())
    return summed[:-1].view(1, -1, 1), count


def synchronized_moments(t3: Tensor, process_group: Optional[Any]) -> Tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``t3`` (N, C, L) over the concatenated batch of the
    group, each (1, C, 1) and differentiable, and the global count N·L.

    Two passes, as a careful variance takes them: the global mean first, then the global sum of
    squared deviations from it (E[x²] − E[x]² would cancel catastrophically for large means). With a
    global count of 0 (every process empty) the moments are 0.
    """
    sums, count = _global_sums(t3, process_group)
    mean = sums / max(count, 1)
    centred = t3 - mean
    squares, _ = _global_sums(centred * centred, process_group)
    return mean, squares / max(count, 1), count


def synchronized_statistic(t3: Tensor, statistic: int, process_group: Optional[Any]) -> Tuple[Tensor, int]:
    """The mean (0), biased variance (1) or second moment (2) of ``t3`` (N, C, L) per channel over the
    group's concatenated batch, (1, C, 1) and differentiable, and the global count: the synchronized
    form of the genome primitives' batch aggregations."""
    if statistic == 1:
        _, var, count = synchronized_moments(t3, process_group)
        return var, count
    sums, count = _global_sums(t3 if statistic == 0 else t3 * t3, process_group)
    return sums / max(count, 1), count


def gather_moments(mean: Tensor, var: Tensor, count: int, process_group: Optional[Any]) -> Tuple[Tensor, Tensor, int]:
    """Combine every process's per-channel ``mean`` and biased ``var`` (any shape with C elements)
    over ``count`` values into those of the concatenated batch (shaped like ``mean``), and the global
    count. No autograd.

    One all-gather of (count, mean, M2 = var·count) per process, then Chan et al.'s parallel
    combination: mean = Σ nᵢμᵢ / n, M2 = Σ M2ᵢ + Σ nᵢ(μᵢ − mean)², which, unlike summed powers, does not
    cancel for large means. Processes with count 0 contribute nothing.
    """
    c = mean.numel()
    local = torch.cat([mean.new_full((1,), float(count)), mean.reshape(c), var.reshape(c) * count])
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, local, group=process_group)
    table = torch.stack(parts)  # (processes, 1 + 2C)
    counts, means, m2 = table[:, :1], table[:, 1:c + 1], table[:, c + 1:]
    total = counts.sum()
    global_mean = (counts * means).sum(dim=0) / total.clamp_min(1.0)
    spread = means - global_mean
    global_m2 = m2.sum(dim=0) + (counts * spread * spread).sum(dim=0)
    return global_mean.view_as(mean), (global_m2 / total.clamp_min(1.0)).view_as(mean), int(total.item())
