"""mmcv / mmengine plugin: every layer of the evonorm_plugins registry as a norm type of mmcv.

Importing this module registers each registered name (``EvoNormB0`` … ``EvoNormS2``, the baselines and
the evolved layers) in mmengine's root ``MODELS`` registry, where mmcv 2.x's ``build_norm_layer`` and
every OpenMMLab 2.x library (mmdet, mmseg, mmpretrain, …) look norm types up, and in mmcv 1.x's
``NORM_LAYERS`` when mmcv 1.x is what is installed::

    import evonorm_plugins.mmcv                        # in code, or in an mmengine config:
    custom_imports = dict(imports=["evonorm_plugins.mmcv"], allow_failed_imports=False)
    norm_cfg = dict(type="EvoNormS0", groups=32)
    norm_cfg = dict(type="SyncEvoNormB0")              # batch statistics synchronized across processes

Every layer with batch statistics (the B-series, batch-dependent genomes, ``BatchNormReLU``) is also
registered as ``Sync<Name>``, as mmcv has ``SyncBN`` for ``BN``: the layer with ``sync_stats=True``
(``dict(type="EvoNormB0", sync_stats=True)`` is the same).

Design decisions
----------------
*Abbreviation.* ``build_norm_layer`` names the layer it returns ``infer_abbr(cls) + postfix``, and
hosts use that name as the attribute, hence as the state-dict key (``bn1``, ``gn``). Without help mmcv
infers it from the class name: ``norm_layer`` for ``EvoNormS0``, but ``bn`` or ``gn`` for an evolved
layer whose name happens to contain "batch" or "group", so keys would change with a rename. Every
EvoNorm and evolved layer is therefore named ``evonorm`` (``evonorm1``, ``evonorm2``, …): stable,
distinct from mmcv's abbreviations, and a precise substring for mmengine's
``paramwise_cfg=dict(custom_keys={"evonorm": dict(decay_mult=0.0)})``.

*Norms to the hosts.* ``mmcv.cnn.is_norm``, mmengine's ``is_norm`` and ``DefaultOptimWrapperConstructor``
(``norm_decay_mult``) know only BN/GN/LN/IN, by an ``isinstance`` on names bound in their modules; the
import binds :class:`InstanceNormOrEvoNorm` there, so every registry layer is a norm to them (the
official code excludes EvoNorm variables from weight decay: ``norm_decay_mult=0`` does it). And
``ConvModule`` with an activating EvoNorm ``norm_cfg`` and an ``act_cfg`` warns once: that is a double
activation. The baselines, which subclass ``nn.BatchNorm2d`` / ``nn.GroupNorm`` and have their state
dicts, keep mmcv's ``bn`` / ``gn`` so BN and GN checkpoints load into them; a class that has an
``_abbr_`` keeps it.

*Builders, not our classes, are registered.* mmcv reads ``_abbr_`` from the class it finds in the
registry. Writing ``_abbr_`` onto our classes would put an mmcv detail into the core and change them for
every user on import; registering subclasses would make ``type(layer)`` a plugin class, so checks like
``type(layer) is EvoNormS0``, pickles and exports would differ between hosts. The registry holds instead
a small builder class per name: it carries ``_abbr_`` and its ``__new__`` returns an instance of the real
class, so what mmcv builds is exactly what ``evonorm_plugins.get_layer`` builds. The consequence:
``MODELS.get("EvoNormS0")`` is the builder (``evonorm_plugins.get_layer_class`` gives the class), and a
config that passes the class itself (``type=EvoNormS0``) bypasses this plugin (mmcv then names it
``norm_layer`` and no ``num_groups`` alias applies): use the name.

*Keywords.* mmcv's ``build_norm_layer`` pops ``requires_grad`` (and sets it on every parameter of the
built layer), always passes ``eps`` (1e-5 unless the config says otherwise, as our default) and calls
``cls(num_features, **other_keys)``; it requires ``num_groups`` only when the class is ``nn.GroupNorm``
itself. So ``dict(type="EvoNormS0")`` needs no group count (32 by default), and GN configs'
``num_groups`` is accepted here as an alias of ``groups``: a GN config such as
``dict(type="GN", num_groups=32, requires_grad=True)`` switches to EvoNorm by changing ``type`` only.
When both come (a config that sets ``groups`` over a GN base's ``num_groups``), ``groups`` wins.

*Unknown names.* For a ``type`` found nowhere, mmcv 2.x's ``build_norm_layer`` raises ``KeyError: 'Cannot
find None in registry ...'``, naming neither the type nor a fix, and mmengine has no hook for misses.
Hosts import ``build_norm_layer`` by name, so it cannot be wrapped either; what it looks up at each call is
its module's global ``MODELS``. The import therefore puts there a :class:`NormTypeLookup`: the same
registry, forwarding everything, except that a miss in ``build_norm_layer``'s lookup raises
:class:`~evonorm_plugins.registry.UnknownLayerError` (a ``KeyError``, as before) in one line with the
registry's "did you mean". mmcv 1.x's own message already names the type and is left alone.

*Registration timing.* mmengine has no hook for unknown names, so lookups cannot be lazy without
replacing its registry. The import registers what the evonorm_plugins registry holds at that moment,
including the genomes named by the ``EVONORM_GENOMES`` environment variable (the way to use evolved
layers from a config file alone), and then mirrors every later ``register_layer`` / ``load_genomes``
as it happens. :func:`register_all` re-syncs by hand; it is idempotent, so repeated imports, reloads
and calls are safe.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Type

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .layers.base import EvoNormBase
from .registry import (
    UnknownLayerError,
    add_registration_listener,
    did_you_mean,
    get_layer_class,
    list_layers,
)
from .sync import SYNC_PREFIX, has_batch_statistics

ABBREVIATION = "evonorm"

# mmcv's own rule for subclasses of the torch norms, applied before falling back on ABBREVIATION
# (_InstanceNorm first: it subclasses _BatchNorm).
_TORCH_NORM_ABBREVIATIONS = ((_InstanceNorm, "in"), (_BatchNorm, "bn"), (nn.GroupNorm, "gn"), (nn.LayerNorm, "ln"))


def _host_registries() -> List[Any]:
    """mmengine's root MODELS (mmcv 2.x) and mmcv 1.x's NORM_LAYERS, those that are installed."""
    registries = []
    try:
        from mmengine.registry import MODELS
    except ImportError:
        pass
    else:
        registries.append(MODELS)
    try:
        from mmcv.cnn import (
            NORM_LAYERS,  # mmcv 1.x only; 2.x looks norm types up in mmengine's MODELS
        )
    except ImportError:
        pass
    else:
        registries.append(NORM_LAYERS)
    if not registries:
        raise ImportError(
            "evonorm_plugins.mmcv needs mmengine (with mmcv 2.x) or mmcv 1.x, and neither is installed; "
            'install them with: pip install "evonorm-plugins[mmcv]"'
        )
    return registries


_REGISTRIES = _host_registries()


def abbreviation(cls: Type[nn.Module]) -> str:
    """The name mmcv gives layers of ``cls`` (``bn``, ``gn``, … or ``evonorm``; see the module docstring)."""
    own = getattr(cls, "_abbr_", None)
    if isinstance(own, str):
        return own
    for base, abbr in _TORCH_NORM_ABBREVIATIONS:
        if issubclass(cls, base):
            return abbr
    return ABBREVIATION


class LayerBuilder:
    """Base of the classes registered with mmcv: calling one builds an instance of ``layer_class``.

    Each registered name gets a subclass that sets ``layer_class``, ``synchronized`` (the ``Sync<Name>``
    builders: ``sync_stats=True``) and mmcv's ``_abbr_``. Instances of the builder itself never exist:
    ``__new__`` returns the layer.
    """

    layer_class: ClassVar[Type[nn.Module]]
    synchronized: ClassVar[bool] = False
    _abbr_: ClassVar[str]

    def __new__(cls, num_features: int, **kwargs: Any) -> nn.Module:  # type: ignore[misc]
        if "num_groups" in kwargs:  # GN configs' name for groups; an explicit groups wins over it, since
            kwargs.setdefault("groups", kwargs.pop("num_groups"))  # configs merge num_groups in from a GN base
        if cls.synchronized:
            kwargs["sync_stats"] = True
        return cls.layer_class(num_features, **kwargs)


def _make_builder(name: str, layer_class: Type[nn.Module], synchronized: bool) -> Type[LayerBuilder]:
    what = "with sync_stats=True " if synchronized else ""
    attributes: Dict[str, Any] = {
        "layer_class": layer_class,
        "synchronized": synchronized,
        "_abbr_": abbreviation(layer_class),
        "__module__": __name__,
        "__doc__": f"Builds evonorm_plugins' {layer_class.__qualname__} {what}({layer_class.__module__}) for mmcv.",
    }
    return type(name, (LayerBuilder,), attributes)


def _register(registry: Any, name: str, layer_class: Type[nn.Module], synchronized: bool = False) -> None:
    """Put a builder for ``layer_class`` under ``name``, unless an up-to-date one is there already."""
    current = registry.module_dict.get(name)
    # Compared by attribute, not by isinstance/issubclass on LayerBuilder: builders made before an
    # importlib.reload() of this module subclass the previous LayerBuilder.
    current_layer = getattr(current, "layer_class", None)
    if current is not None and current_layer is None:
        raise ValueError(
            f"{name!r} is already registered in the {registry.name!r} registry by "
            f"{current.__module__}.{getattr(current, '__qualname__', current)}, which is not an evonorm_plugins "
            f"layer; register the evonorm layer under another name (evonorm_plugins.register_layer) to use it with mmcv"
        )
    if current_layer is layer_class and getattr(current, "synchronized", False) == synchronized:
        return
    registry.register_module(name=name, module=_make_builder(name, layer_class, synchronized), force=True)


def _register_everywhere(name: str, layer_class: Type[nn.Module]) -> None:
    """``name`` in every host registry, and ``Sync<name>`` too for a layer with batch statistics."""
    for registry in _REGISTRIES:
        _register(registry, name, layer_class)
        if has_batch_statistics(layer_class):
            _register(registry, SYNC_PREFIX + name, layer_class, synchronized=True)


def register_all() -> List[str]:
    """Register every layer of the evonorm_plugins registry with mmcv (and ``Sync<Name>`` for those with
    batch statistics); returns the registry names registered.

    Called by the import; layers registered later are mirrored as they are registered, so calling it
    again is only needed to re-sync by hand. Names that are already registered and unchanged are left
    alone.
    """
    registered = []
    for name in list_layers():
        if "." in name:
            warnings.warn(
                f"evonorm_plugins layer {name!r} is not registered with mmcv: mmengine and mmcv read the text "
                f"before a '.' as a registry scope, so no config could name it; register it under a name without "
                f"'.' (e.g. {name.replace('.', '_')!r}) to use it in mmcv configs",
                stacklevel=2,
            )
            continue
        _register_everywhere(name, get_layer_class(name))
        registered.append(name)
    return registered


def _on_register(name: str, layer_class: Type[nn.Module]) -> None:
    """Mirror a layer registered after the import; a clash is a warning, not a failed register_layer."""
    if "." in name:
        return
    try:
        _register_everywhere(name, layer_class)
    except ValueError as error:
        warnings.warn(str(error), stacklevel=3)


class NormTypeLookup:
    """mmengine's ``MODELS`` as mmcv's ``build_norm_layer`` sees it: a norm type found nowhere is an
    :class:`UnknownLayerError` naming it, with the close evonorm_plugins names (see the module docstring)."""

    def __init__(self, models: Any) -> None:
        self.models = models

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.models, attribute)

    @contextlib.contextmanager
    def switch_scope_and_registry(self, scope: Optional[str]) -> Iterator["_CheckedRegistry"]:
        with self.models.switch_scope_and_registry(scope) as registry:
            yield _CheckedRegistry(registry)


class _CheckedRegistry:
    """The registry ``switch_scope_and_registry`` yields, whose ``get`` raises on a miss instead of returning None."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.registry, attribute)

    def get(self, key: str) -> Any:
        found = self.registry.get(key)
        if found is None:
            _, name = self.registry.split_scope_key(key)
            raise UnknownLayerError(
                f"unknown norm_cfg type {key!r}: not registered in mmengine's MODELS (scope {self.registry.scope!r}); "
                f"{did_you_mean(name)}evonorm_plugins layers: {', '.join(n for n in list_layers() if '.' not in n)}; "
                f"mmcv's own norm types include BN, SyncBN, GN, LN, IN; register evolved layers with "
                f"evonorm_plugins.register_layer() / load_genomes() or the EVONORM_GENOMES environment variable"
            )
        return found


