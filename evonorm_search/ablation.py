"""The ablation the paper's reviewers asked for: at equal budget and over several seeds, regularized
evolution against random search, each with and without the rejection protocols (stability and quality;
duplicate detection stays on in every arm, since it only saves work).

Each arm and seed is a complete search with its own store (``<folder>/<arm>-seed<s>.sqlite``), so an
interrupted ablation resumes run by run. Each run's top-k (by the search's own ranking) is then trained
again at the search's highest fidelity and scored on the held-out part — which no run ever scored on —
and the run is summarized by its best and top-k mean held-out accuracy, the candidates it trained
(those that reached proxy training, and promotions), and its wall time.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .config import SearchConfig
from .controller import Controller, Evaluate
from .evaluator import evaluate
from .execution import Executor
from .progress import Progress, no_progress
from .rerank import check_split
from .store import SearchStore
from .trainings import Training, run_trainings

ARMS = ("evolution+rejection", "evolution", "random+rejection", "random")
TRAINED = ("quality", "nonfinite", "timeout")  # rejections that came after (some) proxy training


def arm_config(config: SearchConfig, arm: str, seed: int) -> SearchConfig:
    """The search config of one arm and seed: strategy, rejection protocols on or off, the seed."""
    strategy, _, rejection = arm.partition("+")
    evaluation = replace(config.evaluation, stability=bool(rejection), quality=bool(rejection))
    return replace(config, strategy=strategy, seed=seed, evaluation=evaluation)


@dataclass(frozen=True)
class RunResult:
    """One arm's search with one seed."""

    arm: str
    seed: int
    heldout: Tuple[float, ...]  # held-out mean accuracy of the run's top-k, best first
    trained: int
    wall_time: float  # seconds
    best_so_far: Tuple[float, ...]  # best search score after each finished candidate

    @property
    def best(self) -> float:
        return self.heldout[0] if self.heldout else 0.0

    @property
    def top_mean(self) -> float:
        return statistics.mean(self.heldout) if self.heldout else 0.0


def ablate(config: SearchConfig, seeds: int, folder: Path, arms: Sequence[str] = ARMS, top: int = 5,
           evaluate_fn: Evaluate = evaluate, executor: Optional[Executor] = None, in_flight: Optional[int] = None,
           progress: Progress = no_progress) -> List[RunResult]:
    """Run (or resume) every arm × seed, then score each run's top ``top`` on the held-out part."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"unknown ablation arms {unknown}; choose from {', '.join(ARMS)}")
    results = []
    for seed in range(seeds):  # seed-major: a run stopped part-way leaves every arm with the same seeds done
        for arm in arms:
            path = folder / f"{arm}-seed{seed}.sqlite"
            with Controller(path, arm_config(config, arm, seed), evaluate_fn,
                            lambda done, total, status, a=arm, s=seed: progress(done, total, f"{a} seed {s}: {status}")) as controller:
                started = time.perf_counter()
                store = controller.run(executor, in_flight)
                store.set_meta("elapsed", (store.get_meta("elapsed") or 0.0) + time.perf_counter() - started)
                results.append(_score_run(store, controller.config, arm, seed, top, executor, in_flight, progress))
    return results


def _score_run(store: SearchStore, config: SearchConfig, arm: str, seed: int, top: int, executor, in_flight, progress) -> RunResult:
    highest = config.fidelity.evaluation(config.evaluation, config.fidelity.rungs - 1)
    heldout = replace(highest, score_on="heldout", quality=False, stability=False, seed=0)
    if store.get_meta("split") is not None:  # recorded by every run with the real evaluator
        check_split(store, heldout)
    candidates = store.top(top)
    trainings = [Training("ablation heldout", f"candidate {c.id}", 0, c.genome, heldout) for c in candidates]
    run_trainings(store, trainings, executor, in_flight, lambda done, total, status: progress(done, total, f"{arm} seed {seed}, held-out: {status}"))
    scores = sorted((statistics.mean(t.scores) if t.scores else 0.0 for t in store.trainings("ablation heldout")), reverse=True)
    counts = store.counts()
    trained = counts.get("done", 0) - counts.get("done:duplicate", 0) + sum(counts.get(f"rejected:{p}", 0) for p in TRAINED)
    trained += sum(v for k, v in counts.items() if k.startswith("rung ") and not k.endswith(":pending"))
    return RunResult(arm, seed, tuple(scores), trained, float(store.get_meta("elapsed") or 0.0), _best_so_far(store))


def _best_so_far(store: SearchStore) -> Tuple[float, ...]:
    best, curve = 0.0, []
    for candidate in store.finished():
        if candidate.status == "done" and candidate.scores:
            best = max(best, statistics.mean(candidate.scores))
        curve.append(best)
    return tuple(curve)


def _mean_std(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def format_ablation(results: Sequence[RunResult], top: int = 5) -> str:
    """Markdown: per arm, mean ± std over seeds of the best and top-k mean held-out accuracy, candidates
    trained and wall time."""
    by_arm: Dict[str, List[RunResult]] = {}
    for result in results:
        by_arm.setdefault(result.arm, []).append(result)
    lines = [f"| arm | seeds | best held-out | top-{top} mean held-out | candidates trained | wall time (min) |",
             "|---|---|---|---|---|---|"]
    for arm, runs in by_arm.items():
        lines.append(f"| {arm} | {len(runs)} | {_mean_std([r.best for r in runs])} | {_mean_std([r.top_mean for r in runs])} | "
                     f"{statistics.mean(r.trained for r in runs):.0f} | {statistics.mean(r.wall_time for r in runs) / 60:.1f} |")
    return "\n".join(lines)


def plot_ablation(results: Sequence[RunResult], path: Path) -> Path:
    """Best search score (mean accuracy over the architectures, search-validation part) against
    candidates evaluated, averaged over seeds, one line per arm."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), tight_layout=True)
    axes = figure.add_subplot()
    for arm in dict.fromkeys(r.arm for r in results):
        curves = [r.best_so_far for r in results if r.arm == arm and r.best_so_far]
        length = min(len(c) for c in curves) if curves else 0
        if length:
            axes.plot(range(1, length + 1), [statistics.mean(c[i] for c in curves) for i in range(length)], label=arm)
    axes.set_xlabel("candidates evaluated")
    axes.set_ylabel("best search score so far (mean over seeds)")
    axes.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure).print_png(str(path))
    return path
