"""The named layer registry every integration (timm, detectron2, mmcv, BigGAN) resolves names from.

Pre-registered: the paper layers ``EvoNormB0 … EvoNormS2`` (hand-written classes, with their genomes
attached) and the baselines ``BatchNormReLU``, ``BatchNormSiLU``, ``GroupNormReLU``, ``GroupNormSiLU``.
Evolved layers come in as genomes::

    register_layer("MyLayer", Genome.load("my_layer.json"))
    load_genomes("evolved/")                 # every *.json in the folder, by its "name" or file stem
    get_layer("MyLayer", 64)                 # a GraphNormAct running that genome

or without code, through the environment variable ``EVONORM_GENOMES``: a list of genome files or
folders separated by ``os.pathsep`` (``:`` on Linux), loaded on the first use of the registry.
Names are case-sensitive.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Type, Union

from torch import nn

from .graph.genome import Genome
from .graph.module import GraphNormAct
from .layers import EvoNormB0, EvoNormB1, EvoNormB2, EvoNormS0, EvoNormS1, EvoNormS2
from .layers.baselines import BatchNormReLU, BatchNormSiLU, GroupNormReLU, GroupNormSiLU

ENV_VAR = "EVONORM_GENOMES"
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class LayerEntry:
    """A registered layer: the class built for it and, when it has one, its genome."""

    name: str
    cls: Type[nn.Module]
    genome: Optional[Genome]


class UnknownLayerError(KeyError):
    """An unregistered layer name; the message lists the close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_registry: Dict[str, LayerEntry] = {}
_env_loaded: Optional[str] = None
_listeners: List[Callable[[str, Type[nn.Module]], None]] = []


def add_registration_listener(callback: Callable[[str, Type[nn.Module]], None]) -> None:
    """Call ``callback(name, cls)`` for every layer registered (or replaced) from now on.

    The framework integrations use this to mirror the registry: a layer registered after
    ``import evonorm_plugins.timm`` is usable in timm at once. Adding the same callback twice is a no-op.
    """
    if callback not in _listeners:
        _listeners.append(callback)


def make_layer_class(name: str, genome: Genome) -> Type[GraphNormAct]:
    """A ``GraphNormAct`` subclass named ``name`` that runs ``genome``: a class with the uniform
    constructor ``(num_features, *, eps, groups, group_size, momentum, apply_act, ...)`` that
    frameworks can register like any norm layer."""
    return type(name, (GraphNormAct,), {"default_genome": genome, "__doc__": f"{name}: {genome.formula()} · γ + β"})


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ValueError(
            f"layer name {name!r} is not valid: use letters, digits, '_', '-' or '.', starting with a "
            f"letter or '_' (e.g. 'EvoNormS0' or 'evolved_0042')"
        )
    return name


def register_layer(
    name: str, layer: Union[Genome, Type[nn.Module]], overwrite: bool = False
) -> Type[nn.Module]:
    """Register a genome or an ``nn.Module`` class (with the uniform constructor) under ``name``.

    Registering the same genome or class again under the same name is a no-op (so re-imports and
    re-loads are safe); a different one needs ``overwrite=True``. Returns the class.
    """
    _check_name(name)
    if isinstance(layer, Genome):
        genome: Optional[Genome] = layer
        existing = _registry.get(name)
        if existing is not None and existing.genome is not None and existing.genome.hash() == layer.hash():
            return existing.cls
        cls: Type[nn.Module] = make_layer_class(name, layer)
    elif isinstance(layer, type) and issubclass(layer, nn.Module):
        genome = getattr(layer, "default_genome", None)
        cls = layer
    else:
        raise TypeError(f"register_layer({name!r}, ...) takes a Genome or an nn.Module subclass, got {type(layer).__name__}")
    existing = _registry.get(name)
    if existing is not None and existing.cls is not cls and not overwrite:
        raise ValueError(
            f"layer {name!r} is already registered ({existing.cls.__module__}.{existing.cls.__qualname__}); "
            f"pass overwrite=True to replace it, or choose another name"
        )
    _registry[name] = LayerEntry(name, cls, genome)
    for callback in _listeners:
        callback(name, cls)
    return cls


def unregister_layer(name: str) -> None:
    """Remove ``name`` from the registry (for tests and interactive sessions)."""
    _entry(name)
    del _registry[name]


