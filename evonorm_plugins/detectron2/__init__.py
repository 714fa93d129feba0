"""detectron2 integration: registry names as ``NORM`` in configs, and models that place EvoNorms right.

Importing this package does two things.

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
(which should not activate). So ``build_model`` is wrapped (and rebound like ``get_norm``) to place
the layers the paper's way in detectron2's stock models (:func:`place_evonorms`): the layer where a
norm + ReLU pair was and its non-activating form (``apply_act=False``) where a norm had no ReLU; the
ReLU after each residual sum stays, as it follows a sum, not a norm. Changing only ``NORM`` in a
detectron2 config is enough. The same placement is also available as explicit blocks, registered in
detectron2's registries:

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

The package mirrors detectron2's own layout: :mod:`.norm` (``get_norm`` with registry names, the norm
factory), :mod:`.backbone` (ResNet blocks and backbones, FPN), :mod:`.roi_heads` (box and mask heads),
:mod:`.placement` (detectron2's stock models placed right when only ``NORM`` names a registry
layer), :mod:`.solver` (optimizer) and :mod:`.train_net` (the ``evonorm-d2-train`` command).
"""
try:
    import detectron2  # noqa: F401
except ImportError as error:
    raise ImportError(
        f"evonorm_plugins.detectron2 needs detectron2, which is not on PyPI: clone "
        f"https://github.com/facebookresearch/detectron2 and run `pip install --no-build-isolation <clone>` "
        f"in an environment that has torch and torchvision ({error})"
    ) from error

from .backbone import (
    EvoNormBasicBlock,
    EvoNormBasicStem,
    EvoNormBottleneckBlock,
    build_evonorm_resnet_backbone,
    build_evonorm_resnet_fpn_backbone,
    fpn_norm,
)
from .norm import (
    REBOUND_MODULES,
    EvoNormFactory,
    NormSpec,
    evonorm_factory,
    get_norm,
    is_norm_layer,
)
from .placement import REBOUND_BUILD_MODEL, build_model, place_evonorms
from .roi_heads import EvoNormFastRCNNConvFCHead, EvoNormMaskRCNNConvUpsampleHead
from .solver import build_evonorm_optimizer, get_evonorm_optimizer_params

__all__ = [
    "EvoNormBasicBlock",
    "EvoNormBasicStem",
    "EvoNormBottleneckBlock",
    "EvoNormFactory",
    "EvoNormFastRCNNConvFCHead",
    "EvoNormMaskRCNNConvUpsampleHead",
    "NormSpec",
    "REBOUND_BUILD_MODEL",
    "REBOUND_MODULES",
    "build_evonorm_optimizer",
    "build_model",
    "build_evonorm_resnet_backbone",
    "build_evonorm_resnet_fpn_backbone",
    "evonorm_factory",
    "fpn_norm",
    "get_evonorm_optimizer_params",
    "get_norm",
    "is_norm_layer",
    "place_evonorms",
]
