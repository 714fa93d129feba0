"""detectron2 integration: registry names as ``NORM`` in configs, and models that place EvoNorms right.

Importing this module does two things.

**Names.** Every name of the evonorm_plugins registry becomes a valid ``NORM`` wherever detectron2
calls ``get_norm`` (``MODEL.RESNETS.NORM``, ``MODEL.FPN.NORM``, ``MODEL.ROI_BOX_HEAD.NORM``,
``MODEL.ROI_MASK_HEAD.NORM``, ``MODEL.RETINANET.NORM``, ``MODEL.SEM_SEG_HEAD.NORM``, ...). detectron2
builds its name table inside ``get_norm`` and about a dozen modules bind the function at import
(``from detectron2.layers import get_norm``), so there is no table to extend and patching one module
attribute reaches nothing else. This module therefore wraps ``get_norm`` once and rebinds *every*
loaded module attribute that holds detectron2's function (found by identity, so unrelated
``get_norm`` functions are left alone); modules imported later pick the wrapper up from
``detectron2.layers``. The wrapper calls detectron2's function first, so built-in names (``BN``,
``GN``, ``FrozenBN``, ``SyncBN``, ...) and callables behave exactly as before; only a name detectron2
does not know is looked up in the registry, at call time, so layers registered later work too. No
``add_evonorm_config(cfg)`` is needed: the names are plain strings of the existing ``NORM`` keys.

**Placement.** A name in detectron2's own ResNet, FPN and heads builds the activating layer, but those
modules apply their own ReLU after each norm (a double activation) and have norms that no ReLU follows
(which should not activate). The blocks here, registered in detectron2's registries, put the layer
where a norm + ReLU pair was and its non-activating form (``apply_act=False``) where a norm had no
ReLU; the ReLU after each residual sum stays, as it follows a sum, not a norm:

``build_evonorm_resnet_backbone``, ``build_evonorm_resnet_fpn_backbone`` (``BACKBONE_REGISTRY``)
    detectron2's ResNet (+ FPN) from :class:`EvoNormBasicStem`, :class:`EvoNormBasicBlock` and
    :class:`EvoNormBottleneckBlock`; the FPN norms, which no ReLU follows, do not activate.
``EvoNormFastRCNNConvFCHead`` (``ROI_BOX_HEAD_REGISTRY``), ``EvoNormMaskRCNNConvUpsampleHead`` (``ROI_MASK_HEAD_REGISTRY``)
    The box / mask heads with conv + layer where detectron2 has conv + norm + ReLU; the fully
    connected layers and the mask deconv, which have no norm, keep their ReLUs.

With ``GroupNormReLU`` / ``BatchNormReLU`` these blocks compute detectron2's blocks with GN / BN. For
python (LazyConfig) configs, :class:`EvoNormFactory` is the ``norm`` callable and the classes above are
the blocks. Training: :func:`build_evonorm_optimizer` gives the norm layers ``SOLVER.WEIGHT_DECAY_NORM``
and ``FREEZE_AT`` freezes their parameters and running statistics. See the repository's
``configs/detectron2/``.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import get_layer, get_layer_class, list_layers

try:
    import detectron2
    import detectron2.layers
    import detectron2.modeling  # noqa: F401  (binds get_norm in every model module before the rebinding)
    from detectron2.config import CfgNode
    from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec
    from detectron2.layers import batch_norm as _batch_norm
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
    from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead
    from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping, reduce_param_groups
except ImportError as error:
    raise ImportError(
        f"evonorm_plugins.detectron2 needs detectron2, which is not on PyPI: clone "
        f"https://github.com/facebookresearch/detectron2 and run `pip install --no-build-isolation <clone>` "
        f"in an environment that has torch and torchvision ({error})"
    ) from error

NormSpec = Union[str, "EvoNormFactory"]


# --------------------------------------------------------------------------------------------------
# Registry names in get_norm
# --------------------------------------------------------------------------------------------------


def _checked_get_norm() -> Callable[[Any, int], Optional[nn.Module]]:
    """detectron2's ``get_norm``, after checking it is the function this module knows how to wrap."""
    original = _batch_norm.get_norm
    parameters = list(inspect.signature(original).parameters)
    if parameters != ["norm", "out_channels"] or detectron2.layers.get_norm is not original:
        raise ImportError(
            f"evonorm_plugins.detectron2 wraps detectron2.layers.get_norm(norm, out_channels), but detectron2 "
            f"{detectron2.__version__} has get_norm({', '.join(parameters)}) in {original.__module__}; use a "
            f"detectron2 whose get_norm has that signature (v0.6 or the main branch), or pass norms as "
            f"callables (EvoNormFactory) instead of names"
        )
    return original