class _NormBaseMeta(type):
    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, (_InstanceNorm, EvoNormBase))

    def __subclasscheck__(cls, subclass: type) -> bool:
        return issubclass(subclass, _InstanceNorm)


class InstanceNormOrEvoNorm(metaclass=_NormBaseMeta):
    """Stands for torch's ``_InstanceNorm`` where mmcv and mmengine decide what is a norm layer.

    ``mmcv.cnn.is_norm``, mmengine's ``is_norm`` and the weight-decay rules of
    ``DefaultOptimWrapperConstructor`` (``norm_decay_mult``, ``bias_decay_mult``) test
    ``isinstance(module, (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm))`` against names bound in
    their modules, with no way to add a class. Bound there instead, this also counts EvoNorm and
    evolved layers (the baselines already subclass BatchNorm2d / GroupNorm); subclass checks, which
    mmcv's abbreviation rule makes, are torch's ``_InstanceNorm``'s.
    """


_NORM_CHECK_MODULES = ("mmcv.cnn.bricks.norm", "mmengine.utils.dl_utils.misc", "mmengine.optim.optimizer.default_constructor")


def _recognise_as_norms() -> None:
    """Bind :class:`InstanceNormOrEvoNorm` where the hosts check for norm layers (once; reloads keep it)."""
    import importlib

    for name in _NORM_CHECK_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # mmcv 1.x or a partial install: those checks are not there
            continue
        if getattr(module.__dict__.get("_InstanceNorm"), "__name__", None) == "_InstanceNorm":
            module._InstanceNorm = InstanceNormOrEvoNorm


