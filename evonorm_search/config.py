"""The search's configuration: what to search (:class:`SearchConfig`, stored with the search and
compared on resume) and how to run it (the ``execution`` section, an
:class:`~evonorm_search.execution.ExecutorConfig`, not stored, so a search may resume on another backend).

The schema is the dataclasses themselves: their field types, the ranges in their ``Annotated``
metadata and their ``__post_init__`` cross-field rules, checked by pydantic (:func:`validated`), which
also turns YAML's strings such as ``1.0e8`` into numbers. Every problem comes back as one
:class:`ConfigError` line naming the key, what is wrong and, for a misspelled key, the closest valid name.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, List, Literal, Sequence, Type, TypeVar

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from .evaluator import EvaluationConfig
from .execution import ExecutorConfig
from .fidelity import FidelityConfig
from .schema import config_class
from .space import SearchSpace

T = TypeVar("T")


class ConfigError(ValueError):
    """A search config that cannot run, said in one line."""


@config_class
class SearchConfig:
    space: SearchSpace = field(default_factory=SearchSpace)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)  # multi-fidelity (ASHA) promotions
    strategy: Literal["evolution", "random"] = "evolution"  # random: the ablation's baseline, same budget
    population_size: Annotated[int, Field(ge=2)] = 100
    tournament_size: Annotated[int, Field(ge=1)] = 25
    budget: Annotated[int, Field(gt=0)] = 1000  # finished candidates, duplicates and rejections included
    seed_with_paper_layers: bool = False
    random_while_filling: Annotated[float, Field(ge=0, le=1)] = 1.0  # see RegularizedEvolution
    dedupe: bool = True
    seed: Annotated[int, Field(ge=0)] = 0

    def __post_init__(self) -> None:
        if self.tournament_size > self.population_size:
            raise ValueError(f"tournament_size ({self.tournament_size}) must not exceed population_size "
                             f"({self.population_size})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "search config") -> "SearchConfig":
        """From plain data (the store's copy, a YAML file without its ``execution`` section)."""
        return validated(cls, data, source)


@dataclass(frozen=True)
class SearchFile:
    """A search config file: the search, and the ``execution`` section saying how to run it."""

    search: SearchConfig
    execution: ExecutorConfig


def validated(schema: Type[T], data: Any, source: str, also_known: Sequence[str] = ()) -> T:
    """``data`` checked against ``schema`` (a config dataclass), or a one-line :class:`ConfigError`
    naming up to three problems. ``also_known``: top-level keys the caller takes out before (a file's
    ``execution``), offered as spellings of an unknown key."""
    try:
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as error:
        errors = error.errors()
        # an item that failed also empties its tuple: name only the innermost problems
        innermost = [e for e in errors if not any(o["loc"][: len(e["loc"])] == e["loc"] and o["loc"] != e["loc"] for o in errors)]
        problems = (_problem(schema, e, also_known) for e in innermost[:3])
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def _problem(schema: type, error: dict, also_known: Sequence[str]) -> str:
    """One pydantic error as ``key: what is wrong``, with the closest valid name for an unknown key."""
    location = [str(part) for part in error["loc"]]
    where = ".".join(location)
    if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        known = _field_names(schema, location[:-1]) + ([] if len(location) > 1 else list(also_known))
        close = difflib.get_close_matches(location[-1], known, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        return f"unknown key {where!r}; {hint}"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("dataclass_type", "dataclass_args_type"):
        message = "expected a mapping of settings"
    if error["type"] in ("missing", "value_error"):
        return f"{where}: {message}" if where else message
    return f"{where}: {message} (got {error['input']!r})"


def _field_names(schema: type, path: List[str]) -> List[str]:
    """The keys valid at ``path`` (dataclass field names, stepping into nested configs and tuples)."""
    import typing

    current: Any = schema
    for part in path:
        if part.isdigit():
            continue
        hints = typing.get_type_hints(current)
        current = hints.get(part)
        while typing.get_origin(current) in (typing.Annotated, tuple, typing.Union) or getattr(current, "__metadata__", None):
            arguments = [a for a in typing.get_args(current) if a is not type(None) and a is not Ellipsis]
            current = arguments[0]
    return [f.name for f in dataclasses.fields(current)] if dataclasses.is_dataclass(current) else []


def read_yaml(path: Path, what: str = "search config") -> dict:
    """A YAML config file as a mapping, or a one-line :class:`ConfigError` (missing, empty, bad YAML
    with its line, not a mapping)."""
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give a YAML file, e.g. configs/search/smoke.yaml")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; see configs/search/ for examples")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{what} {where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {str(path)!r} is not a text file; give a YAML file") from None
    if data is None:
        raise ConfigError(f"{what} {str(path)!r} is empty; start from configs/search/smoke.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be a mapping of settings, got a {type(data).__name__}")
    return data


def parse_search_file(data: dict, source: str) -> SearchFile:
    """A config file's settings: the search (every key but ``execution``) and how to run it."""
    search = {key: value for key, value in data.items() if key != "execution"}
    config = validated(SearchConfig, search, source, also_known=("execution",))
    return SearchFile(config, validated(ExecutorConfig, data.get("execution") or {}, f"{source}, execution"))


def load_search_file(path: Path) -> SearchFile:
    return parse_search_file(read_yaml(path), str(path))


def execution_config(data: dict, source: str = "config") -> ExecutorConfig:
    """The ``execution`` section of a config file's settings (defaults where there is none)."""
    return validated(ExecutorConfig, data.get("execution") or {}, f"{source}, execution")


__all__ = ["ConfigError", "SearchConfig", "SearchFile", "execution_config", "load_search_file",
           "parse_search_file", "read_yaml", "validated"]
