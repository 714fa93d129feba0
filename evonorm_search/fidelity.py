"""Multi-fidelity inside the search: asynchronous successive halving (ASHA, Li et al. 2020).

Every candidate is first trained at rung 0, the evaluation's own step counts (after the stability and
quality gates). Rung r trains each architecture for ``steps · eta^r`` steps, from scratch, without the
gates. A candidate that finished rung r is promoted to rung r+1 as soon as it is among the top
``⌊n_r / eta⌋`` of the ``n_r`` candidates that finished rung r so far (ranked by mean accuracy over the
architectures) and the last rung is not reached. Promotions come first whenever a worker is free; only
when none is due is a new candidate proposed. So most candidates cost only the cheap rung, and the
longer trainings go to the few that look best.

Only trained layers count in ``n_r``: rejected candidates (most random layers) never enter a rung, and
duplicates share their original's entry. A promotion whose training fails (a non-finite loss...)
leaves the candidate at the rung it had reached.

Comparing mixed fidelities: a candidate's standing is (highest rung reached, its scores there), compared
rung first — a layer that earned a longer training ranks above every layer that did not, and layers
at the same rung compare by their scores at that rung. Accuracies from different training lengths are
never compared with each other. The population's tournaments and the store's ``top`` both use this order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Dict, Optional, Set, Tuple

from pydantic import Field

from .evaluator import EvaluationConfig, scale_steps
from .schema import config_class


@config_class
class FidelityConfig:
    """``rungs`` fidelity levels (1: every candidate trains once, no promotion); ``eta`` is both the
    step multiplier between rungs and the inverse of the promoted fraction."""


    rungs: Annotated[int, Field(ge=1)] = 1
    eta: Annotated[int, Field(ge=2)] = 3

    def evaluation(self, config: EvaluationConfig, rung: int) -> EvaluationConfig:
        """The proxy training of rung ``rung``: steps · eta^rung, without the gates above rung 0."""
        return config if rung == 0 else scale_steps(config, self.eta ** rung)


@dataclass
class SuccessiveHalving:
    """The rungs' results and the promotions made, fed in the order things happened; :meth:`next_promotion`
    answers ASHA's question "which candidate, if any, should train longer now?"."""

    config: FidelityConfig
    results: Dict[int, Dict[int, float]] = field(default_factory=dict)  # rung -> candidate id -> mean score
    promoted: Dict[int, Set[int]] = field(default_factory=dict)  # rung -> candidates promoted out of it

    def record(self, candidate_id: int, rung: int, mean_score: float) -> None:
        """A candidate finished rung ``rung`` with this mean accuracy."""
        self.results.setdefault(rung, {})[candidate_id] = mean_score

    def mark_promoted(self, candidate_id: int, rung: int) -> None:
        """A promotion of ``candidate_id`` to ``rung`` was dispatched (whatever its outcome later)."""
        self.promoted.setdefault(rung - 1, set()).add(candidate_id)

    def next_promotion(self) -> Optional[Tuple[int, int]]:
        """(candidate id, rung to train at) of the next promotion due, highest rung first, or None.
        Ties in score go to the earlier candidate, so the choice is deterministic."""
        for rung in range(self.config.rungs - 2, -1, -1):
            scores = self.results.get(rung, {})
            quota = len(scores) // self.config.eta
            best = sorted(scores, key=lambda c: (-scores[c], c))[:quota]
            done = self.promoted.get(rung, set())
            for candidate_id in best:
                if candidate_id not in done:
                    return candidate_id, rung + 1
        return None
