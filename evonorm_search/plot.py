"""Pictures of a search store, for ``evonorm-search plot``.

``progress.png``, with the candidates in the order they finished on the x axis. The top panel shows
each done candidate's score on each architecture (one colour per architecture), a line for each
architecture's best score so far, and every baseline that trained as a dashed line at its score. The
bottom panel counts rejections per protocol as they add up; a duplicate that reused a done candidate's
scores counts as "duplicate (reused)".

``pareto.png`` plots the distinct done candidates (duplicates that reused scores left out) on the
scores of the first two architectures. It highlights the Pareto front and joins it with a step line,
labels the three best by mean score with their formula, and marks the baselines. A store with one
architecture gets a chart of the scores in sorted order instead.
"""
from __future__ import annotations

import time
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

from .selection import pareto_front
from .store import Candidate, SearchStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Done = List[Tuple[int, Candidate]]  # (place in finish order, from 1; a done candidate)
MARKERS = "sD^vPX*"


def plot_search(store: SearchStore, out_dir: Path) -> List[Path]:
    """Write ``progress.png`` and ``pareto.png`` for ``store`` into ``out_dir``; returns their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finished = store.finished()
    if not finished:
        raise ValueError(f"search store {str(store.path)!r} holds no finished candidate yet; run `evonorm-search run` first")
    done = [(step, c) for step, c in enumerate(finished, start=1) if c.status == "done" and c.scores]
    names = store.architecture_names()
    names += [f"architecture {i}" for i in range(len(names), max([len(c.scores or ()) for _, c in done] + [len(names)]))]
    baselines = {k: v for k, v in (store.get_meta("baselines") or {}).items() if isinstance(v, list) and v}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress, pareto = Figure(figsize=(10, 7), layout="constrained"), Figure(figsize=(9, 7), layout="constrained")
    _draw_progress(progress, finished, done, names, baselines)
    _draw_pareto(pareto, done, names, baselines)
    paths = [out_dir / "progress.png", out_dir / "pareto.png"]
    for figure, path in zip((progress, pareto), paths):
        FigureCanvasAgg(figure).print_png(path)
    return paths


def _mean(candidate: Candidate) -> float:
    return sum(candidate.scores or ()) / max(len(candidate.scores or ()), 1)


def _formula(candidate: Candidate, limit: int = 40) -> str:
    text = candidate.genome.formula()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _legend(ax: "Axes", loc: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=loc, fontsize=8)


def _draw_progress(figure: "Figure", finished: Sequence[Candidate], done: Done, names: List[str], baselines: Dict[str, list]) -> None:
    from matplotlib.ticker import MaxNLocator

    scores_ax, rejections_ax = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    steps = range(1, len(finished) + 1)
    last = getattr(finished[-1], "finished", None)
    when = f", the last at {time.strftime('%Y-%m-%d %H:%M', time.localtime(last))}" if last else ""
    scores_ax.set_title(f"{len(done)} of {len(finished)} finished candidates done{when}")
    for i, name in enumerate(names):
        by_step = {step: c.scores[i] for step, c in done if i < len(c.scores)}
        if by_step:
            scores_ax.scatter(list(by_step), list(by_step.values()), s=12, alpha=0.6, color=f"C{i}", label=name)
            since = range(min(by_step), len(finished) + 1)
            best = accumulate((by_step.get(step, float("-inf")) for step in since), max)
            scores_ax.step(since, list(best), where="post", color=f"C{i}", linewidth=1.5)
        for baseline, values in baselines.items():
            if i < len(values):
                scores_ax.axhline(values[i], color=f"C{i}", linestyle="--", linewidth=1)
                scores_ax.annotate(f"{baseline} ({name})", (0.005, values[i]), xycoords=("axes fraction", "data"),
                                   color=f"C{i}", fontsize=7, va="bottom")
    scores_ax.set_ylabel("score (dots: candidates, lines: best so far)")
    _legend(scores_ax, "lower right")
    kinds = {c.id: "duplicate (reused)" if c.status == "done" else c.protocol or "unknown"
             for c in finished if c.status == "rejected" or c.protocol == "duplicate"}
    for j, kind in enumerate(dict.fromkeys(kinds.values())):
        counts = accumulate(int(kinds.get(c.id) == kind) for c in finished)
        rejections_ax.step(steps, list(counts), where="post", color=f"C{j}", label=kind)
    if not kinds:
        rejections_ax.text(0.5, 0.5, "no rejections", transform=rejections_ax.transAxes, ha="center", va="center")
    _legend(rejections_ax, "upper left")
    rejections_ax.set(ylabel="rejections", xlabel="candidates finished")
    for axis in (rejections_ax.xaxis, rejections_ax.yaxis):  # counts: whole ticks (the x axis is shared)
        axis.set_major_locator(MaxNLocator(integer=True))


def _draw_pareto(figure: "Figure", done: Done, names: List[str], baselines: Dict[str, list]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax = figure.subplots()
    distinct = sorted((c for _, c in done if c.protocol != "duplicate"), key=_mean, reverse=True)
    best = distinct[:3]
    if len(names) < 2:
        ax.bar(range(1, len(distinct) + 1), [_mean(c) for c in distinct], color=["C3"] * len(best) + ["C0"] * (len(distinct) - len(best)))
        for rank, c in enumerate(best, start=1):
            ax.annotate(f"#{rank} {_formula(c)}", (rank, 0), xytext=(0, 4), textcoords="offset points", rotation=90,
                        fontsize=7, ha="center", va="bottom", color="white")
        for j, (baseline, values) in enumerate(baselines.items()):
            ax.axhline(values[0], color=f"C{j + 4}", linestyle="--", label=f"baseline {baseline}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=f"one architecture ({names[0] if names else 'unnamed'}): scores sorted, no Pareto front",
               xlabel="rank among distinct done candidates", ylabel="score")
    else:
        points = [c.scores[:2] for c in distinct]
        if points:
            front = sorted(points[i] for i in pareto_front(points))
            ax.scatter(*zip(*points), s=14, color="0.6", label="distinct done candidates")
            ax.scatter(*zip(*front), s=40, color="C3", zorder=3, label="Pareto front")
            ax.step(*zip(*front), where="pre", color="C3", linewidth=1)  # the edge of what the front dominates
        for rank, c in enumerate(best, start=1):
            ax.annotate(f"#{rank} {_formula(c)}", c.scores[:2], xytext=(6, 6 - 12 * rank), textcoords="offset points",
                        fontsize=7, arrowprops={"arrowstyle": "-", "color": "0.4"})
        for j, (baseline, values) in enumerate((k, v) for k, v in baselines.items() if len(v) >= 2):
            ax.scatter(values[0], values[1], marker=MARKERS[j % len(MARKERS)], s=70, color=f"C{j + 4}", zorder=4, label=baseline)
            ax.annotate(baseline, values[:2], xytext=(6, -10), textcoords="offset points", fontsize=8, color=f"C{j + 4}")
        ax.set(title=f"{len(distinct)} distinct done candidates: Pareto front on {names[0]} and {names[1]}",
               xlabel=f"score on {names[0]}", ylabel=f"score on {names[1]}")
    _legend(ax, "lower left" if len(names) >= 2 else "upper right")  # where the points or bars leave room
