"""What every EvoNorm module shares: the uniform constructor, per-channel parameters and host keywords."""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..functional import resolve_groups
from ..kernels.distributed import synchronizes

# Keywords that host frameworks pass to any norm-act layer and that have no meaning for an EvoNorm,
# which is its own activation: they are accepted and ignored so the layer drops into those call sites.
HOST_KEYWORDS = frozenset({"act_layer", "act_kwargs", "inplace"})


def check_host_kwargs(layer: str, kwargs: Dict[str, Any]) -> None:
    """Raise ``TypeError`` for keywords that are neither ours nor a known host keyword (typos)."""
    unknown = sorted(set(kwargs) - HOST_KEYWORDS)
    if unknown:
        raise TypeError(
            f"{layer} got unexpected keyword argument(s) {unknown}; it accepts num_features, eps, groups, "
            f"group_size, momentum, apply_act, affine_only, sync_stats, process_group, drop_layer, device, dtype "
            f"(and ignores "
            f"{sorted(HOST_KEYWORDS)})"
        )


def num_groups_for(layer: str, num_features: int, groups: int, group_size: Optional[int]) -> int:
    """Groups from ``group_size`` (must divide C) or from ``groups`` (lowered to a divisor of C)."""
    if group_size is None:
        if groups <= 0:
            raise ValueError(f"{layer}: groups must be a positive integer, got {groups}; use e.g. groups=32")
        return resolve_groups(num_features, groups)
    if group_size <= 0:
        raise ValueError(f"{layer}: group_size must be a positive integer, got {group_size}")
    if num_features % group_size != 0:
        raise ValueError(
            f"{layer}: group_size={group_size} does not divide num_features={num_features}; choose a "
            f"divisor of {num_features} or pass groups= instead (a non-divisor is then lowered to one)"
        )
    return num_features // group_size


class EvoNormBase(nn.Module):
    """Shared constructor of the six layers.

    Every layer takes the same keywords so that configs can swap one for another by name: ``groups`` and
    ``group_size`` are used by the S-series only, ``momentum``, ``sync_stats`` and ``process_group`` by
    the layers with batch statistics only (B-series, batch-dependent genomes).

    Args:
        num_features: channels C of the ``(N, C, H, W)`` input.
        eps: added to every variance or second moment under the square root.
        groups: groups of the S-series statistics; lowered to the largest divisor of C that is <= groups.
        group_size: channels per group instead of ``groups``; must divide C.
        momentum: B-series running-variance update, ``new = (1 - momentum)·old + momentum·batch``.
        apply_act: ``False`` drops the non-linear part but still normalizes (B: by the batch std,
            S0/S1: by the group std, S2: by the group RMS), for hosts that put a norm without an
            activation at the end of a residual branch.
        affine_only: the official code's ``nonlinearity=False``: ``x·γ + β`` with no normalization.
        sync_stats: in training, take the batch statistics over the concatenated batch of every process
            of ``process_group`` (as ``nn.SyncBatchNorm`` does), when ``torch.distributed`` is
            initialized with more than one process there; otherwise, and in eval mode, the layer computes
            exactly what it does without. Settable later (:func:`evonorm_plugins.convert_sync_evonorm`).
        process_group: the ``torch.distributed`` group to synchronize over; ``None``: the default group.
        drop_layer: a module class (e.g. timm's DropBlock) applied to the output, as timm's norm-act
            layers apply it between norm and activation; an EvoNorm has no such in-between point.
        device, dtype: factory arguments of the parameters (the running variance is always float32 or
            wider, see :meth:`_apply`).
        **kwargs: host keywords without meaning here (``act_layer``, ``act_kwargs``, ``inplace``) are
            ignored; anything else is a ``TypeError``.
    """

    # Set by the concrete classes: whether the layer has the trainable v, and which formula of its
    # series it is (copied onto the instance because TorchScript compiles instance attributes only).
    has_v: bool = False
    variant: int = 0
    # Running statistics that stay float32 (or wider) when the module is cast to half precision:
    # variances of fp16 activations overflow fp16.
    float32_buffers: Tuple[str, ...] = ()
    # Whether the layer takes statistics over the batch (and so can synchronize them); set per instance
    # by the layers that do.
    batch_statistics: bool = False

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        groups: int = 32,
        group_size: Optional[int] = None,
        momentum: float = 0.1,
        apply_act: bool = True,
        affine_only: bool = False,
        sync_stats: bool = False,
        process_group: Optional[Any] = None,
        drop_layer: Optional[Callable[[], nn.Module]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_host_kwargs(name, kwargs)
        self.layer_name = name
        self.variant = type(self).variant
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
            raise ValueError(f"{name}: num_features must be a positive int (the channel count), got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps}; the paper uses 1e-5")
        self.num_features = num_features
        self.eps = float(eps)
        self.apply_act = bool(apply_act)
        self.affine_only = bool(affine_only)
        self.sync_stats = bool(sync_stats)
        self.process_group = process_group
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **factory))
        self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        if self.has_v and self.apply_act and not self.affine_only:
            self.v: Optional[nn.Parameter] = nn.Parameter(torch.ones(num_features, **factory))
        else:
            self.register_parameter("v", None)
        self.drop = drop_layer() if drop_layer is not None else nn.Identity()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "EvoNormBase":
        super()._apply(fn, recurse)
        for name in self.float32_buffers:
            buffer = getattr(self, name)
            if buffer is not None and buffer.dtype in (torch.float16, torch.bfloat16):
                setattr(self, name, buffer.float())
        return self

    @torch.jit.unused
    def synchronized(self) -> bool:
        """Whether this forward synchronizes its batch statistics: ``sync_stats`` is set, the layer
        trains and has batch statistics, and its process group has more than one process."""
        return self.sync_stats and self.training and self.batch_statistics and synchronizes(self.process_group)

    def reset_parameters(self) -> None:
        """Back to the initial values v = 1, γ = 1, β = 0."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        if self.v is not None:
            nn.init.ones_(self.v)

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}"
        if self.sync_stats and self.batch_statistics:
            text += ", sync_stats=True"
        if self.affine_only:
            return text + ", affine_only=True"
        return text if self.apply_act else text + ", apply_act=False"
