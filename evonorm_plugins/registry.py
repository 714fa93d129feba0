"""The named layer registry every integration (timm, detectron2, mmcv, BigGAN) resolves names from.

Pre-registered: the paper layers ``EvoNormB0 … EvoNormS2`` (hand-written classes, with their genomes
attached), the baselines ``BatchNormReLU``, ``BatchNormSiLU``, ``GroupNormReLU``, ``GroupNormSiLU``, and
the layers this project's searches found (``genomes/evolved/*.json``, by their names).
Evolved layers come in as genomes::

    register_layer("MyLayer", Genome.load("my_layer.json"))
    load_genomes("evolved/")                 # every *.json in the folder, by its "name" or file stem
    get_layer("MyLayer", 64)                 # a GraphNormAct running that genome

or without code, through the environment variable ``EVONORM_GENOMES``: a list of genome files or
folders separated by ``os.pathsep`` (``:`` on Linux), loaded on the first use of the registry.
Names are case-sensitive.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Type, Union

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


class LayerRegistry:
    """Layer names → classes (and genomes), with listeners that mirror registrations into frameworks.

    The contract: a registered class has the uniform constructor ``(num_features, **kwargs)``; a name
    maps to one class until it is replaced with ``overwrite=True``; a lookup of an unknown name raises
    :class:`UnknownLayerError` listing close matches. The process-wide instance is :data:`REGISTRY`,
    which the module-level functions use; :meth:`snapshot` scopes changes to it (tests, notebooks).
    """

    def __init__(self) -> None:
        self._entries: Dict[str, LayerEntry] = {}
        self._env_loaded: Optional[str] = None
        self._listeners: List[Callable[[str, Type[nn.Module]], None]] = []

    def add_listener(self, callback: Callable[[str, Type[nn.Module]], None]) -> None:
        """Call ``callback(name, cls)`` for every layer registered (or replaced) from now on.

        The framework integrations use this to mirror the registry: a layer registered after
        ``import evonorm_plugins.timm`` is usable in timm at once. Adding the same callback twice is a no-op.
        """
        if callback not in self._listeners:
            self._listeners.append(callback)

    def register(self, name: str, layer: Union[Genome, Type[nn.Module]], overwrite: bool = False,
                 genome: Optional[Genome] = None) -> Type[nn.Module]:
        """Register a genome or an ``nn.Module`` class (with the uniform constructor) under ``name``;
        ``genome`` attaches the genome a hand-written class computes (the paper layers).

        Registering the same genome or class again under the same name is a no-op (so re-imports and
        re-loads are safe); a different one needs ``overwrite=True``. Returns the class.
        """
        _check_name(name)
        existing = self._entries.get(name)
        if isinstance(layer, Genome):
            genome = layer
            if existing is not None and existing.genome is not None and existing.genome.hash() == layer.hash():
                return existing.cls
            cls: Type[nn.Module] = make_layer_class(name, layer)
        elif isinstance(layer, type) and issubclass(layer, nn.Module):
            genome = genome or getattr(layer, "default_genome", None)
            cls = layer
        else:
            raise TypeError(f"register_layer({name!r}, ...) takes a Genome or an nn.Module subclass, got {type(layer).__name__}")
        if existing is not None and existing.cls is not cls and not overwrite:
            raise ValueError(
                f"layer {name!r} is already registered ({existing.cls.__module__}.{existing.cls.__qualname__}); "
                f"pass overwrite=True to replace it, or choose another name"
            )
        self._entries[name] = LayerEntry(name, cls, genome)
        for callback in self._listeners:
            callback(name, cls)
        return cls

    def unregister(self, name: str) -> None:
        """Remove ``name`` from the registry (for tests and interactive sessions)."""
        self.entry(name)
        del self._entries[name]

    def load_genomes(self, path: Union[str, Path], overwrite: bool = False) -> List[str]:
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
            self.register(name, genome, overwrite=overwrite)
            names.append(name)
        return names

    def _load_environment(self) -> None:
        """Load the paths in ``EVONORM_GENOMES`` once per distinct value of the variable."""
        value = os.environ.get(ENV_VAR, "")
        if value == self._env_loaded:
            return
        self._env_loaded = value
        for part in filter(None, value.split(os.pathsep)):
            if not Path(part).exists():
                self._env_loaded = None
                raise FileNotFoundError(
                    f"{ENV_VAR} names {part!r}, which does not exist; set it to genome files or folders "
                    f"separated by {os.pathsep!r}"
                )
            self.load_genomes(part)

    def entry(self, name: str) -> LayerEntry:
        """The entry registered under ``name``; :class:`UnknownLayerError` with close matches if none."""
        self._load_environment()
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        raise UnknownLayerError(
            f"unknown layer {name!r}; {self.did_you_mean(name)}names are case-sensitive. "
            f"Registered: {', '.join(sorted(self._entries))}. Add evolved layers with register_layer(), "
            f"load_genomes() or the {ENV_VAR} environment variable."
        )

    def did_you_mean(self, name: str, normalize: Callable[[str], str] = str.lower, prefix: str = "") -> str:
        """``"did you mean 'EvoNormS0'? "`` for the registered layers ``name`` may have meant, or ``""``.

        Those equal to ``name`` once both are normalized (by default: case ignored) are suggested, else
        up to three close spellings. The integrations pass their hosts' rule (timm lower-cases and drops
        ``_``) and the ``prefix`` their users write before a name (``"evonorm_plugins."`` in timm).
        """
        candidates: Dict[str, List[str]] = {}
        for registered in self.names():
            candidates.setdefault(normalize(registered), []).append(registered)
        key = normalize(str(name))
        keys = [key] if key in candidates else difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.6)
        close = [prefix + registered for k in keys for registered in candidates[k]]
        return f"did you mean {', '.join(map(repr, close))}? " if close else ""

    def get_class(self, name: str) -> Type[nn.Module]:
        """The class registered under ``name``."""
        return self.entry(name).cls

    def get(self, name: str, num_features: int, **kwargs: Any) -> nn.Module:
        """Build the layer registered under ``name`` for ``num_features`` channels."""
        return self.get_class(name)(num_features, **kwargs)

    def genome(self, name: str) -> Genome:
        """The genome of a registered layer (the baselines have none)."""
        entry = self.entry(name)
        if entry.genome is None:
            raise ValueError(f"layer {name!r} is a hand-written module with no genome; genomes exist for the EvoNorms and evolved layers")
        return entry.genome

    def names(self) -> List[str]:
        """All registered names, sorted."""
        self._load_environment()
        return sorted(self._entries)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator["LayerRegistry"]:
        """A block whose registrations (and loads from ``EVONORM_GENOMES``) are undone when it ends::

            with REGISTRY.snapshot():
                register_layer("Tmp", genome)
            # "Tmp" is unknown again

        Listeners stay; the framework registries they wrote to keep their entries.
        """
        entries, env_loaded = dict(self._entries), self._env_loaded
        try:
            yield self
        finally:
            self._entries, self._env_loaded = entries, env_loaded


REGISTRY = LayerRegistry()
"""The process-wide registry that every integration resolves names from."""

add_registration_listener = REGISTRY.add_listener
register_layer = REGISTRY.register
unregister_layer = REGISTRY.unregister
load_genomes = REGISTRY.load_genomes
get_layer_class = REGISTRY.get_class
get_layer = REGISTRY.get
get_genome = REGISTRY.genome
list_layers = REGISTRY.names
did_you_mean = REGISTRY.did_you_mean


def paper_genome(name: str) -> Genome:
    """The shipped genome of a paper layer: ``"EvoNormB0"`` … ``"EvoNormS2"``."""
    file = resources.files("evonorm_plugins") / "genomes" / f"{name.lower().replace('evonorm', 'evonorm_')}.json"
    if not name.startswith("EvoNorm") or not file.is_file():
        raise ValueError(f"{name!r} is not a paper layer; choose one of EvoNormB0, B1, B2, S0, S1, S2")
    return Genome.from_json(file.read_text(), source=str(file))


for _layer in (EvoNormB0, EvoNormB1, EvoNormB2, EvoNormS0, EvoNormS1, EvoNormS2):
    REGISTRY.register(_layer.__name__, _layer, genome=paper_genome(_layer.__name__))
for _layer in (BatchNormReLU, BatchNormSiLU, GroupNormReLU, GroupNormSiLU):
    REGISTRY.register(_layer.__name__, _layer)
EVOLVED_GENOMES = resources.files("evonorm_plugins") / "genomes" / "evolved"
"""The layers this project's own searches found, shipped as genomes and registered by their names."""
for _file in sorted((f for f in EVOLVED_GENOMES.iterdir() if f.name.endswith(".json")), key=lambda f: f.name):
    _genome = Genome.from_json(_file.read_text(), source=str(_file))
    REGISTRY.register(_genome.name or _file.name[:-5], _genome)

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "LayerRegistry",
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
