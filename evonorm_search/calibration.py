"""Proxy calibration: does a cheap proxy setting rank layers the way a long reference training does?

A fixed panel of layers — normalizing ones (BN-ReLU, GN-ReLU, GN-SiLU, EvoNorm B0/S0/S1/S2), layers
that do not normalize (``tanh(x)``, ``max(x, 0)``, the identity-like ``x·v1``) and a few random valid
genomes of the batch-dependent space that pass the stability test — is trained under the reference
setting and under each candidate proxy setting, once per seed, without the rejection gates, scored
on the search-validation part. Per candidate setting this reports its cost (mean seconds to train one
layer on all of its architectures, on this machine) and its rank agreement with the reference:
Kendall τ and Spearman ρ (``scipy.stats``) between the setting's per-seed scores and the reference's
scores averaged over its seeds, as mean ± std over the setting's seeds; and Kendall τ over the
reference's better half of the panel only, since layers that do not train at all (chance, non-finite)
are easy to rank last and lift τ over the whole panel, while a search has to order the layers that
train. A layer's score is its mean
accuracy over the setting's architectures (settings may use different ones); a training that failed
(non-finite loss) scores 0. With two or more seeds the reference also gets a row for its own
seed-to-seed agreement: the ceiling a proxy can be expected to reach.

Each training is stored (:mod:`.trainings`, keyed by the setting's whole evaluation config), so an
interrupted calibration resumes, and changing one setting retrains only that one.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import random
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from scipy import stats

from evonorm_plugins.graph import genome_from_ops

from .config import validated
from .evaluator import EvaluationConfig
from .execution import Executor
from .progress import Progress, no_progress
from .space import SearchSpace, random_genome
from .stability import stability_test
from .store import SearchStore
from .trainings import Layer, Training, run_trainings

REGISTRY_PANEL = ("BatchNormReLU", "GroupNormReLU", "GroupNormSiLU", "EvoNormB0", "EvoNormS0", "EvoNormS1", "EvoNormS2")
NON_NORMALIZING = {
    "tanh(x)": [("tanh", [0])],
    "max(x, 0)": [("max", [0, 1])],
    "x * v1 (identity-like)": [("mul", [3, 0])],
}


def calibration_panel(random_genomes: int = 4, seed: int = 0, stability_steps: int = 20) -> Dict[str, Layer]:
    """The panel, by name: registry layers by name, the others as genomes. Random genomes are drawn
    from the batch-dependent space with ``seed`` and kept only if they pass the stability test (with
    ``stability_steps`` ascent steps), so they are layers a search could have trained."""
    panel: Dict[str, Layer] = {name: name for name in REGISTRY_PANEL}
    panel.update({name: genome_from_ops(ops) for name, ops in NON_NORMALIZING.items()})
    rng, space = random.Random(seed), SearchSpace(batch_dependent=True)
    found = 0
    while found < random_genomes:
        genome = random_genome(space, rng)
        if stability_test(genome, max_steps=stability_steps, seed=seed).passed:
            panel[f"random {genome.hash()[:8]}: {genome.formula()}"] = genome
            found += 1
    return panel


@dataclass(frozen=True)
class Setting:
    """A named proxy setting: the evaluation (architectures, steps, batch, data) it trains with."""

    name: str
    evaluation: EvaluationConfig

    def key(self) -> str:
        """Identifies the setting's trainings in the store: its whole evaluation config but the seed."""
        plain = json.dumps(asdict(replace(self.evaluation, seed=0)), sort_keys=True, default=str)
        return "calibration " + hashlib.sha256(plain.encode()).hexdigest()[:16]

    def training_config(self, seed: int) -> EvaluationConfig:
        return replace(self.evaluation, seed=seed, quality=False, stability=False, score_on="search")


def read_settings(data: dict, source: str) -> List[Setting]:
    """Settings from a calibration file's plain data: ``common`` (an evaluation section every setting
    starts from) and ``settings`` (name → evaluation keys that differ)."""
    named = data.get("settings")
    if not isinstance(named, dict) or not named:
        raise ValueError(f"calibration config {source!r} needs a 'settings' mapping: name -> evaluation section")
    common = dict(data.get("common") or {})
    settings = []
    for name, section in named.items():
        evaluation = validated(EvaluationConfig, {**common, **(section or {})}, f"calibration config {source}, setting {name!r}")
        settings.append(Setting(str(name), evaluation))
    return settings


@dataclass(frozen=True)
class Agreement:
    """One row of the calibration table."""

    setting: Setting
    seconds_per_candidate: float
    kendall: Tuple[float, float]  # mean, std over seeds
    spearman: Tuple[float, float]
    kendall_better_half: Tuple[float, float]  # over the reference's best ⌈n/2⌉ layers only
    seeds: int
    layer_scores: Dict[str, float]  # mean over seeds (and architectures) per panel layer