_detectron2_get_norm = _checked_get_norm()


def get_norm(norm: Any, out_channels: int) -> Optional[nn.Module]:
    """detectron2's ``get_norm`` that also accepts every name of the evonorm_plugins registry.

    detectron2's own names and callables go to detectron2's function unchanged; a name it does not
    know is built from the registry (activating form) for ``out_channels`` channels.
    """
    try:
        return _detectron2_get_norm(norm, out_channels)
    except KeyError:
        if not isinstance(norm, str):
            raise
    if norm in list_layers():
        return get_layer(norm, out_channels)
    raise ValueError(
        f"unknown NORM {norm!r}: it is neither a detectron2 norm (BN, SyncBN, FrozenBN, GN, LN, nnSyncBN, "
        f"naiveSyncBN, naiveSyncBN_N) nor an evonorm_plugins layer ({', '.join(list_layers())}); names are "
        f"case-sensitive, and evolved layers must be registered (register_layer, load_genomes or "
        f"EVONORM_GENOMES) before the model is built"
    )


def _rebind_get_norm() -> List[str]:
    """Point every loaded module attribute that holds detectron2's ``get_norm`` at :func:`get_norm`.

    Returns the names of the modules rebound. Modules are matched by the identity of the attribute's
    value (read from the module's ``__dict__``, so no lazy ``__getattr__`` runs).
    """
    rebound = []
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get("get_norm") is _detectron2_get_norm:
            namespace["get_norm"] = get_norm
            rebound.append(name)
    return rebound


REBOUND_MODULES: Tuple[str, ...] = tuple(_rebind_get_norm())


# --------------------------------------------------------------------------------------------------
# Norm callables
# --------------------------------------------------------------------------------------------------


def _norm_layer_classes() -> Tuple[Type[nn.Module], ...]:
    return tuple(get_layer_class(name) for name in list_layers())


def is_norm_layer(module: Optional[nn.Module]) -> bool:
    """Whether ``module`` is a layer of the evonorm_plugins registry (an EvoNorm, an evolved layer or a
    baseline such as GroupNormReLU)."""
    return module is not None and isinstance(module, _norm_layer_classes())


@dataclass(frozen=True)
class EvoNormFactory:
    """The ``norm`` callable for detectron2: ``EvoNormFactory("EvoNormS0")(256)`` builds the layer.

    Use it in LazyConfigs (``norm=EvoNormFactory("EvoNormB0")``, ``apply_act=False`` where no ReLU
    follows the norm, as in FPN) or anywhere detectron2 takes ``norm`` as a callable. ``kwargs`` go to
    the layer's constructor (``groups``, ``momentum``, ``eps``, ...). A picklable dataclass rather than
    a lambda, so configs holding it can be saved.
    """

    name: str
    apply_act: bool = True
    kwargs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_layer_class(self.name)  # an unknown name fails here, at config time, listing close matches

    def __call__(self, out_channels: int) -> nn.Module:
        return get_layer(self.name, out_channels, apply_act=self.apply_act, **self.kwargs)

    def without_activation(self) -> "EvoNormFactory":
        """The same layer in its non-activating form, for norms that no ReLU follows."""
        return replace(self, apply_act=False)


def evonorm_factory(norm: NormSpec, owner: str) -> EvoNormFactory:
    """``norm`` as an :class:`EvoNormFactory`; ``owner`` names the block for the error message."""
    if isinstance(norm, EvoNormFactory):
        return norm
    if isinstance(norm, str) and norm in list_layers():
        return EvoNormFactory(norm)
    raise ValueError(
        f"{owner} needs norm to name an evonorm_plugins layer (e.g. 'EvoNormS0') or be an EvoNormFactory, "
        f"got {norm!r}. It leaves out the ReLU after each norm because the layer is its own activation; "
        f"for BN or GN use detectron2's own block, or 'BatchNormReLU' / 'GroupNormReLU' here"
    )


