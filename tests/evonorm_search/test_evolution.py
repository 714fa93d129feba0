"""Regularized evolution with Pareto tournaments: population mechanics, resume by replay, and selection
pressure on a toy objective."""
import statistics

import pytest
import torch

from evonorm_plugins.graph import GraphNormAct
from evonorm_plugins.registry import paper_genome
from evonorm_search.evolution import Proposal, RandomSearch, RegularizedEvolution
from evonorm_search.space import SearchSpace

SPACE = SearchSpace(batch_dependent=False, max_nodes=10)


def toy_scores(genome, inputs, target):
    """Two 'architectures': closeness to S1's function on two inputs (a stand-in for accuracies)."""
    torch.manual_seed(0)
    with torch.no_grad():
        layer = GraphNormAct(8, genome, groups=4)
        errors = [torch.nan_to_num((layer(x) - t).square().mean(), nan=1e6, posinf=1e6).item() for x, t in zip(inputs, target)]
    return tuple(-min(e, 1e6) for e in errors)


@pytest.fixture(scope="module")
def toy_task():
    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 8, 4, 4, generator=g) * 2, torch.randn(2, 8, 4, 4, generator=g) + 1]
    reference = GraphNormAct(8, paper_genome("EvoNormS1"), groups=4)
    with torch.no_grad():
        target = [reference(x) for x in inputs]
    return inputs, target


def test_population_ages_and_discards_rejections():
    strategy = RegularizedEvolution(SPACE, population_size=5, tournament_size=2, seed=0)
    reported = []
    for i in range(12):
        genome = strategy.propose().genome
        scores = None if i % 4 == 3 else (float(i), float(-i))
        strategy.report(genome, scores)
        if scores is not None:
            reported.append(genome)
    assert [m.genome for m in strategy.population] == reported[-5:]  # the oldest left, rejections never joined
    assert strategy.reported == 12
    with pytest.raises(ValueError, match=r"reported 3 scores but the population has 2 per member"):
        strategy.report(strategy.propose().genome, (1.0, 2.0, 3.0))


def test_seeds_come_first_and_resume_by_replay_rebuilds_the_population():
    seeds = [paper_genome("EvoNormS1"), paper_genome("EvoNormS2")]
    strategy = RegularizedEvolution(SPACE, population_size=4, tournament_size=2, seed=1, initial=seeds)
    assert [strategy.propose(), strategy.propose()] == [Proposal(seed, seeded=True) for seed in seeds]  # seeds have no parent
    skipping = RegularizedEvolution(SPACE, population_size=4, tournament_size=2, seed=1, initial=seeds)
    skipping.skip_initial({seeds[0].hash()})  # resume: the first seed is in the store already
    assert skipping.propose() == Proposal(seeds[1], seeded=True) and not skipping.propose().seeded
    history = []
    for i in range(10):
        genome = strategy.propose().genome
        history.append((genome, (float(i % 3), float(i % 2))))
        strategy.report(*history[-1])
    resumed = RegularizedEvolution(SPACE, population_size=4, tournament_size=2, seed=99)
    for genome, scores in history:
        resumed.report(genome, scores)
    assert list(resumed.population) == list(strategy.population)
    with pytest.raises(ValueError, match=r"initial genomes outside the search space"):
        RegularizedEvolution(SPACE, 4, 2, initial=[paper_genome("EvoNormB0")])
    with pytest.raises(ValueError, match=r"1 <= tournament_size <= population_size"):
        RegularizedEvolution(SPACE, population_size=4, tournament_size=5)


@pytest.mark.parametrize("seed", range(3))
def test_selection_pressure_improves_the_population(toy_task, seed):
    """After 300 evaluations the population is better than the random one it started from."""
    strategy = RegularizedEvolution(SPACE, population_size=20, tournament_size=5, seed=seed)
    initial = []
    for i in range(300):
        genome = strategy.propose().genome
        scores = toy_scores(genome, *toy_task)
        strategy.report(genome, scores)
        if i < 20:
            initial.append(sum(scores))
    final = [sum(member.scores) for member in strategy.population]
    assert statistics.median(final) > statistics.median(initial) + 0.2


def test_random_search_proposals_are_reproducible():
    a, b = RandomSearch(SPACE, seed=5), RandomSearch(SPACE, seed=5)
    assert [a.propose().genome.hash() for _ in range(10)] == [b.propose().genome.hash() for _ in range(10)]


def test_a_child_proposal_names_its_parent_and_a_random_one_none():
    strategy = RegularizedEvolution(SPACE, population_size=3, tournament_size=2, seed=2)
    for candidate_id in range(3):
        proposal = strategy.propose()
        assert proposal.parent is None  # filling the population: fresh random genomes
        strategy.report(proposal.genome, (float(candidate_id),), candidate_id=100 + candidate_id)
    child = strategy.propose()
    assert child.parent in {100, 101, 102}
    assert child.genome != strategy.population[child.parent - 100].genome
    assert RandomSearch(SPACE, seed=0).propose().parent is None
