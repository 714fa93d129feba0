"""mmdet 3.x blocks for models whose norm layers are EvoNorms, registered in mmdet's ``MODELS``.

An EvoNorm is a normalization and its activation in one layer. Putting it where a model has GroupNorm
therefore needs two rules: no activation may follow it (it replaces a norm + ReLU pair), and a norm
that had no ReLU after it becomes the non-activating form, ``apply_act=False``. mmdet's blocks write
their ReLUs in code, so the EvoNorm models use these blocks instead:

``EvoNormResNet``
    mmdet's ResNet (same arguments, same state-dict keys) built from the two blocks below, with no
    ReLU after the stem's norm; ``norm_eval=True`` also freezes EvoNorm running statistics.
``EvoNormBottleneck``, ``EvoNormBasicBlock``
    The norms inside the residual branch replace norm + ReLU. The branch's last norm and the shortcut's
    norm, which no ReLU follows, use ``apply_act=False``; the ReLU after the residual sum stays, as it
    follows a sum, not a norm.
``EvoNormConvFCBBoxHead``, ``EvoNormShared4Conv1FCBBoxHead``, ``EvoNormFCNMaskHead``
    The heads of GN-all Mask R-CNN with conv + EvoNorm where mmdet has conv + norm + ReLU. Their
    fully connected and upsampling layers, which have no norm, keep their ReLUs.

FPN needs no block: its convs have no activation, so its config uses ``apply_act=False``. The RPN head
has no norm in GN-all Mask R-CNN and stays as it is. Every block accepts any layer of the evonorm_plugins
registry; with ``GroupNormReLU`` or ``BatchNormReLU`` it computes exactly mmdet's block with GN or BN,
which is how the tests check that each EvoNorm sits where a norm + ReLU pair was.

Configs import this module with ``custom_imports = dict(imports=["evonorm_plugins.mmdet"])``; see the
Mask R-CNN configs in the repository's ``configs/mmdet/``. Importing it also imports
:mod:`evonorm_plugins.mmcv`, which registers the norm layers themselves.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import torch.utils.checkpoint as cp
from torch import Tensor, nn

from . import mmcv as _norm_layers  # noqa: F401  (registers the norm types with mmcv)
from .layers.base import EvoNormBase
from .registry import list_layers

try:
    from mmcv.cnn import ConvModule, build_norm_layer
    from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
    from mmdet.models.roi_heads.bbox_heads import ConvFCBBoxHead, Shared4Conv1FCBBoxHead
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead
    from mmdet.registry import MODELS
except ImportError as error:
    raise ImportError(
        f"evonorm_plugins.mmdet needs mmdet 3.x and the full mmcv 2.x with its compiled ops (mmcv-lite is "
        f"not enough); install them as mmdet's installation guide says, e.g. "
        f'`pip install -U openmim && mim install "mmcv>=2.0.0,<2.2.0" "mmdet>=3.0"` ({error})'
    ) from error

Config = Dict[str, Any]


def _check_norm_cfg(owner: str, norm_cfg: Optional[Config]) -> None:
    """Require a norm_cfg naming an evonorm_plugins layer: the blocks drop the ReLU after the norm,
    which a plain BN/GN would need."""
    layer_type = norm_cfg.get("type") if isinstance(norm_cfg, dict) else None
    if not isinstance(layer_type, str) or layer_type not in list_layers():
        raise ValueError(
            f"{owner} needs norm_cfg=dict(type=<an evonorm_plugins layer>), e.g. dict(type='EvoNormS0'), got "
            f"norm_cfg={norm_cfg!r}. It leaves out the ReLU after each norm because an EvoNorm is its own "
            f"activation; for BN or GN use mmdet's block without the 'EvoNorm' prefix, or 'BatchNormReLU' / "
            f"'GroupNormReLU' here"
        )


def _without_activation(norm_cfg: Config) -> Config:
    return {**norm_cfg, "apply_act": False}


def _linearize_tail(block: nn.Module, norm_name: str, channels: int, norm_cfg: Config) -> None:
    """Rebuild the last norm of ``block``'s residual branch, and the norm that ends its shortcut, with
    ``apply_act=False``: a sum, not a ReLU, follows them."""
    tail_cfg = _without_activation(norm_cfg)
    block.add_module(norm_name, build_norm_layer(tail_cfg, channels)[1])
    if block.downsample is not None:
        # mmdet's ResLayer builds the shortcut as [AvgPool2d,] conv, norm
        block.downsample[-1] = build_norm_layer(tail_cfg, channels)[1]


def _sum_then_relu(block: nn.Module, residual_sum: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``relu(residual_sum(x))``, checkpointing the sum when the block has ``with_cp`` (as mmdet does)."""
    if block.with_cp and x.requires_grad:
        return block.relu(cp.checkpoint(residual_sum, x, use_reentrant=False))
    return block.relu(residual_sum(x))


