"""Multi-objective selection: the Pareto front of a tournament over per-architecture scores.

The paper pairs each candidate with K architectures and keeps, from a tournament, every candidate that
no other beats on all K accuracies at once; a random one of those becomes the parent. Scores are
maximized.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` on every score and better on one."""
    if len(a) != len(b):
        raise ValueError(f"score vectors differ in length ({len(a)} vs {len(b)}): one score per architecture")
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(scores: Sequence[Sequence[float]]) -> List[int]:
    """Indices of the score vectors no other one dominates, in their original order.

    Equal vectors do not dominate each other, so duplicates of a front member are all on the front.
    (All pairs at once with NumPy: the controller runs one tournament per proposal.)
    """
    if not scores:
        return []
    lengths = {len(s) for s in scores}
    if len(lengths) > 1:
        raise ValueError(f"score vectors differ in length ({sorted(lengths)}): one score per architecture")
    table = np.asarray(scores, dtype=float)
    at_least = (table[:, None, :] >= table[None, :, :]).all(axis=2)
    better = (table[:, None, :] > table[None, :, :]).any(axis=2)
    dominated = (at_least & better).any(axis=0)  # [i, j]: i dominates j
    return [int(i) for i in np.flatnonzero(~dominated)]
