"""timm integration: every layer of the evonorm_plugins registry becomes a timm norm-act type.

``import evonorm_plugins.timm`` registers all layers, and keeps registering the ones added to the
registry later (evolved genomes included), so that timm models that take norm-act layers
(resnetv2, regnet, byobnet/regnetz/repvgg, cspnet, efficientnet, ...) accept them::

    import timm
    import evonorm_plugins.timm  # registers
    from evonorm_plugins import EvoNormS0

    timm.create_model("resnetv2_50d", norm_layer=EvoNormS0)                    # by class
    timm.create_model("resnetv2_50d", norm_layer="evonorm_plugins.EvoNormS0")  # by name
    timm.create_model("regnetz_005", norm_layer="my_evolved_layer")            # evolved, by name

Names. timm looks a string up after lower-casing it, dropping ``_`` and cutting at the first ``-``.
Every layer is reachable as ``"evonorm_plugins.<Name>"``; a layer whose plain name does not collide
with one of timm's own entries (``"GroupNormSiLU"``, ``"my_evolved_layer"``) is also reachable by that
name. timm's own ``evonormb0 … evonorms2`` entries are never replaced silently: ``register(
override_timm_names=True)`` is the explicit opt-in that makes ``norm_layer="evonorms0"`` build ours.

timm keeps these tables in private module attributes of ``timm.layers.create_norm_act``
(``_NORM_ACT_MAP``, ``_NORM_ACT_TYPES``); :func:`register` checks that they have the expected form and
raises a clear error otherwise. It also puts the same entries in a ``dict`` subclass whose only
difference is a missing name: timm indexes the map with the name it was given, and instead of its bare
``KeyError: 'evonormplugins.evonorms9'`` the user reads one line with the registry's "did you mean".
"""
from __future__ import annotations

from typing import Any, Dict, List, MutableMapping, MutableSet, Set, Tuple, Type

from torch import nn

from .registry import (
    UnknownLayerError,
    add_registration_listener,
    did_you_mean,
    get_layer_class,
    list_layers,
)

try:
    import timm
    from timm.layers import create_norm_act as _timm_create_norm_act
except ImportError as error:  # pragma: no cover - exercised only without timm
    raise ImportError('evonorm_plugins.timm needs timm: pip install "evonorm-plugins[timm]"') from error

NAMESPACE = "evonorm_plugins."
MIN_TIMM_VERSION = (0, 9)
_timm_originals: Dict[str, Any] = {}  # timm's own entries replaced by an explicit override
_mirrored: Set[Type[nn.Module]] = set()  # every class this module has put into timm's tables


def timm_key(name: str) -> str:
    """The key timm's ``get_norm_act_layer`` looks a string up under."""
    return name.replace("_", "").lower().split("-")[0]


class _NormActMap(dict):
    """timm's name → class map, whose misses name the problem and the close layer names."""

    def __missing__(self, key: str) -> Any:
        timm_own = sorted(k for k, cls in self.items() if cls not in _mirrored)
        name = key[len(timm_key(NAMESPACE)):] if key.startswith(timm_key(NAMESPACE)) else key
        raise UnknownLayerError(
            f"unknown timm norm-act layer {key!r} (timm lower-cases names and drops '_'); "
            f"{did_you_mean(name, normalize=timm_key, prefix=NAMESPACE)}evonorm_plugins layers are "
            f"'{NAMESPACE}<Name>' with Name one of {', '.join(list_layers())} (evolved layers: register_layer(), "
            f"load_genomes() or EVONORM_GENOMES); timm's own are {', '.join(timm_own)}"
        )


def _timm_tables() -> Tuple[MutableMapping[str, Any], MutableSet[Any]]:
    """timm's private name → class map (made a :class:`_NormActMap` on first use) and set of norm-act
    classes, after checking their form."""
    version = tuple(int(part) for part in timm.__version__.split(".")[:2] if part.isdigit())
    name_map = getattr(_timm_create_norm_act, "_NORM_ACT_MAP", None)
    types = getattr(_timm_create_norm_act, "_NORM_ACT_TYPES", None)
    if version < MIN_TIMM_VERSION or not isinstance(name_map, dict) or not isinstance(types, set):
        raise RuntimeError(
            f"evonorm_plugins.timm supports timm >= {'.'.join(map(str, MIN_TIMM_VERSION))} whose "
            f"timm.layers.create_norm_act has the dict _NORM_ACT_MAP and the set _NORM_ACT_TYPES; timm "
            f"{timm.__version__} does not. Install a supported timm (pip install 'timm>=1.0') or pass the "
            f"layer class through a lambda: norm_layer=lambda c, **kw: EvoNormS0(c, **kw)"
        )
    if type(name_map) is dict:  # a map made by an earlier import (or reload) of this module is kept
        name_map = _NormActMap(name_map)
        _timm_create_norm_act._NORM_ACT_MAP = name_map
    return name_map, types


def _register_one(name: str, cls: Type[nn.Module], override_timm_names: bool) -> List[str]:
    """Add ``cls`` to timm's norm-act types and map its keys to it; returns the keys.

    A plain key already mapped to a class of ours (an earlier registration under a name with the
    same timm spelling) is replaced; one mapped to timm's own class only with the override.
    """
    name_map, types = _timm_tables()
    types.add(cls)
    _mirrored.add(cls)
    keys = [timm_key(NAMESPACE + name)]
    plain = timm_key(name)
    current = name_map.get(plain)
    ours = current is None or current in _mirrored
    if ours or override_timm_names:
        if not ours and plain not in _timm_originals:
            _timm_originals[plain] = current
        keys.append(plain)
    for key in keys:
        name_map[key] = cls
    return keys


def register(override_timm_names: bool = False) -> Dict[str, List[str]]:
    """Register every layer of the registry with timm; returns ``{layer name: timm keys}``.

    ``override_timm_names=True`` also makes timm's own names (``"evonorms0"``, ...) build our layers
    of the same name; :func:`restore_timm_names` undoes it.
    """
    registered = {name: _register_one(name, get_layer_class(name), override_timm_names) for name in list_layers()}
    add_registration_listener(_on_register)
    return registered


def _on_register(name: str, cls: Type[nn.Module]) -> None:
    _register_one(name, cls, override_timm_names=False)


def restore_timm_names() -> None:
    """Give timm's own entries back after ``register(override_timm_names=True)``."""
    name_map, _ = _timm_tables()
    name_map.update(_timm_originals)
    _timm_originals.clear()


register()

__all__ = ["NAMESPACE", "register", "restore_timm_names", "timm_key"]
