"""The evolution strategies: asynchronous regularized (aging) evolution with Pareto tournaments, and
random search with the same interface for ablations.

Both are driven from outside (the controller), which keeps any number of evaluations in flight::

    strategy = RegularizedEvolution(SearchSpace(), population_size=100, tournament_size=25, seed=0)
    proposal = strategy.propose()                 # as soon as a worker is free
    strategy.report(proposal.genome, scores)      # when its evaluation finishes; None if it was rejected

Replaying the finished evaluations of a stored run through :meth:`report`, in the order they finished,
rebuilds the population exactly (aging depends only on that order), which is how a search resumes.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Collection, Deque, Optional, Sequence, Tuple

from evonorm_plugins.graph import Genome

from .selection import pareto_front
from .space import SearchSpace, mutate, random_genome


@dataclass(frozen=True)
class Proposal:
    """A genome to evaluate, and the candidate id (as given to ``report``) of the member it was mutated
    from: None for a fresh or seeded genome; ``seeded``: one of the ``initial`` genomes (e.g. a paper
    layer), not found by the search. The store records both."""

    genome: Genome
    parent: Optional[int] = None
    seeded: bool = False


@dataclass(frozen=True)
class Member:
    """An evaluated genome with one score per proxy architecture (higher is better)."""

    genome: Genome
    scores: Tuple[float, ...]
    candidate_id: Optional[int] = None
    rung: int = 0  # fidelity of ``scores`` (multi-fidelity search: the highest rung the member reached)


class RandomSearch:
    """Every proposal is a fresh random genome of the space; reports are only counted."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.reported = 0

    def propose(self) -> Proposal:
        return Proposal(random_genome(self.space, self.rng))

    def report(self, genome: Genome, scores: Optional[Sequence[float]], candidate_id: Optional[int] = None) -> None:
        self.reported += 1

    def promote(self, candidate_id: int, rung: int, scores: Sequence[float]) -> None:
        """A candidate's scores after a longer training (multi-fidelity); random search has no use for them."""

    def skip_initial(self, proposed: Collection[str]) -> None:
        """Forget the ``initial`` genomes whose hash is in ``proposed`` (resume: already in the store)."""


class RegularizedEvolution(RandomSearch):
    """Aging evolution (Real et al. 2019) with the paper's multi-objective tournament.

    Until the population holds ``population_size`` evaluated members, proposals are the ``initial``
    genomes (e.g. the paper layers as seeds), then random genomes, or, with probability
    ``1 - random_while_filling`` once there is a member, children of the members so far. After that,
    each proposal draws ``tournament_size`` members at random, takes the Pareto front of their score
    vectors, and mutates a random member of the front. A reported evaluation joins the population and
    the oldest member leaves; a rejected one (``scores=None``) is discarded.

    ``random_while_filling`` below 1 is for small searches: few random layers of the paper's space train
    at all (3 in the first 150 candidates of a CPU run), so a population filled only by random draws would take
    most of a small budget to fill.
    """

    def __init__(
        self,
        space: SearchSpace,
        population_size: int,
        tournament_size: int,
        seed: int = 0,
        initial: Sequence[Genome] = (),
        random_while_filling: float = 1.0,
    ) -> None:
        super().__init__(space, seed)
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise ValueError(
                f"need population_size >= 2 and 1 <= tournament_size <= population_size, got "
                f"population_size={population_size}, tournament_size={tournament_size}"
            )
        outside = [g.formula() for g in initial if not space.contains(g)]
        if outside:
            raise ValueError(f"initial genomes outside the search space {space}: {outside}")
        if not 0 <= random_while_filling <= 1:
            raise ValueError(f"random_while_filling is a probability, got {random_while_filling}")
        self.random_while_filling = random_while_filling
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.population: Deque[Member] = deque()
        self._seeds = list(initial)

    def propose(self) -> Proposal:
        if len(self.population) < self.population_size and (
            self._seeds or not self.population or self.random_while_filling >= 1 or self.rng.random() < self.random_while_filling
        ):
            if self._seeds:
                return Proposal(self._seeds.pop(0), seeded=True)
            return Proposal(random_genome(self.space, self.rng))
        drawn = self.rng.sample(list(self.population), min(self.tournament_size, len(self.population)))
        top_rung = max(member.rung for member in drawn)
        tournament = [member for member in drawn if member.rung == top_rung]  # never compare fidelities
        front = pareto_front([member.scores for member in tournament])
        parent = tournament[self.rng.choice(front)]
        return Proposal(mutate(parent.genome, self.space, self.rng), parent.candidate_id)

    def skip_initial(self, proposed: Collection[str]) -> None:
        self._seeds = [genome for genome in self._seeds if genome.hash() not in proposed]

    def report(self, genome: Genome, scores: Optional[Sequence[float]], candidate_id: Optional[int] = None) -> None:
        super().report(genome, scores, candidate_id)
        if scores is None:
            return
        scores = tuple(float(s) for s in scores)
        if self.population and len(scores) != len(self.population[0].scores):
            raise ValueError(
                f"reported {len(scores)} scores but the population has {len(self.population[0].scores)} per "
                f"member: report one score per proxy architecture, always the same ones"
            )
        self.population.append(Member(genome, scores, candidate_id))
        if len(self.population) > self.population_size:
            self.population.popleft()

    def promote(self, candidate_id: int, rung: int, scores: Sequence[float]) -> None:
        """The member from ``candidate_id``, if still in the population, now has ``rung``'s scores; it
        keeps its age. In a tournament, members of the highest rung drawn beat all others
        (:mod:`evonorm_search.fidelity`)."""
        for index, member in enumerate(self.population):
            if member.candidate_id == candidate_id and rung > member.rung:
                self.population[index] = Member(member.genome, tuple(float(s) for s in scores), candidate_id, rung)
