"""NORM alone does the right thing: detectron2's stock models, placed the paper's way.

A registry layer is its own activation, but detectron2's stock modules were written for BN/GN: they
apply a ReLU after most norms, and have norms no ReLU follows. :func:`place_evonorms` rewrites a built
model in place, keeping detectron2's module tree and state-dict keys:

* a norm + ReLU pair becomes the activating layer alone: a ``Conv2d``'s ``activation`` is dropped
  (box, mask and semantic-segmentation heads), a ``ReLU`` module after the norm in an ``nn.Sequential``
  becomes ``Identity`` (RetinaNet's subnets), and the ResNet stem and blocks, whose ReLUs are calls in
  ``forward``, become the :mod:`.backbone` classes (same attributes, their own ``forward``);
* a norm no ReLU follows becomes non-activating (``apply_act=False``): the last norm of each residual
  branch, the shortcut's, and FPN's lateral and output norms; the ReLU after each residual sum stays;
* frozen blocks (``FREEZE_AT``) keep their norms in eval mode, so running statistics stay frozen too.

A module the rules do not know that holds a registry layer in a ``Conv2d`` without activation is
reported in one warning: its ``forward`` may apply a ReLU of its own, which this cannot see.

Importing the plugin wraps ``detectron2.modeling.build_model`` (rebound like ``get_norm``) with this,
so yacs configs that only set ``NORM`` keys, ``DefaultTrainer`` and ``DefaultPredictor`` get it; for
LazyConfigs call ``place_evonorms(model)`` after ``instantiate`` or use the :mod:`.backbone` blocks.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Dict, Iterable, List, Optional, Type

import detectron2.modeling
from detectron2.layers import Conv2d
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock
from torch import nn

from ..registry import REGISTRY
from .backbone import (
    EvoNormBasicBlock,
    EvoNormBasicStem,
    EvoNormBottleneckBlock,
    _FrozenNormsStayInEval,
)
from .norm import is_norm_layer, rebind

# stock class -> (the class with the paper's forward, the convs whose norm no ReLU follows)
_BLOCKS: Dict[Type[nn.Module], tuple] = {
    BasicStem: (EvoNormBasicStem, ()),
    BasicBlock: (EvoNormBasicBlock, ("conv2", "shortcut")),
    BottleneckBlock: (EvoNormBottleneckBlock, ("conv3", "shortcut")),
}


def _registry_name(layer: nn.Module) -> str:
    """The name a registry layer's class is registered under."""
    for name in REGISTRY.names():
        if REGISTRY.get_class(name) is type(layer):
            return name
    raise ValueError(f"{type(layer).__name__} is not a layer of the evonorm_plugins registry")


def _activates(norm: nn.Module) -> bool:
    """Whether a registry layer applies its non-linearity (EvoNorms: ``apply_act``; the baselines: an
    activation module that is not ``Identity``)."""
    if hasattr(norm, "apply_act"):
        return bool(norm.apply_act)
    return not isinstance(getattr(norm, "act", None), nn.Identity)


def _stop_activating(convs: Iterable[Optional[nn.Module]]) -> None:
    """Rebuild each conv's registry norm in its non-activating form (same class, fresh parameters:
    the model is being built, not trained; a synchronized norm stays synchronized)."""
    for conv in convs:
        norm = getattr(conv, "norm", None)
        if is_norm_layer(norm) and _activates(norm):
            conv.norm = REGISTRY.get(
                _registry_name(norm), conv.out_channels, apply_act=False,
                sync_stats=getattr(norm, "sync_stats", False), process_group=getattr(norm, "process_group", None),
            )


def place_evonorms(model: nn.Module) -> List[str]:
    """Rewrite ``model`` in place so every registry layer sits the paper's way (see the module
    docstring). Returns the names of the modules it changed; modules with no registry layer are left
    as they are, so a BN or GN model comes back unchanged."""
    changed: List[str] = []
    unknown: List[str] = []
    for name, module in list(model.named_modules()):
        kind = type(module)
        if kind in _BLOCKS and is_norm_layer(getattr(module.conv1, "norm", None)):
            placed_class, linear = _BLOCKS[kind]
            frozen = all(not p.requires_grad for p in module.parameters())  # by FREEZE_AT, before we came
            _stop_activating(getattr(module, conv, None) for conv in linear)
            module.__class__ = placed_class
            if frozen:
                module.freeze()
            changed.append(name)
        elif kind is FPN and any(is_norm_layer(c.norm) for c in [*module.lateral_convs, *module.output_convs]):
            _stop_activating([*module.lateral_convs, *module.output_convs])
            changed.append(name)
        elif isinstance(module, Conv2d) and is_norm_layer(module.norm) and module.activation is not None:
            module.activation = None
            changed.append(name)
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, before), (index, child) in zip(children, children[1:]):
                if is_norm_layer(before) and _activates(before) and isinstance(child, nn.ReLU):
                    setattr(module, index, nn.Identity())
                    changed.append(f"{name}.{index}")
        elif not isinstance(module, _FrozenNormsStayInEval) and any(  # Sequentials and FPNs with registry layers were handled above
            isinstance(child, Conv2d) and is_norm_layer(child.norm) and child.activation is None
            and _activates(child.norm) for child in module.children()
        ):
            unknown.append(f"{name or 'model'} ({kind.__name__})")
    if unknown:
        warnings.warn(
            f"evonorm_plugins.detectron2 cannot tell whether these modules apply a ReLU after their "
            f"EvoNorm-type norms (a double activation): {', '.join(unknown)}; check their forward, or "
            f"use a NORM that is not its own activation there", stacklevel=2,
        )
    return changed


_detectron2_build_model = detectron2.modeling.build_model


@functools.wraps(_detectron2_build_model)
def build_model(cfg: Any) -> nn.Module:
    """detectron2's ``build_model`` followed by :func:`place_evonorms`."""
    model = _detectron2_build_model(cfg)
    place_evonorms(model)
    return model


REBOUND_BUILD_MODEL: List[str] = rebind("build_model", _detectron2_build_model, build_model)

__all__ = ["REBOUND_BUILD_MODEL", "build_model", "place_evonorms"]