def calibrate(store: SearchStore, reference: Setting, candidates: Sequence[Setting], panel: Dict[str, Layer], seeds: int,
              executor: Optional[Executor] = None, in_flight: Optional[int] = None,
              progress: Progress = no_progress) -> Tuple[Agreement, List[Agreement]]:
    """Train what is missing (reference first), then the reference's row and one row per candidate."""
    if seeds < 1:
        raise ValueError(f"calibration needs at least one seed, got {seeds}")
    settings = [reference, *candidates]
    trainings = [Training(s.key(), name, seed, layer, s.training_config(seed))
                 for s in settings for seed in range(seeds) for name, layer in panel.items()]
    run_trainings(store, trainings, executor, in_flight, progress)
    reference_runs = _runs(store, reference, panel, seeds)
    target = {name: statistics.mean(reference_runs[name]) for name in panel}
    better_half = sorted(panel, key=lambda name: -target[name])[: (len(panel) + 1) // 2]
    reference_row = _agreement(store, reference, reference_runs, _seed_pairs(reference_runs), better_half)
    rows = []
    for setting in candidates:
        runs = _runs(store, setting, panel, seeds)
        pairs = [(target, {name: runs[name][seed] for name in panel}) for seed in range(seeds)]
        rows.append(_agreement(store, setting, runs, pairs, better_half))
    return reference_row, rows


def _runs(store: SearchStore, setting: Setting, panel: Dict[str, Layer], seeds: int) -> Dict[str, List[float]]:
    """Per layer, its score (mean over architectures; 0 for a failed training) for each seed."""
    scores = {(t.layer, t.seed): (statistics.mean(t.scores) if t.scores else 0.0) for t in store.trainings(setting.key())}
    return {name: [scores[(name, seed)] for seed in range(seeds)] for name in panel}


Scores = Dict[str, float]  # panel layer -> score


def _seed_pairs(runs: Dict[str, List[float]]) -> List[Tuple[Scores, Scores]]:
    seeds = len(next(iter(runs.values())))
    return [({n: r[a] for n, r in runs.items()}, {n: r[b] for n, r in runs.items()}) for a, b in itertools.combinations(range(seeds), 2)]


def _agreement(store: SearchStore, setting: Setting, runs: Dict[str, List[float]], pairs: List[Tuple[Scores, Scores]],
               better_half: Sequence[str]) -> Agreement:
    """τ and ρ over each pair of score vectors (whole panel), τ over the reference's better half, cost."""
    def kendall(names):
        return _mean_std([_finite(stats.kendalltau([a[n] for n in names], [b[n] for n in names]).statistic) for a, b in pairs])

    rhos = [_finite(stats.spearmanr(list(a.values()), [b[n] for n in a]).statistic) for a, b in pairs]
    times = [t.wall_time for t in store.trainings(setting.key()) if t.wall_time is not None and t.layer in runs]
    return Agreement(setting, statistics.mean(times) if times else 0.0, kendall(list(runs)), _mean_std(rhos), kendall(better_half),
                     len(next(iter(runs.values()))), {name: statistics.mean(values) for name, values in runs.items()})


def _finite(value: float) -> float:
    """A constant score vector has no ranking: τ and ρ are NaN, counted as no agreement (0)."""
    return 0.0 if value != value else float(value)


def _mean_std(values: Sequence[float]) -> Tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _describe(evaluation: EvaluationConfig) -> str:
    parts = []
    for a in evaluation.architectures:
        depth = "×".join(f"{d:g}" for d in a.depth) if a.depth else "full"
        parts.append(f"{a.name} w{a.width:g} d{depth} {a.steps or evaluation.train_steps} steps")
    return "; ".join(parts) + f"; batch {evaluation.batch_size}"


def format_calibration(reference: Agreement, rows: Sequence[Agreement]) -> str:
    """Markdown: the agreement table, then every panel layer's score under every setting."""
    lines = ["| setting | proxy | s/candidate | Kendall τ | Spearman ρ | Kendall τ, reference's better half | seeds |",
             "|---|---|---|---|---|---|---|"]
    for row in [reference, *rows]:
        label = f"{row.setting.name} (reference, seed vs seed)" if row is reference else row.setting.name
        cells = ["-" if m != m else f"{m:.2f} ± {s:.2f}" for m, s in (row.kendall, row.spearman, row.kendall_better_half)]
        lines.append(f"| {label} | {_describe(row.setting.evaluation)} | {row.seconds_per_candidate:.1f} | {' | '.join(cells)} | {row.seeds} |")
    names = list(reference.layer_scores)
    lines += ["", "| layer | " + " | ".join(r.setting.name for r in [reference, *rows]) + " |",
              "|---|" + "---|" * (len(rows) + 1)]
    for name in sorted(names, key=lambda n: -reference.layer_scores[n]):
        lines.append(f"| {name} | " + " | ".join(f"{r.layer_scores[name]:.3f}" for r in [reference, *rows]) + " |")
    return "\n".join(lines)


def plot_calibration(reference: Agreement, rows: Sequence[Agreement], path: Path) -> Path:
    """Kendall τ against seconds per candidate, one point per setting, with the reference's own
    seed-to-seed agreement as a dashed line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), tight_layout=True)
    axes = figure.add_subplot()
    for row in rows:
        axes.errorbar(row.seconds_per_candidate, row.kendall[0], yerr=row.kendall[1], fmt="o", capsize=3)
        axes.annotate(row.setting.name, (row.seconds_per_candidate, row.kendall[0]), textcoords="offset points", xytext=(5, 5))
    if reference.kendall[0] == reference.kendall[0]:
        axes.axhline(reference.kendall[0], linestyle="--", color="grey", label=f"{reference.setting.name}, seed vs seed")
        axes.legend()
    axes.set_xscale("log")
    axes.set_xlabel("seconds per candidate (this machine)")
    axes.set_ylabel(f"Kendall τ vs {reference.setting.name}")
    axes.set_ylim(-1.05, 1.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path
