"""detectron2's ResNet and FPN with a registry layer placed the paper's way: the activating form where
a norm + ReLU pair was, the non-activating form (``apply_act=False``) where a norm had no ReLU; the ReLU
after each residual sum stays. Registered in ``BACKBONE_REGISTRY``."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    ResNet,
)
from torch import Tensor

from .norm import (
    EvoNormFactory,
    NormSpec,
    evonorm_factory,
    is_norm_layer,
    registry_factory,
)


class _FrozenNormsStayInEval(CNNBlockBase):
    """``freeze()`` that also stops the norm layers' running statistics.

    detectron2's ``CNNBlockBase.freeze`` stops gradients and swaps ``BatchNorm2d`` for
    ``FrozenBatchNorm2d``. For these blocks that is not enough (B-series and evolved layers would keep
    updating their running statistics in train mode) and would be wrong (a ``BatchNormReLU`` would
    become a FrozenBN without its ReLU). Instead, a frozen block keeps its norm layers in eval mode,
    which uses and preserves their running statistics, whatever ``train()`` is called with.
    """

    norms_frozen: bool = False

    def freeze(self) -> "_FrozenNormsStayInEval":
        for parameter in self.parameters():
            parameter.requires_grad = False
        self.norms_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> "_FrozenNormsStayInEval":
        super().train(mode)
        if self.norms_frozen:
            for module in self.modules():
                if is_norm_layer(module):
                    module.eval()
        return self


def _stop_activating(convs: Iterable[Optional[Conv2d]], norm: EvoNormFactory) -> None:
    """Rebuild the norm of each conv in its non-activating form: a sum, not a ReLU, follows it."""
    tail = norm.without_activation()
    for conv in convs:
        if conv is not None:
            conv.norm = tail(conv.out_channels)


class EvoNormBasicStem(_FrozenNormsStayInEval, BasicStem):
    """detectron2's BasicStem, ``conv-layer-maxpool``: the layer replaces norm + ReLU."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm: NormSpec) -> None:
        super().__init__(in_channels, out_channels, norm=evonorm_factory(norm, type(self).__name__))

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)


class EvoNormBasicBlock(_FrozenNormsStayInEval, BasicBlock):
    """detectron2's BasicBlock, ``conv-layer-conv-layer(apply_act=False) (+ shortcut)-ReLU``."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormSpec, **kwargs: Any) -> None:
        factory = evonorm_factory(norm, type(self).__name__)
        super().__init__(in_channels, out_channels, norm=factory, **kwargs)
        _stop_activating([self.conv2, self.shortcut], factory)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class EvoNormBottleneckBlock(_FrozenNormsStayInEval, BottleneckBlock):
    """detectron2's BottleneckBlock, ``conv-layer-conv-layer-conv-layer(apply_act=False) (+ shortcut)-ReLU``
    (the shortcut's norm is non-activating too)."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: NormSpec, **kwargs: Any) -> None:
        factory = evonorm_factory(norm, type(self).__name__)
        super().__init__(in_channels, out_channels, norm=factory, **kwargs)
        _stop_activating([self.conv3, self.shortcut], factory)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(self.conv2(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


def _resnet_stages(cfg: CfgNode, norm: EvoNormFactory) -> List[List[CNNBlockBase]]:
    """The four stages of ``build_resnet_backbone`` (depth, groups, width, stride_in_1x1, res5 dilation)
    made of the EvoNorm blocks."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH={r.DEPTH} is not a ResNet depth; use one of {sorted(_BLOCKS_PER_STAGE)}")
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            "build_evonorm_resnet_backbone has no deformable blocks; set MODEL.RESNETS.DEFORM_ON_PER_STAGE "
            "to all False"
        )
    bottleneck = r.DEPTH >= 50
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
        dilation = r.RES5_DILATION if index == 3 else 1
        first_stride = 1 if index == 0 or dilation == 2 else 2
        block_kwargs: Dict[str, Any] = {}
        if bottleneck:
            block_kwargs = dict(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                dilation=dilation,
                num_groups=r.NUM_GROUPS,
            )
        stages.append(
            ResNet.make_stage(
                EvoNormBottleneckBlock if bottleneck else EvoNormBasicBlock,
                num_blocks,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                norm=norm,
                **block_kwargs,
            )
        )
        in_channels, out_channels, bottleneck_channels = out_channels, out_channels * 2, bottleneck_channels * 2
    return stages


@BACKBONE_REGISTRY.register()
def build_evonorm_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet with ``MODEL.RESNETS.NORM`` (an evonorm_plugins name) placed by the blocks
    above; honours ``FREEZE_AT``, ``OUT_FEATURES``, depth, ResNeXt groups, ``STRIDE_IN_1X1`` and
    ``RES5_DILATION`` like ``build_resnet_backbone``."""
    norm = evonorm_factory(cfg.MODEL.RESNETS.NORM, "build_evonorm_resnet_backbone (MODEL.RESNETS.NORM)")
    stem = EvoNormBasicStem(input_shape.channels, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, norm=norm)
    return ResNet(
        stem,
        _resnet_stages(cfg, norm),
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def fpn_norm(norm: Any) -> Any:
    """FPN's norm: a registry name (or ``Sync<Name>``) becomes its non-activating form (no ReLU follows
    FPN's norms); detectron2's names and callables pass through."""
    factory = registry_factory(norm)
    return norm if factory is None else factory.without_activation()


@BACKBONE_REGISTRY.register()
def build_evonorm_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """``build_resnet_fpn_backbone`` on :func:`build_evonorm_resnet_backbone`, with ``MODEL.FPN.NORM``
    through :func:`fpn_norm`."""
    return FPN(
        bottom_up=build_evonorm_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=fpn_norm(cfg.MODEL.FPN.NORM),
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
