"""EMA of the generator's weights, and "standing statistics" for its running statistics.

The EMA copy of G averages G's parameters. Its running statistics (BatchNorm means/variances, the
B-series EvoNorm running variance, a genome's batch aggregations) are *not* averaged: statistics
collected under G's weights do not describe activations under the averaged weights, and mixing them
makes eval-mode samples of B-series layers drift. Instead, before the EMA generator is used in eval
mode, :func:`standing_stats` re-estimates every running statistic from its own forward passes in train
mode (BigGAN's "standing statistics"), as an exact cumulative average over the batches. Buffers that
are not running statistics (spectral-norm power-iteration vectors) are copied from G, whose weights
the averaged ones track.
"""
from __future__ import annotations

from typing import Callable, Iterator, Tuple

import torch
from torch import Tensor, nn

_RUNNING_NAMES = ("running_mean", "running_var", "running_stats", "num_batches_tracked")


def is_running_stat(name: str) -> bool:
    """Whether a buffer (by its state-dict name) is a running statistic of a norm layer."""
    return name.rsplit(".", 1)[-1] in _RUNNING_NAMES


def _momentum_layers(module: nn.Module) -> Iterator[nn.Module]:
    """Modules that update running statistics with a float ``momentum`` in train mode."""
    for m in module.modules():
        if isinstance(getattr(m, "momentum", None), float) and any(
            is_running_stat(n) and b is not None for n, b in m.named_buffers(recurse=False)
        ):
            yield m


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """``target ← decay·target + (1 − decay)·source`` for parameters; other non-statistic buffers are
    copied. ``decay=0`` makes ``target`` a copy of ``source`` (used before the EMA start step)."""
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s, 1.0 - decay)
    source_buffers = dict(source.named_buffers())
    for name, buffer in target.named_buffers():
        if not is_running_stat(name):
            buffer.copy_(source_buffers[name])


@torch.no_grad()
def standing_stats(module: nn.Module, batches: int, forward: Callable[[], Tensor]) -> None:
    """Re-estimate every running statistic of ``module`` as the plain average over ``batches`` calls
    of ``forward()`` (which runs ``module`` on fresh inputs) in train mode; restores the mode after.

    Momentum ``1/k`` at the k-th batch turns the exponential average ``(1 − m)·old + m·new`` into the
    exact cumulative mean, whatever layer keeps the statistic.
    """
    if batches < 1:
        raise ValueError(f"standing statistics need at least one batch, got {batches}")
    layers = list(_momentum_layers(module))
    saved: Tuple[float, ...] = tuple(m.momentum for m in layers)
    was_training = module.training
    module.train()
    try:
        for k in range(1, batches + 1):
            for m in layers:
                m.momentum = 1.0 / k
            forward()
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        module.train(was_training)