def load_genomes(path: Union[str, Path], overwrite: bool = False) -> List[str]:
    """Register the genome in a JSON file, or every ``*.json`` in a folder, under its ``name`` (or the
    file's stem when it has none). Returns the names registered."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no genome file or folder at {str(path)!r}; give a .json file or a folder of them")
    names = []
    for file in files:
        genome = Genome.load(file)
        name = genome.name or file.stem
        register_layer(name, genome, overwrite=overwrite)
        names.append(name)
    return names


def _load_environment() -> None:
    """Load the paths in ``EVONORM_GENOMES`` once per distinct value of the variable."""
    global _env_loaded
    value = os.environ.get(ENV_VAR, "")
    if value == _env_loaded:
        return
    _env_loaded = value
    for part in filter(None, value.split(os.pathsep)):
        if not Path(part).exists():
            _env_loaded = None
            raise FileNotFoundError(
                f"{ENV_VAR} names {part!r}, which does not exist; set it to genome files or folders "
                f"separated by {os.pathsep!r}"
            )
        load_genomes(part)


def did_you_mean(name: str, normalize: Callable[[str], str] = str.lower, prefix: str = "") -> str:
    """``"did you mean 'EvoNormS0'? "`` for the registered layers ``name`` may have meant, or ``""``.

    Those equal to ``name`` once both are normalized (by default: case ignored) are suggested, else up
    to three close spellings. The integrations pass their hosts' rule (timm lower-cases and drops
    ``_``) and the ``prefix`` their users write before a name (``"evonorm_plugins."`` in timm).
    """
    candidates: Dict[str, List[str]] = {}
    for registered in list_layers():
        candidates.setdefault(normalize(registered), []).append(registered)
    key = normalize(str(name))
    keys = [key] if key in candidates else difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
    close = [prefix + registered for k in keys for registered in candidates[k]]
    return f"did you mean {', '.join(map(repr, close))}? " if close else ""


def _entry(name: str) -> LayerEntry:
    _load_environment()
    entry = _registry.get(name)
    if entry is not None:
        return entry
    raise UnknownLayerError(
        f"unknown layer {name!r}; {did_you_mean(name)}names are case-sensitive. "
        f"Registered: {', '.join(sorted(_registry))}. Add evolved layers with register_layer(), load_genomes() or the {ENV_VAR} environment variable."
    )


def get_layer_class(name: str) -> Type[nn.Module]:
    """The class registered under ``name``."""
    return _entry(name).cls


def get_layer(name: str, num_features: int, **kwargs: Any) -> nn.Module:
    """Build the layer registered under ``name`` for ``num_features`` channels."""
    return get_layer_class(name)(num_features, **kwargs)


def get_genome(name: str) -> Genome:
    """The genome of a registered layer (the baselines have none)."""
    entry = _entry(name)
    if entry.genome is None:
        raise ValueError(f"layer {name!r} is a hand-written module with no genome; genomes exist for the EvoNorms and evolved layers")
    return entry.genome


def list_layers() -> List[str]:
    """All registered names, sorted."""
    _load_environment()
    return sorted(_registry)


def paper_genome(name: str) -> Genome:
    """The shipped genome of a paper layer: ``"EvoNormB0"`` … ``"EvoNormS2"``."""
    file = resources.files("evonorm_plugins") / "genomes" / f"{name.lower().replace('evonorm', 'evonorm_')}.json"
    if not name.startswith("EvoNorm") or not file.is_file():
        raise ValueError(f"{name!r} is not a paper layer; choose one of EvoNormB0, B1, B2, S0, S1, S2")
    return Genome.from_json(file.read_text(), source=str(file))


def _register_builtins() -> None:
    for cls in (EvoNormB0, EvoNormB1, EvoNormB2, EvoNormS0, EvoNormS1, EvoNormS2):
        _registry[cls.__name__] = LayerEntry(cls.__name__, cls, paper_genome(cls.__name__))
    for cls in (BatchNormReLU, BatchNormSiLU, GroupNormReLU, GroupNormSiLU):
        _registry[cls.__name__] = LayerEntry(cls.__name__, cls, None)


_register_builtins()

__all__ = [
    "ENV_VAR",
    "add_registration_listener",
    "did_you_mean",
    "LayerEntry",
    "UnknownLayerError",
    "get_genome",
    "get_layer",
    "get_layer_class",
    "list_layers",
    "load_genomes",
    "make_layer_class",
    "paper_genome",
    "register_layer",
    "unregister_layer",
]
