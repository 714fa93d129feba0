"""Registry names as detectron2 ``NORM`` values, and the norm callable for blocks and LazyConfigs.

detectron2 builds its name table inside ``get_norm`` and about a dozen modules bind the function at
import (``from detectron2.layers import get_norm``), so there is no table to extend and patching one
module attribute reaches nothing else. This module therefore wraps ``get_norm`` once and rebinds
*every* loaded module attribute that holds detectron2's function (found by identity, so unrelated
``get_norm`` functions are left alone); modules imported later pick the wrapper up from
``detectron2.layers``.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union

import detectron2
import detectron2.layers
import detectron2.modeling  # noqa: F401  (binds get_norm in every model module before the rebinding)
from detectron2.layers import batch_norm as _batch_norm
from torch import nn

from ..registry import get_layer, get_layer_class, list_layers
from ..sync import synchronized_names, unsynchronized_name

NormSpec = Union[str, "EvoNormFactory"]


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
    know is built from the registry (activating form) for ``out_channels`` channels, and
    ``Sync<Name>`` (``SyncEvoNormB0``, like detectron2's ``SyncBN``) builds ``<Name>`` with its batch
    statistics synchronized across the training processes (``sync_stats=True``).
    """
    try:
        return _detectron2_get_norm(norm, out_channels)
    except KeyError:
        if not isinstance(norm, str):
            raise
    factory = registry_factory(norm)
    if factory is not None:
        return factory(out_channels)
    raise ValueError(
        f"unknown NORM {norm!r}: it is neither a detectron2 norm (BN, SyncBN, FrozenBN, GN, LN, nnSyncBN, "
        f"naiveSyncBN, naiveSyncBN_N) nor an evonorm_plugins layer ({', '.join(list_layers())}, or synchronized: "
        f"{', '.join(synchronized_names())}); names are case-sensitive, and evolved layers must be registered "
        f"(register_layer, load_genomes or EVONORM_GENOMES) before the model is built"
    )


def rebind(attribute: str, original: Any, replacement: Any) -> List[str]:
    """Point every loaded module's ``attribute`` that holds ``original`` at ``replacement``.

    Returns the names of the modules rebound. Modules are matched by the identity of the attribute's
    value (read from the module's ``__dict__``, so no lazy ``__getattr__`` runs).
    """
    rebound = []
    for name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get(attribute) is original:
            namespace[attribute] = replacement
            rebound.append(name)
    return rebound


REBOUND_MODULES: Tuple[str, ...] = tuple(rebind("get_norm", _detectron2_get_norm, get_norm))


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
    the layer's constructor (``groups``, ``momentum``, ``eps``, ``sync_stats=True`` to synchronize batch
    statistics across processes, ...). A picklable dataclass rather than a lambda, so configs holding it
    can be saved.
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


def registry_factory(norm: Any) -> Optional[EvoNormFactory]:
    """The factory a ``NORM`` string names in the registry — a layer, or ``Sync<Name>`` for the layer
    with ``sync_stats=True`` — or ``None`` when it names neither."""
    if not isinstance(norm, str):
        return None
    if norm in list_layers():
        return EvoNormFactory(norm)
    base = unsynchronized_name(norm)
    return None if base is None else EvoNormFactory(base, kwargs={"sync_stats": True})


def evonorm_factory(norm: NormSpec, owner: str) -> EvoNormFactory:
    """``norm`` as an :class:`EvoNormFactory`; ``owner`` names the block for the error message."""
    if isinstance(norm, EvoNormFactory):
        return norm
    factory = registry_factory(norm)
    if factory is not None:
        return factory
    raise ValueError(
        f"{owner} needs norm to name an evonorm_plugins layer (e.g. 'EvoNormS0') or be an EvoNormFactory, "
        f"got {norm!r} (evolved layers must be registered first: register_layer(), load_genomes() or the "
        f"EVONORM_GENOMES environment variable). It leaves out the ReLU after each norm because the layer is its "
        f"own activation; for BN or GN use detectron2's own block, or 'BatchNormReLU' / 'GroupNormReLU' here"
    )
