"""BigGAN on many processes: Lightning's ``sync_batchnorm`` for registry layers.

``Trainer(sync_batchnorm=True)`` runs ``nn.SyncBatchNorm.convert_sync_batchnorm`` on the model, which
turns every BatchNorm subclass into a bare ``SyncBatchNorm``: ``BatchNormReLU`` loses its ReLU (its
``act`` stays a child that nothing calls) and the EvoNorm B-series stay per-process, so a BN-vs-EvoNorm
comparison would no longer compare like with like. :class:`SyncBatchStatistics` is the layer sync that
``evonorm-biggan`` passes instead (a ``TorchSyncBatchNorm``, so Lightning accepts it with
``sync_batchnorm=True``): every registry layer with batch statistics keeps its class and activation
and synchronizes through its ``sync_stats`` switch; only other BatchNorms are converted as torch does.
:func:`check_activations_kept` catches the stock conversion where it ran anyway.
"""
from __future__ import annotations

from typing import List

from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from evonorm_plugins.layers.base import EvoNormBase
from evonorm_plugins.layers.baselines import BatchNormAct


def _has_batch_statistics(module: nn.Module) -> bool:
    return isinstance(module, BatchNormAct) or (isinstance(module, EvoNormBase) and module.batch_statistics)


class SyncBatchStatistics(TorchSyncBatchNorm):
    """Lightning's layer sync for models of registry layers: the EvoNorm B-series, batch-dependent
    genomes and ``BatchNormReLU``/``SiLU`` synchronize their batch statistics (``sync_stats``), keeping
    their activation; any other BatchNorm becomes ``nn.SyncBatchNorm``. :meth:`revert` switches back
    what :meth:`apply` switched on."""

    def __init__(self) -> None:
        self._switched: List[nn.Module] = []

    def apply(self, model: nn.Module) -> nn.Module:
        for name, child in list(model.named_children()):
            if _has_batch_statistics(child):
                if not child.sync_stats:
                    child.sync_stats = True
                    self._switched.append(child)
                self.apply(child)
            elif isinstance(child, _BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            else:
                self.apply(child)
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        for layer in self._switched:
            layer.sync_stats = False
        self._switched.clear()
        return super().revert(model)


def check_activations_kept(model: nn.Module) -> None:
    """Raise if ``nn.SyncBatchNorm.convert_sync_batchnorm`` (Lightning's stock ``sync_batchnorm``) has
    replaced a ``BatchNormReLU``/``SiLU``: its activation would silently be skipped."""
    stripped = [name for name, m in model.named_modules()
                if isinstance(m, nn.SyncBatchNorm) and not isinstance(getattr(m, "act", nn.Identity()), nn.Identity)]
    if stripped:
        raise RuntimeError(
            f"sync_batchnorm replaced BatchNormReLU/SiLU layers by bare SyncBatchNorm, which skips their activation "
            f"({', '.join(stripped[:3])}{', ...' if len(stripped) > 3 else ''}); pass "
            f"plugins=[evonorm_biggan.distributed.SyncBatchStatistics()] with sync_batchnorm=True (evonorm-biggan "
            f"does so for --trainer.sync_batchnorm true)"
        )


__all__ = ["SyncBatchStatistics", "check_activations_kept"]
