"""Synchronized batch statistics for a built model (:func:`convert_sync_evonorm`), and the ``Sync<Name>``
layer names that configs use for them (detectron2's ``NORM``, mmcv's ``norm_cfg``), as they use
``SyncBN`` for BatchNorm."""
from typing import Any, Dict, Optional, Type

from torch import nn

from .graph.module import GraphNormAct
from .layers.base import EvoNormBase
from .layers.baselines import BatchNormAct
from .layers.evonorm_b import EvoNormBatch
from .registry import get_layer, get_layer_class, list_layers

SYNC_PREFIX = "Sync"


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


def has_batch_statistics(cls: Type[nn.Module]) -> bool:
    """Whether layers of a registered class take statistics over the batch, so that synchronizing them
    means something: the B-series, genomes with batch aggregations, the BatchNorm baselines."""
    if issubclass(cls, GraphNormAct):
        return cls.default_genome is not None and cls.default_genome.batch_dependent
    return issubclass(cls, (EvoNormBatch, BatchNormAct))


def synchronized_names() -> Dict[str, str]:
    """``Sync<Name>`` → ``<Name>`` for every registered layer with batch statistics."""
    return {SYNC_PREFIX + name: name for name in list_layers() if has_batch_statistics(get_layer_class(name))}


def unsynchronized_name(name: str) -> Optional[str]:
    """The registered layer that ``Sync<Name>`` names, or ``None`` when ``name`` is not of that form.

    Raises ``ValueError`` for ``Sync`` + a registered layer without batch statistics (``SyncEvoNormS0``):
    there is nothing to synchronize, and the name would promise what the layer does not do.
    """
    base = name[len(SYNC_PREFIX):] if name.startswith(SYNC_PREFIX) else None
    if base is None or base not in list_layers():
        return None
    if not has_batch_statistics(get_layer_class(base)):
        raise ValueError(
            f"{name!r}: {base} takes no statistics over the batch (only per sample), so there is nothing to "
            f"synchronize across processes; use {base!r}. Sync names exist for {', '.join(synchronized_names())}"
        )
    return base


def get_synchronized_layer(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Build ``Sync<Name>``: the registered layer ``<Name>`` with ``sync_stats=True``."""
    base = unsynchronized_name(name)
    if base is None:
        raise ValueError(f"{name!r} is not {SYNC_PREFIX!r} + a registered layer with batch statistics ({', '.join(synchronized_names())})")
    return get_layer(base, num_features, sync_stats=True, **kwargs)


__all__ = [
    "SYNC_PREFIX",
    "convert_sync_evonorm",
    "get_synchronized_layer",
    "has_batch_statistics",
    "synchronized_names",
    "unsynchronized_name",
]