class EvoNormBasicBlock(BasicBlock):
    """mmdet's BasicBlock with ``conv-EvoNorm-conv-EvoNorm(apply_act=False) (+ shortcut)-ReLU``."""

    def __init__(self, inplanes: int, planes: int, *, norm_cfg: Config, **kwargs: Any) -> None:
        _check_norm_cfg(type(self).__name__, norm_cfg)
        super().__init__(inplanes, planes, norm_cfg=norm_cfg, **kwargs)
        _linearize_tail(self, self.norm2_name, planes * self.expansion, norm_cfg)

    def forward(self, x: Tensor) -> Tensor:
        def inner_forward(x: Tensor) -> Tensor:
            out = self.norm1(self.conv1(x))
            out = self.norm2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

        return _sum_then_relu(self, inner_forward, x)


class EvoNormBottleneck(Bottleneck):
    """mmdet's Bottleneck with ``conv-EvoNorm-conv-EvoNorm-conv-EvoNorm(apply_act=False) (+ shortcut)-ReLU``
    (plugins and ``with_cp`` as in mmdet)."""

    def __init__(self, inplanes: int, planes: int, *, norm_cfg: Config, **kwargs: Any) -> None:
        _check_norm_cfg(type(self).__name__, norm_cfg)
        super().__init__(inplanes, planes, norm_cfg=norm_cfg, **kwargs)
        _linearize_tail(self, self.norm3_name, planes * self.expansion, norm_cfg)

    def forward(self, x: Tensor) -> Tensor:
        def inner_forward(x: Tensor) -> Tensor:
            out = self.norm1(self.conv1(x))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv1_plugin_names)
            out = self.norm2(self.conv2(out))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv2_plugin_names)
            out = self.norm3(self.conv3(out))
            if self.with_plugins:
                out = self.forward_plugin(out, self.after_conv3_plugin_names)
            identity = x if self.downsample is None else self.downsample(x)
            return out + identity

        return _sum_then_relu(self, inner_forward, x)


