"""The local controller: propose, dedupe, evaluate, record, report — resumable from its store.

The controller owns the strategy (population) and the store; evaluation is a function of (genome,
config), so distributing it (Ray, a process pool) changes only who calls it. Order of work for each
candidate: canonical and functional hash → duplicate check against every finished candidate (a
duplicate of a done one reuses its scores; of a rejected one is rejected) → the store records it as
pending → evaluation → the store records the outcome → the strategy hears it.

Resume: the finished candidates are replayed into a fresh strategy in the order they finished (that
rebuilds the population), and candidates left pending by a crash are evaluated first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Union

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import get_layer_class, paper_genome

from .evaluator import EvaluationConfig, Outcome, evaluate, evaluate_layer, prepare
from .evolution import RandomSearch, RegularizedEvolution
from .proxy import ArchitectureConfig
from .rejection import functional_hash
from .space import SearchSpace
from .store import SearchStore

Evaluate = Callable[[Genome, EvaluationConfig], Outcome]
SYSTEMATIC_ERRORS = 5


@dataclass(frozen=True)
class SearchConfig:
    space: SearchSpace = field(default_factory=SearchSpace)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    strategy: str = "evolution"  # or "random" (ablation with the same budget)
    population_size: int = 100
    tournament_size: int = 25
    budget: int = 1000  # finished candidates, duplicates and rejections included
    seed_with_paper_layers: bool = False
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
            ArchitectureConfig(a["name"], a.get("width", 0.25), tuple(a.get("depth", ()))) for a in evaluation.get("architectures", ())
        ) or EvaluationConfig().architectures
        space = _coerced(SearchSpace, dict(data.get("space", {})))
        if space.get("ops") is not None:
            space["ops"] = tuple(space["ops"])
        rest = _coerced(cls, {k: v for k, v in data.items() if k not in ("space", "evaluation")})
        return cls(space=SearchSpace(**space), evaluation=EvaluationConfig(**evaluation), **rest)


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


def _strategy(config: SearchConfig):
    if config.strategy == "random":
        return RandomSearch(config.space, config.seed)
    if config.strategy != "evolution":
        raise ValueError(f"unknown strategy {config.strategy!r}; use 'evolution' or 'random'")
    names = ("B0", "B1", "B2", "S0", "S1", "S2") if config.space.batch_dependent else ("S0", "S1", "S2")
    seeds = [paper_genome(f"EvoNorm{n}") for n in names] if config.seed_with_paper_layers else []
    return RegularizedEvolution(config.space, config.population_size, config.tournament_size, config.seed,
                                [g for g in seeds if config.space.contains(g)])


class Controller:
    def __init__(self, store_path: Union[str, Path], config: Optional[SearchConfig] = None,
                 evaluate_fn: Evaluate = evaluate, progress: Callable[[str], None] = lambda line: None) -> None:
        self.store = SearchStore(store_path)
        stored = self.store.get_meta("config")
        if config is None and stored is None:
            raise ValueError(f"{store_path} holds no search to resume; start one with a config")
        if config is not None and stored is not None and config.to_dict() != stored:
            raise ValueError(f"{store_path} holds a search with another config; resume it without a config, or use a new store")
        self.config = config or SearchConfig.from_dict(stored)
        if stored is None:
            self.store.set_meta("config", self.config.to_dict())
        self.evaluate_fn, self.progress = evaluate_fn, progress
        self.strategy = _strategy(self.config)
        for candidate in self.store.finished():  # replay: rebuilds the population
            self.strategy.report(candidate.genome, candidate.scores if candidate.status == "done" else None)

    def _finish(self, candidate_id: int, genome: Genome) -> None:
        outcome = self.evaluate_fn(genome, self.config.evaluation)
        if outcome.scores is None:
            self.store.reject(candidate_id, outcome.protocol or "error", outcome.reason, outcome.wall_time)
        else:
            self.store.complete(candidate_id, outcome.scores, outcome.wall_time)
        self.strategy.report(genome, outcome.scores)
        self._check_systematic_errors(outcome)

    def _check_systematic_errors(self, outcome: Outcome) -> None:
        """Different candidates failing with the very same error in a row point at the run (config,
        environment), not at the candidates: stop instead of rejecting the whole budget."""
        if outcome.protocol != "error":
            self._error_streak = (None, 0)
            return
        reason, count = getattr(self, "_error_streak", (None, 0))
        count = count + 1 if reason == outcome.reason else 1
        self._error_streak = (outcome.reason, count)
        if count >= SYSTEMATIC_ERRORS:
            raise RuntimeError(
                f"{count} candidates in a row failed with the same error, so the run itself is broken: "
                f"{outcome.reason}. Fix it (the config, the data, the environment), then `evonorm-search resume`"
            )

    def step(self) -> None:
        genome = self.strategy.propose()
        fhash = functional_hash(genome) if self.config.dedupe else None
        original = self.store.seen(genome.hash(), fhash) if self.config.dedupe else None
        candidate_id = self.store.add(genome, functional_hash=fhash)
        if original is None:
            self._finish(candidate_id, genome)
        elif original.status == "done":
            self.store.complete_as_duplicate(candidate_id, original)
            self.strategy.report(genome, original.scores)
        else:
            self.store.reject(candidate_id, "duplicate", f"same function as rejected candidate {original.id}", 0.0)
            self.strategy.report(genome, None)

    def evaluate_baselines(self, names=("BatchNormReLU", "GroupNormReLU")) -> dict:
        """Train the baselines exactly as the candidates (stored once, as ``baselines`` in the store)."""
        results = self.store.get_meta("baselines") or {}
        prepare(self.config.evaluation)
        for name in names:
            if name not in results:
                outcome = evaluate_layer(get_layer_class(name), self.config.evaluation)
                results[name] = list(outcome.scores) if outcome.scores else f"rejected: {outcome.reason}"
                self.store.set_meta("baselines", results)
        return results

    def run(self) -> SearchStore:
        if self.evaluate_fn is evaluate:
            prepare(self.config.evaluation)
        for candidate in self.store.pending():  # left by a crash: evaluate them first
            self._finish(candidate.id, candidate.genome)
        while self.store.finished_count() < self.config.budget:
            self.step()
            self.progress(self.status_line())
        return self.store

    def status_line(self) -> str:
        counts = self.store.counts()
        best = self.store.top(1)
        rejected = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(counts.items()) if k.startswith("rejected:"))
        best_text = f"best {best[0].scores} {best[0].genome.formula()}" if best else "best -"
        return (f"{self.store.finished_count()}/{self.config.budget} finished, done {counts.get('done', 0)}, "
                f"rejected {counts.get('rejected', 0)} ({rejected or 'none'}), {best_text}")