# --------------------------------------------------------------------------------------------------
# ResNet blocks
# --------------------------------------------------------------------------------------------------


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
    """FPN's norm: a registry name becomes its non-activating form (no ReLU follows FPN's norms);
    detectron2's names and callables pass through."""
    if isinstance(norm, str) and norm in list_layers():
        return EvoNormFactory(norm, apply_act=False)
    return norm


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


# --------------------------------------------------------------------------------------------------
# ROI heads
# --------------------------------------------------------------------------------------------------


def _drop_relus_after_norms(owner: str, convs: Iterable[Conv2d]) -> None:
    """Remove the ReLU of each conv + norm + ReLU: the norm layer is the activation."""
    for conv in convs:
        if not is_norm_layer(conv.norm):
            raise ValueError(
                f"{owner} needs its NORM (conv_norm) to name an evonorm_plugins layer, e.g. 'EvoNormS0', got "
                f"a {type(conv.norm).__name__}; for GN or BN use detectron2's head without the 'EvoNorm' prefix"
            )
        conv.activation = None


@ROI_BOX_HEAD_REGISTRY.register()
class EvoNormFastRCNNConvFCHead(FastRCNNConvFCHead):
    """FastRCNNConvFCHead (e.g. the 4conv1fc head) with conv + layer where it has conv + norm + ReLU.

    Same arguments, config keys (``MODEL.ROI_BOX_HEAD.NORM`` names the layer) and state-dict keys.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _drop_relus_after_norms(type(self).__name__, self.conv_norm_relus)


@ROI_MASK_HEAD_REGISTRY.register()
class EvoNormMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """MaskRCNNConvUpsampleHead with conv + layer where it has conv + norm + ReLU; the deconv's ReLU stays."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _drop_relus_after_norms(type(self).__name__, self.conv_norm_relus)


# --------------------------------------------------------------------------------------------------
# Optimizer
# --------------------------------------------------------------------------------------------------


def get_evonorm_optimizer_params(
    model: nn.Module,
    *,
    weight_decay_norm: Optional[float] = None,
    weight_decay_bias: Optional[float] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """detectron2's ``get_default_optimizer_params`` that also gives the registry's layers
    ``weight_decay_norm``.

    detectron2 picks norm parameters by ``isinstance`` against a tuple of torch norm classes built
    inside the function, which EvoNorms are not. As there, a per-name override (``weight_decay_bias``
    for ``bias``, ``overrides``) wins over ``weight_decay_norm``. Drop-in for LazyConfigs:
    ``optimizer.params = L(get_evonorm_optimizer_params)(weight_decay_norm=0.0)``.
    """
    groups = get_default_optimizer_params(
        model, weight_decay_norm=weight_decay_norm, weight_decay_bias=weight_decay_bias, overrides=overrides, **kwargs
    )
    if weight_decay_norm is None:
        return groups
    overridden = {name for name, values in (overrides or {}).items() if "weight_decay" in values}
    if weight_decay_bias is not None:
        overridden.add("bias")
    norm_params = {
        parameter
        for module in model.modules()
        if is_norm_layer(module)
        for name, parameter in module.named_parameters(recurse=False)
        if name not in overridden
    }
    per_parameter = []
    for group in groups:
        for parameter in group["params"]:
            decay = {"weight_decay": weight_decay_norm} if parameter in norm_params else {}
            per_parameter.append({**group, "params": [parameter], **decay})
    return reduce_param_groups(per_parameter)


def build_evonorm_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's ``build_optimizer`` (SGD, gradient clipping) with :func:`get_evonorm_optimizer_params`,
    so EvoNorm parameters get ``SOLVER.WEIGHT_DECAY_NORM``."""
    params = get_evonorm_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        foreach=True,
    )
    return maybe_add_gradient_clipping(cfg, optimizer)


__all__ = [
    "EvoNormBasicBlock",
    "EvoNormBasicStem",
    "EvoNormBottleneckBlock",
    "EvoNormFactory",
    "EvoNormFastRCNNConvFCHead",
    "EvoNormMaskRCNNConvUpsampleHead",
    "REBOUND_MODULES",
    "build_evonorm_optimizer",
    "build_evonorm_resnet_backbone",
    "build_evonorm_resnet_fpn_backbone",
    "evonorm_factory",
    "fpn_norm",
    "get_evonorm_optimizer_params",
    "get_norm",
    "is_norm_layer",
]