@MODELS.register_module()
class EvoNormResNet(ResNet):
    """mmdet's ResNet for EvoNorm ``norm_cfg`` (required), e.g. ``dict(type="EvoNormB0", requires_grad=True)``.

    Differences from ResNet: the blocks above, no ReLU after the stem's norm (a deep stem keeps its
    layout, with an ``nn.Identity`` where a ReLU was, so state-dict keys match ResNet's), the last norm
    of each block is zero-initialized like ResNet's own blocks when ``zero_init_residual`` applies, and
    ``norm_eval=True`` puts the EvoNorms in eval mode as well as BatchNorms (B-series and evolved
    layers then use their running statistics).
    """

    arch_settings = {
        18: (EvoNormBasicBlock, (2, 2, 2, 2)),
        34: (EvoNormBasicBlock, (3, 4, 6, 3)),
        50: (EvoNormBottleneck, (3, 4, 6, 3)),
        101: (EvoNormBottleneck, (3, 4, 23, 3)),
        152: (EvoNormBottleneck, (3, 8, 36, 3)),
    }

    def __init__(
        self,
        depth: int,
        *,
        norm_cfg: Config,
        zero_init_residual: bool = True,
        init_cfg: Any = None,
        pretrained: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        _check_norm_cfg(type(self).__name__, norm_cfg)
        super().__init__(
            depth,
            norm_cfg=norm_cfg,
            zero_init_residual=zero_init_residual,
            init_cfg=init_cfg,
            pretrained=pretrained,
            **kwargs,
        )
        # ResNet zero-initializes the last norm of each residual branch only when it recognizes the block
        # class as one of its own (and the weights are not loaded from a checkpoint).
        if zero_init_residual and init_cfg is None and pretrained is None:
            tail = "norm2" if self.block is EvoNormBasicBlock else "norm3"
            for layer_name in self.res_layers:
                for block in getattr(self, layer_name):
                    block.init_cfg = dict(type="Constant", val=0, override=dict(name=tail))

    def _make_stem_layer(self, in_channels: int, stem_channels: int) -> None:
        super()._make_stem_layer(in_channels, stem_channels)
        if self.deep_stem:
            self.stem = nn.Sequential(*(nn.Identity() if isinstance(m, nn.ReLU) else m for m in self.stem))
        else:
            self.relu = nn.Identity()  # the stem's norm is the activation; ResNet.forward calls self.relu after it

    def train(self, mode: bool = True) -> "EvoNormResNet":
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, EvoNormBase):
                    module.eval()
        return self


def _drop_activations(convs: nn.ModuleList, conv_cfg: Optional[Config], norm_cfg: Config) -> None:
    """Rebuild each ConvModule of ``convs`` with ``act_cfg=None``: its EvoNorm is the activation."""
    for i, conv in enumerate(convs):
        convs[i] = ConvModule(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None,
        )


class _EvoNormConvBranches:
    """Mixin for ConvFCBBoxHead and its subclasses: conv + EvoNorm branches without the ReLU."""

    def __init__(self, *args: Any, norm_cfg: Config, **kwargs: Any) -> None:
        _check_norm_cfg(type(self).__name__, norm_cfg)
        super().__init__(*args, norm_cfg=norm_cfg, **kwargs)  # type: ignore[call-arg]

    def _add_conv_fc_branch(
        self, num_branch_convs: int, num_branch_fcs: int, in_channels: int, is_shared: bool = False
    ) -> tuple:
        convs, fcs, last_layer_dim = super()._add_conv_fc_branch(  # type: ignore[misc]
            num_branch_convs, num_branch_fcs, in_channels, is_shared
        )
        _drop_activations(convs, self.conv_cfg, self.norm_cfg)  # type: ignore[attr-defined]
        return convs, fcs, last_layer_dim


@MODELS.register_module()
class EvoNormConvFCBBoxHead(_EvoNormConvBranches, ConvFCBBoxHead):
    """ConvFCBBoxHead whose convs are conv + EvoNorm (no ReLU); ``norm_cfg`` is required."""


@MODELS.register_module()
class EvoNormShared4Conv1FCBBoxHead(_EvoNormConvBranches, Shared4Conv1FCBBoxHead):
    """Shared4Conv1FCBBoxHead (the box head of GN-all Mask R-CNN) with conv + EvoNorm convs (no ReLU)."""


@MODELS.register_module()
class EvoNormFCNMaskHead(FCNMaskHead):
    """FCNMaskHead whose convs are conv + EvoNorm (no ReLU); the ReLU after the deconv, which has no
    norm, stays. ``norm_cfg`` is required."""

    def __init__(self, *, norm_cfg: Config, **kwargs: Any) -> None:
        _check_norm_cfg(type(self).__name__, norm_cfg)
        super().__init__(norm_cfg=norm_cfg, **kwargs)
        _drop_activations(self.convs, self.conv_cfg, self.norm_cfg)


__all__ = [
    "EvoNormBasicBlock",
    "EvoNormBottleneck",
    "EvoNormConvFCBBoxHead",
    "EvoNormFCNMaskHead",
    "EvoNormResNet",
    "EvoNormShared4Conv1FCBBoxHead",
]
