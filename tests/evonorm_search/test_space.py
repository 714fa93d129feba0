"""Search space: random genomes and mutations are always valid, in the space, and mutations change the layer."""
import random

import pytest
import torch

from evonorm_plugins.graph import PRIMITIVES, GraphNormAct
from evonorm_plugins.registry import paper_genome
from evonorm_search.selection import dominates, pareto_front
from evonorm_search.space import PAPER_MAX_NODES, SearchSpace, mutate, random_genome


@pytest.mark.parametrize("batch_dependent", [True, False])
def test_random_genomes_are_valid_and_in_the_space(batch_dependent):
    space = SearchSpace(batch_dependent=batch_dependent)
    rng = random.Random(0)
    genomes = [random_genome(space, rng) for _ in range(300)]
    for genome in genomes:
        assert space.contains(genome) and genome.num_nodes <= PAPER_MAX_NODES
        assert 0 in genome.ancestors(genome.output)  # depends on x
        if not batch_dependent:
            assert not genome.batch_dependent
    assert len({g.hash() for g in genomes}) > 150  # diverse (small random graphs often reduce alike)
    used_ops = {node.op for g in genomes for node in g.nodes}
    assert used_ops == set(space.available_ops)
    assert any(g.batch_dependent for g in genomes) == batch_dependent


@pytest.mark.parametrize("batch_dependent", [True, False])
def test_mutations_are_valid_different_and_run(batch_dependent):
    space = SearchSpace(batch_dependent=batch_dependent)
    rng = random.Random(1)
    genome = paper_genome("EvoNormB0" if batch_dependent else "EvoNormS0")
    x = torch.randn(2, 8, 4, 4)
    for _ in range(200):
        child = mutate(genome, space, rng)
        assert space.contains(child) and child.hash() != genome.hash()
        assert child.output == genome.output and len(child.nodes) == len(genome.nodes)
        changed = [i for i, (a, b) in enumerate(zip(genome.nodes, child.nodes)) if a != b]
        assert len(changed) == 1  # one node mutated
        assert GraphNormAct(8, child, groups=4)(x).shape == x.shape
        genome = child


def test_space_errors():
    with pytest.raises(ValueError, match=r"need 4 < min_nodes <= max_nodes"):
        SearchSpace(max_nodes=4)
    with pytest.raises(ValueError, match=r"unknown ops \['softmax'\]"):
        SearchSpace(ops=("add", "softmax"))
    with pytest.raises(ValueError, match=r"no ops left"):
        SearchSpace(batch_dependent=False, ops=("var_batch",))
    assert SearchSpace(batch_dependent=False).available_ops == tuple(op for op in PRIMITIVES if not op.endswith("_batch"))


def test_pareto_front_on_hand_made_tables():
    scores = [(0.5, 0.5), (0.6, 0.4), (0.4, 0.6), (0.45, 0.45), (0.6, 0.4), (0.7, 0.1)]
    assert pareto_front(scores) == [0, 1, 2, 4, 5]  # (0.45, 0.45) is dominated by (0.5, 0.5)
    assert pareto_front([(1.0, 2.0, 3.0)]) == [0]
    assert pareto_front([(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)]) == [2]
    assert dominates((1, 1), (1, 0)) and not dominates((1, 1), (1, 1)) and not dominates((2, 0), (0, 2))
    with pytest.raises(ValueError, match=r"score vectors differ in length"):
        pareto_front([(1.0,), (1.0, 2.0)])
