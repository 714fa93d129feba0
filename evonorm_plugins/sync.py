"""Synchronized batch statistics for a built model: :func:`convert_sync_evonorm`."""
from typing import Any, Optional

from torch import nn

from .layers.base import EvoNormBase


def convert_sync_evonorm(module: nn.Module, process_group: Optional[Any] = None) -> nn.Module:
    """Make every EvoNorm layer of ``module`` that takes batch statistics synchronize them over
    ``process_group`` (``None``: the default group), as ``nn.SyncBatchNorm.convert_sync_batchnorm``
    does for BatchNorm, and return the module.

    Converted: EvoNorm-B0/B1/B2 and evolved layers (``GraphNormAct``) whose program has batch
    aggregations, by setting their ``sync_stats`` and ``process_group``: the modules, their weights and
    buffers stay as they are (so the same object is returned, and a state dict loads either way). The
    S-series, batch-independent genomes, affine-only layers and everything else are left alone, the
    BatchNorm baselines included (``BatchNormReLU(sync_stats=True)`` or setting their ``sync_stats``
    synchronizes those). In eval mode, or without an initialized process group of more than one
    process, a converted layer computes what it did before.
    """
    for layer in module.modules():
        if isinstance(layer, EvoNormBase) and layer.batch_statistics:
            layer.sync_stats = True
            layer.process_group = process_group
    return module


__all__ = ["convert_sync_evonorm"]