def _warn_on_double_activation() -> None:
    """``ConvModule`` adds its ``act_cfg`` activation (ReLU by default) after the norm; after an
    activating EvoNorm that is a second activation. Warn once when one is built so."""
    try:
        from mmcv.cnn import ConvModule
    except ImportError:
        return
    if getattr(ConvModule.__init__, "_evonorm_checked", False):
        return
    original = ConvModule.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        norm = getattr(self, "norm", None) if getattr(self, "with_norm", False) else None
        if getattr(self, "with_activation", False) and isinstance(norm, EvoNormBase) and norm.apply_act:
            warnings.warn(
                f"ConvModule with norm_cfg type {type(norm).__name__} also applies act_cfg "
                f"({type(self.activate).__name__}) after it: a double activation, since the EvoNorm is its own "
                f"activation; pass act_cfg=None (or apply_act=False in norm_cfg where a plain norm is meant)",
                stacklevel=2,
            )

    __init__._evonorm_checked = True  # type: ignore[attr-defined]
    ConvModule.__init__ = __init__  # type: ignore[method-assign]


def _install_norm_type_lookup() -> None:
    """Make mmcv 2.x's ``build_norm_layer`` look norm types up through a :class:`NormTypeLookup`."""
    try:
        from mmcv.cnn.bricks import norm
        from mmengine.registry import Registry
    except ImportError:  # mmcv 1.x, or mmengine without mmcv
        return
    if isinstance(getattr(norm, "MODELS", None), Registry):  # a lookup installed before a reload is kept
        norm.MODELS = NormTypeLookup(norm.MODELS)


register_all()
add_registration_listener(_on_register)
_install_norm_type_lookup()
_recognise_as_norms()
_warn_on_double_activation()

__all__ = ["ABBREVIATION", "InstanceNormOrEvoNorm", "LayerBuilder", "NormTypeLookup", "abbreviation", "register_all"]
