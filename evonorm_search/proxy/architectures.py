"""The proxy architectures (the paper's, width-reduced and adapted to 32×32 inputs by a stride-1 stem),
built with timm with the candidate in place of every norm + activation pair:

* ``resnet50v2``: pre-activation ResNet-50 (timm ``ResNetV2``), channels × ``width``, depths configurable;
* ``mobilenetv2``: MobileNetV2, channels × ``width``;
* ``efficientnet_b0``: EfficientNet-B0, channels × ``width``, depth × ``depth``.

A new proxy architecture is a builder ``(layer, width, depth, num_classes) -> nn.Module`` added to
:data:`ARCHITECTURES`.
"""
from __future__ import annotations

import difflib
from typing import Annotated, Callable, Dict, Optional, Sequence, Tuple, Type

from pydantic import Field
from torch import nn

from ..schema import config_class


def _resnet50v2(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    from timm.layers import create_conv2d
    from timm.models.resnetv2 import ResNetV2

    channels = tuple(max(8, int(c * width)) for c in (256, 512, 1024, 2048))
    stem = max(8, int(64 * width))
    model = ResNetV2(
        layers=list(depth), channels=channels, stem_chs=stem, num_classes=num_classes,
        norm_layer=layer, conv_layer=create_conv2d, preact=True,
    )
    model.stem = nn.Conv2d(3, stem, 3, padding=1, bias=False)  # 32×32: no 4× downsampling stem
    return model


def _timm_efficientnet_family(generator: str, variant: str, **kwargs) -> nn.Module:
    from timm.models import efficientnet

    build = getattr(efficientnet, generator, None)
    if build is None:
        raise RuntimeError(f"timm.models.efficientnet.{generator} is missing in this timm; install timm>=1.0,<2")
    model = build(variant, **kwargs)
    model.conv_stem.stride = (1, 1)  # 32×32: keep resolution in the stem
    return model


def _mobilenetv2(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    return _timm_efficientnet_family("_gen_mobilenet_v2", "mobilenetv2_100", channel_multiplier=width,
                                     num_classes=num_classes, norm_layer=layer)


def _efficientnet_b0(layer: Callable[..., nn.Module], width: float, depth: Sequence[int], num_classes: int) -> nn.Module:
    depth_multiplier = depth[0] if depth else 1.0
    return _timm_efficientnet_family("_gen_efficientnet", "efficientnet_b0", channel_multiplier=width,
                                     depth_multiplier=depth_multiplier, num_classes=num_classes, norm_layer=layer)


ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {
    "resnet50v2": _resnet50v2,
    "mobilenetv2": _mobilenetv2,
    "efficientnet_b0": _efficientnet_b0,
}


@config_class
class ArchitectureConfig:
    """One proxy architecture: ``name`` from :data:`ARCHITECTURES`, a width multiplier, and depths
    (resnet50v2: blocks per stage; efficientnet_b0: ``[depth_multiplier]``; mobilenetv2: unused).
    ``steps`` and ``lr`` override the evaluation's ``train_steps`` and ``lr`` for this architecture
    (depthwise networks want a lower rate than ResNets)."""


    name: str
    width: Annotated[float, Field(gt=0, le=4)] = 0.25
    depth: Tuple[Annotated[float, Field(gt=0)], ...] = ()
    steps: Optional[Annotated[int, Field(gt=0)]] = None
    lr: Optional[Annotated[float, Field(gt=0)]] = None

    def __post_init__(self) -> None:
        if self.name not in ARCHITECTURES:
            close = difflib.get_close_matches(self.name, list(ARCHITECTURES), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown proxy architecture {self.name!r}; {hint}choose from {', '.join(ARCHITECTURES)}")

    def build(self, layer: Type[nn.Module], num_classes: int = 10) -> nn.Module:
        depth = self.depth or ((3, 4, 6, 3) if self.name == "resnet50v2" else ())
        if self.name == "resnet50v2":
            depth = tuple(int(d) for d in depth)

        def norm_layer(num_features: int, **kwargs) -> nn.Module:
            # timm takes a plain function as a norm-act factory, so unregistered candidates need no registration
            return layer(num_features, **kwargs)

        return ARCHITECTURES[self.name](norm_layer, self.width, depth, num_classes)
