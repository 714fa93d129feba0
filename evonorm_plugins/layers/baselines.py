"""The usual baselines with the EvoNorm constructor: BatchNorm or GroupNorm followed by ReLU or SiLU.

They subclass ``nn.BatchNorm2d`` / ``nn.GroupNorm`` so their state dicts are the standard ones.
"""
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels.batchnorm_sync import batch_norm_statistics, synchronized_batch_norm
from ..kernels.common import compute_dtype
from ..kernels.distributed import synchronizes
from .base import check_host_kwargs, num_groups_for


def _activation(act: type, apply_act: bool) -> nn.Module:
    return act() if apply_act else nn.Identity()


def _drop(drop_layer: Optional[Callable[[], nn.Module]]) -> nn.Module:
    """timm's convention: an optional drop module (e.g. DropBlock) between the norm and the activation."""
    return drop_layer() if drop_layer is not None else nn.Identity()


class BatchNormAct(nn.BatchNorm2d):
    """``act(BatchNorm2d(x))``; ``apply_act=False`` drops the activation. ``groups``/``group_size`` are
    accepted (unused) so configs can swap it with any registered layer.

    ``sync_stats=True`` makes it a synchronized BatchNorm + activation: in training, with more than one
    process in ``process_group``, mean and variance are those of the group's concatenated batch and the
    running statistics are updated with them (the variance unbiased by the global count), as
    ``nn.SyncBatchNorm`` computes, while the activation stays (``nn.SyncBatchNorm.convert_sync_batchnorm``
    would replace the whole module by a bare ``SyncBatchNorm``). It runs on any device (``nn.SyncBatchNorm``
    needs a GPU), with the same two collectives, outside ``torch.compile``
    (:mod:`evonorm_plugins.kernels.batchnorm_sync`).
    """

    act_layer: type = nn.ReLU

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float = 0.1,
        apply_act: bool = True,
        groups: int = 32,
        group_size: Optional[int] = None,
        sync_stats: bool = False,
        process_group: Optional[Any] = None,
        drop_layer: Optional[Callable[[], nn.Module]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> None:
        check_host_kwargs(type(self).__name__, kwargs)
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.sync_stats = bool(sync_stats)
        self.process_group = process_group
        self.drop = _drop(drop_layer)
        self.act = _activation(self.act_layer, apply_act)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if not torch.jit.is_scripting() and self.sync_stats and self.training and synchronizes(self.process_group):
            x = self._synchronized_batch_norm(x)
        else:
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, self.momentum, self.eps)
        return self.act(self.drop(x))

    @torch.jit.unused
    @torch.compiler.disable
    def _synchronized_batch_norm(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        x3 = x.to(compute_dtype(x)).flatten(2)
        mean, var, count = batch_norm_statistics(x3, self.process_group)
        if self.running_mean is not None and self.running_var is not None and count > 1:
            with torch.no_grad():
                self.running_mean.lerp_(mean.view(c).to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_((var.view(c) * (count / (count - 1))).to(self.running_var.dtype), self.momentum)
        y = synchronized_batch_norm(x3, self.weight, self.bias, mean, var, count, self.eps, self.process_group)
        return y.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", sync_stats=True" if self.sync_stats else "")


class GroupNormAct(nn.GroupNorm):
    """``act(GroupNorm(x))`` with ``groups`` lowered to a divisor of C as for EvoNorm-S, or ``group_size``.
    ``momentum``, ``sync_stats`` and ``process_group`` are accepted (unused: no batch statistics)."""

    act_layer: type = nn.ReLU

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        groups: int = 32,
        group_size: Optional[int] = None,
        apply_act: bool = True,
        momentum: float = 0.1,
        sync_stats: bool = False,
        process_group: Optional[Any] = None,
        drop_layer: Optional[Callable[[], nn.Module]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> None:
        name = type(self).__name__
        check_host_kwargs(name, kwargs)
        super().__init__(num_groups_for(name, num_features, groups, group_size), num_features, eps=eps, device=device, dtype=dtype)
        self.drop = _drop(drop_layer)
        self.act = _activation(self.act_layer, apply_act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)))


class BatchNormReLU(BatchNormAct):
    act_layer = nn.ReLU


class BatchNormSiLU(BatchNormAct):
    act_layer = nn.SiLU


class GroupNormReLU(GroupNormAct):
    act_layer = nn.ReLU


class GroupNormSiLU(GroupNormAct):
    act_layer = nn.SiLU
