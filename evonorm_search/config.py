"""The search's configuration: what to search (:class:`SearchConfig`, stored with the search and
compared on resume) and how to run it (:func:`execution_config`, not stored, so a search may resume on
another backend). Both are read from plain data, e.g. a YAML file."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .evaluator import EvaluationConfig
from .execution import ExecutorConfig
from .fidelity import FidelityConfig
from .proxy import ArchitectureConfig
from .space import SearchSpace


@dataclass(frozen=True)
class SearchConfig:
    space: SearchSpace = field(default_factory=SearchSpace)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)  # multi-fidelity (ASHA) promotions
    strategy: str = "evolution"  # or "random" (ablation with the same budget)
    population_size: int = 100
    tournament_size: int = 25
    budget: int = 1000  # finished candidates, duplicates and rejections included
    seed_with_paper_layers: bool = False
    random_while_filling: float = 1.0  # see RegularizedEvolution
    dedupe: bool = True
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchConfig":
        """From plain data (YAML, the store's copy); numbers are coerced to the fields' types, since
        YAML reads ``1.0e8`` as a string."""
        evaluation = _coerced(EvaluationConfig, dict(data.get("evaluation", {})))
        evaluation["architectures"] = tuple(
            ArchitectureConfig.from_dict(a) for a in evaluation.get("architectures", ())
        ) or EvaluationConfig().architectures
        space = _coerced(SearchSpace, dict(data.get("space", {})))
        if space.get("ops") is not None:
            space["ops"] = tuple(space["ops"])
        fidelity = _coerced(FidelityConfig, dict(data.get("fidelity", {})))
        rest = _coerced(cls, {k: v for k, v in data.items() if k not in ("space", "evaluation", "fidelity", "execution")})
        return cls(space=SearchSpace(**space), evaluation=EvaluationConfig(**evaluation), fidelity=FidelityConfig(**fidelity),
                   **rest)


def execution_config(data: dict) -> ExecutorConfig:
    """The ``execution`` section of a search config file: how to run, not what to search, so it is not
    part of the stored config and a search may resume on another backend."""
    return ExecutorConfig(**_coerced(ExecutorConfig, dict(data.get("execution") or {})))


def _coerced(config_class: type, values: dict) -> dict:
    """``values`` with each number converted to the type of the field's default (int, float, bool)."""
    defaults = {f.name: f.default for f in fields(config_class)}
    result = dict(values)
    for key, value in values.items():
        default = defaults.get(key)
        if isinstance(default, (bool, int, float)) and not isinstance(default, type(value)) and value is not None:
            try:
                result[key] = type(default)(float(value)) if not isinstance(default, bool) else bool(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: expected a {type(default).__name__}, got {value!r}") from None
    return result
