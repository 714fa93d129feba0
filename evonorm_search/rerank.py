"""The re-ranking stage: the search's top-k layers and the baselines, retrained longer with several seeds.

A search scores each candidate once, with short training, on one seed: its ranking is noisy. The paper
re-ranked its top-10 before naming the best layers; here each of the top-k candidates and each
baseline (BN-ReLU, GN-ReLU) is trained on the search's K architectures with every step count times
``steps_scale``, once per seed (the seed sets the initialization, the data order and the held-out
split), and ranked by its mean accuracy over seeds and architectures.

Every finished training is a row of the search's store (keyed by the settings, the layer and the
seed), so an interrupted re-ranking resumes where it stopped and a finished one is only read back.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import get_layer_class, make_layer_class

from .config import SearchConfig
from .evaluator import EvaluationConfig, Outcome, evaluate_layer, prepare
from .execution import Executor, InlineExecutor
from .store import SearchStore

BASELINES = ("BatchNormReLU", "GroupNormReLU")


@dataclass(frozen=True)
class RerankSettings:
    k: int = 10
    seeds: int = 3
    steps_scale: float = 3.0
    baselines: Tuple[str, ...] = BASELINES

    def evaluation(self, search: EvaluationConfig, seed: int) -> EvaluationConfig:
        """The search's proxy training, ``steps_scale`` times longer, with this seed and no gates."""
        architectures = tuple(
            replace(a, steps=max(1, round((a.steps or search.train_steps) * self.steps_scale))) for a in search.architectures
        )
        return replace(search, architectures=architectures, seed=seed, quality=False, stability=False)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RankedLayer:
    """One row of the table: ``name`` is a baseline's or ``candidate <id>``; ``runs`` holds per-seed
    score tuples (one per architecture) of the trainings that finished."""

    name: str
    formula: str
    genome: Optional[Genome]
    runs: Tuple[Tuple[float, ...], ...]
    failures: Tuple[str, ...]

    def mean_std(self, architecture: int) -> Tuple[float, float]:
        values = [run[architecture] for run in self.runs]
        mean = sum(values) / len(values)
        return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))

    @property
    def mean(self) -> float:
        """Mean accuracy over seeds and architectures (-1 when no training finished: ranked last)."""
        return sum(sum(run) / len(run) for run in self.runs) / len(self.runs) if self.runs else -1.0


def train_layer(layer: Union[str, Genome], config: EvaluationConfig) -> Outcome:
    """A worker task: train a registry layer (by name) or a genome on the proxy architectures."""
    layer_class = get_layer_class(layer) if isinstance(layer, str) else make_layer_class("Candidate", layer)
    return evaluate_layer(layer_class, config)


def rerank(store: SearchStore, settings: RerankSettings, executor: Optional[Executor] = None,
           in_flight: Optional[int] = None, progress=lambda line: None) -> List[RankedLayer]:
    """Train what is missing, then return every layer ranked best first."""
    config = store.get_meta("config")
    if config is None:
        raise ValueError(f"{store.path} holds no search; run `evonorm-search run` first")
    search = SearchConfig.from_dict(config).evaluation
    candidates = store.top(settings.k)
    if not candidates:
        raise ValueError(f"{store.path} holds no finished candidate with scores to re-rank yet")
    layers: Dict[str, Union[str, Genome]] = {f"candidate {c.id}": c.genome for c in candidates}
    layers.update({name: name for name in settings.baselines})
    for name in settings.baselines:
        get_layer_class(name)  # an unknown baseline fails here, with the registry's suggestion
    key = settings.key()
    done = {(layer, seed) for layer, seed, _, _ in store.trainings(key)}
    jobs = [(name, seed) for seed in range(settings.seeds) for name in layers if (name, seed) not in done]
    executor = executor or InlineExecutor()
    if jobs:
        prepare(settings.evaluation(search, 0))
    _run_jobs(store, key, jobs, layers, settings, search, executor, in_flight or executor.capacity, progress)
    return _table(store, key, layers, candidates)


def _run_jobs(store, key, jobs, layers, settings, search, executor, in_flight, progress) -> None:
    pending: Dict[int, Tuple[str, int]] = {}
    queue = deque(enumerate(jobs))
    finished = 0
    while queue or pending:
        while queue and len(pending) < in_flight:
            task_id, (name, seed) = queue.popleft()
            pending[task_id] = (name, seed)
            executor.submit(task_id, train_layer, layers[name], settings.evaluation(search, seed))
        for task_id, outcome in executor.wait(timeout=1.0):
            name, seed = pending.pop(task_id)
            store.record_training(key, name, seed, outcome.scores,
                                  None if outcome.scores else f"{outcome.protocol}: {outcome.reason}", outcome.wall_time)
            finished += 1
            progress(f"re-ranking: {finished}/{len(jobs)} trainings finished ({name}, seed {seed})")


def _table(store, key, layers, candidates) -> List[RankedLayer]:
    formulas = {f"candidate {c.id}": c.genome.formula() for c in candidates}
    trainings = store.trainings(key)
    rows = []
    for name, layer in layers.items():
        runs = [scores for trained, _, scores, _ in trainings if trained == name and scores]
        failures = [reason for trained, _, scores, reason in trainings if trained == name and not scores]
        genome = layer if isinstance(layer, Genome) else None
        rows.append(RankedLayer(name, formulas.get(name, name), genome, tuple(runs), tuple(failures)))
    return sorted(rows, key=lambda row: -row.mean)


def format_table(rows: Sequence[RankedLayer], architectures: Sequence[str]) -> str:
    """A Markdown table: rank, layer, mean ± std per architecture, mean, seeds that finished."""
    header = ["rank", "layer"] + [f"{a} (mean ± std)" for a in architectures] + ["mean", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(rows, start=1):
        cells = [f"{row.mean_std(i)[0]:.3f} ± {row.mean_std(i)[1]:.3f}" if row.runs else "-" for i in range(len(architectures))]
        seeds = f"{len(row.runs)}" + (f" ({len(row.failures)} failed: {row.failures[0]})" if row.failures else "")
        label = row.name if row.genome is None else f"`{row.formula}` ({row.name})"
        mean = f"{row.mean:.3f}" if row.runs else "-"
        lines.append("| " + " | ".join([str(rank), label, *cells, mean, seeds]) + " |")
    return "\n".join(lines)
