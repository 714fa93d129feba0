"""The search space: random genomes and their mutations (the generator and mutator of the search).

A layer is a genome (``evonorm_plugins.graph.Genome``) over the four initial nodes x, 0, v0, v1 with at
most ``max_nodes`` nodes in all (the paper: 14). The batch-dependent space (B-series) allows every
primitive; the batch-independent one (S-series) leaves out the batch aggregations.

Mutation follows the paper: pick an intermediate node the output uses, then either give it a new op
(drawing new inputs when the arity changes) or re-draw one of its inputs among the earlier nodes.
Mutating a node the output does not use would change nothing, so such nodes are not picked.
"""
from __future__ import annotations

import random
from typing import Annotated, Optional, Sequence, Tuple

from pydantic import Field

from evonorm_plugins.graph import PRIMITIVES, Genome, GenomeError, Node
from evonorm_plugins.graph.primitives import NUM_INITIAL_NODES

from .schema import config_class

PAPER_MAX_NODES = 14


@config_class
class SearchSpace:
    """Which genomes the search may produce.

    Args:
        batch_dependent: allow the batch aggregations (B-series search) or not (S-series search).
        max_nodes: most nodes in a genome, the four initial ones included (paper: 14).
        min_nodes: fewest; a random genome has between ``min_nodes`` and ``max_nodes`` nodes.
        ops: the primitives to draw from (default: all of the space's primitives).
    """


    batch_dependent: bool = True
    max_nodes: Annotated[int, Field(gt=NUM_INITIAL_NODES, le=64)] = PAPER_MAX_NODES
    min_nodes: Annotated[int, Field(gt=NUM_INITIAL_NODES)] = NUM_INITIAL_NODES + 1
    ops: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if not NUM_INITIAL_NODES < self.min_nodes <= self.max_nodes:
            raise ValueError(
                f"need {NUM_INITIAL_NODES} < min_nodes <= max_nodes (nodes include the 4 initial ones), got "
                f"min_nodes={self.min_nodes}, max_nodes={self.max_nodes}"
            )
        unknown = sorted(set(self.ops or ()) - set(PRIMITIVES))
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {', '.join(PRIMITIVES)}")
        if not self.available_ops:
            raise ValueError("the search space has no ops left; allow some element-wise or aggregation ops")

    @property
    def available_ops(self) -> Tuple[str, ...]:
        candidates = self.ops or tuple(PRIMITIVES)
        return tuple(op for op in candidates if self.batch_dependent or PRIMITIVES[op].axes != "batch")

    def contains(self, genome: Genome) -> bool:
        """Whether ``genome`` could have been produced in this space."""
        allowed = set(self.available_ops)
        return genome.num_nodes <= self.max_nodes and all(node.op in allowed for node in genome.nodes)


def _random_node(rng: random.Random, ops: Sequence[str], node_id: int) -> Node:
    op = rng.choice(ops)
    return Node(op, tuple(rng.randrange(node_id) for _ in range(PRIMITIVES[op].arity)))


def random_genome(space: SearchSpace, rng: random.Random, max_tries: int = 1000) -> Genome:
    """A uniformly built random genome of the space whose output (its last node) depends on x."""
    ops = space.available_ops
    for _ in range(max_tries):
        size = rng.randint(space.min_nodes, space.max_nodes) - NUM_INITIAL_NODES
        nodes = tuple(_random_node(rng, ops, NUM_INITIAL_NODES + i) for i in range(size))
        try:
            return Genome(nodes, NUM_INITIAL_NODES + size - 1)
        except GenomeError:  # the output ignores x: draw again
            continue
    raise RuntimeError(f"no valid genome in {max_tries} draws from {space}; allow more ops or nodes")


def mutate(genome: Genome, space: SearchSpace, rng: random.Random, max_tries: int = 100) -> Genome:
    """A valid genome of the space that computes a different expression (hash) than ``genome``."""
    ops = space.available_ops
    used = sorted(i for i in genome.ancestors(genome.output) if i >= NUM_INITIAL_NODES)
    if not used:
        raise ValueError("cannot mutate a genome whose output is an initial node")
    for _ in range(max_tries):
        node_id = rng.choice(used)
        old = genome.nodes[node_id - NUM_INITIAL_NODES]
        if rng.random() < 0.5:  # a new op; inputs kept where the arity allows
            op = rng.choice(ops)
            inputs = list(old.inputs[: PRIMITIVES[op].arity])
            inputs += [rng.randrange(node_id) for _ in range(PRIMITIVES[op].arity - len(inputs))]
            new = Node(op, tuple(inputs))
        else:  # one input re-drawn among the earlier nodes
            inputs = list(old.inputs)
            inputs[rng.randrange(len(inputs))] = rng.randrange(node_id)
            new = Node(old.op, tuple(inputs))
        nodes = list(genome.nodes)
        nodes[node_id - NUM_INITIAL_NODES] = new
        try:
            child = Genome(tuple(nodes), genome.output)
        except GenomeError:  # the output no longer depends on x
            continue
        if child.hash() != genome.hash():
            return child
    raise RuntimeError(f"no valid, different mutation of {genome.formula()} in {max_tries} tries")
