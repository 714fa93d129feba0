"""detectron2's box and mask heads with conv + registry layer where they have conv + norm + ReLU.
Registered in ``ROI_BOX_HEAD_REGISTRY`` and ``ROI_MASK_HEAD_REGISTRY``."""
from __future__ import annotations

from typing import Any, Iterable

from detectron2.layers import Conv2d
from detectron2.modeling import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, MaskRCNNConvUpsampleHead

from .norm import is_norm_layer


def _drop_relus_after_norms(owner: str, convs: Iterable[Conv2d]) -> None:
    """Remove the ReLU of each conv + norm + ReLU: the norm layer is the activation."""
    for conv in convs:
        if not is_norm_layer(conv.norm):
            raise ValueError(
                f"{owner} needs its NORM (conv_norm) to name an evonorm_plugins layer, e.g. 'EvoNormS0', got "
                f"a {type(conv.norm).__name__} (evolved layers must be registered first: register_layer(), load_genomes() "
                f"or EVONORM_GENOMES); for GN or BN use detectron2's head without the 'EvoNorm' prefix, which places "
                f"registry layers itself"
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
