"""The re-ranking stage: the search's top-k layers and the baselines, retrained longer with several seeds
and scored on the held-out part of the data, which the search never scored on.

A search scores each candidate once, with short training, on one seed, on its search-validation part:
its ranking is noisy and its best score is biased upward by the choice itself. The paper re-ranked its
top-10 on a held-out set before naming the best layers; here each of the top-k candidates and each
baseline (BN-ReLU, GN-ReLU) is trained on the search's K architectures with every step count times
``steps_scale``, once per seed (the seed sets the initialization and the data order; the split is the
search's own, fixed by ``split_seed``), scored on the held-out part, and ranked by its mean accuracy
over seeds and architectures. The re-ranking checks that it splits the data exactly as the search did
(the split's record in the store), so no held-out image was ever a search-validation image.

Every finished training is a row of the search's store (keyed by the settings, the layer and the
seed), so an interrupted re-ranking resumes where it stopped and a finished one is only read back.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple, Union

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import get_layer_class

from .config import SearchConfig
from .evaluator import EvaluationConfig, prepare, scale_steps
from .execution import Executor
from .progress import Progress, no_progress
from .store import SearchStore
from .trainings import Training, run_trainings

BASELINES = ("BatchNormReLU", "GroupNormReLU")


@dataclass(frozen=True)
class RerankSettings:
    k: int = 10
    seeds: int = 3
    steps_scale: float = 3.0
    baselines: Tuple[str, ...] = BASELINES

    def evaluation(self, search: EvaluationConfig, seed: int) -> EvaluationConfig:
        """The search's proxy training, ``steps_scale`` times longer, with this seed, no gates, scored
        on the held-out part."""
        return replace(scale_steps(search, self.steps_scale), seed=seed, score_on="heldout")

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


def rerank(store: SearchStore, settings: RerankSettings, executor: Optional[Executor] = None,
           in_flight: Optional[int] = None, progress: Progress = no_progress) -> List[RankedLayer]:
    """Train what is missing, then return every layer ranked best first (held-out accuracy)."""
    config = store.get_meta("config")
    if config is None:
        raise ValueError(f"{store.path} holds no search; run `evonorm-search run` first")
    search = SearchConfig.from_dict(config).evaluation
    candidates = store.top(settings.k)
    if not candidates:
        raise ValueError(f"{store.path} holds no finished candidate with scores to re-rank yet")
    check_split(store, settings.evaluation(search, 0))
    layers: Dict[str, Union[str, Genome]] = {f"candidate {c.id}": c.genome for c in candidates}
    layers.update({name: name for name in settings.baselines})
    for name in settings.baselines:
        get_layer_class(name)  # an unknown baseline fails here, with the registry's suggestion
    key = settings.key()
    trainings = [Training(key, name, seed, layer, settings.evaluation(search, seed))
                 for seed in range(settings.seeds) for name, layer in layers.items()]
    run_trainings(store, trainings, executor, in_flight, progress)
    return _table(store, key, layers, candidates)


def check_split(store: SearchStore, heldout: EvaluationConfig) -> None:
    """Raise unless the held-out scoring splits the data exactly as the search recorded."""
    recorded = store.get_meta("split")
    if recorded is None:
        raise ValueError(f"{store.path} has no record of its data split (a search from before the held-out part "
                         f"existed, or one not started): its validation images may be any held-out image; "
                         f"run the search again with this version")
    split = prepare(heldout)
    if split != recorded:
        raise ValueError(f"the held-out scoring would split the data as {split}, the search split it as {recorded}; "
                         f"keep the data folder and evaluation.split_seed of the search")


def _table(store, key, layers, candidates) -> List[RankedLayer]:
    formulas = {f"candidate {c.id}": c.genome.formula() for c in candidates}
    trainings = store.trainings(key)
    rows = []
    for name, layer in layers.items():
        runs = [t.scores for t in trainings if t.layer == name and t.scores]
        failures = [t.reason for t in trainings if t.layer == name and not t.scores]
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
