"""Helpers the tests share (importable as ``support``: pytest puts tests/ on the path): the layer
tables, parameter randomization and the repository's paths."""
import random
from pathlib import Path

import torch

import evonorm_plugins as ep
from evonorm_plugins.graph import PRIMITIVES, Genome, GenomeError, Node

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the repository: configs/, benchmarks/

B_LAYERS = {"B0": ep.EvoNormB0, "B1": ep.EvoNormB1, "B2": ep.EvoNormB2}
S_LAYERS = {"S0": ep.EvoNormS0, "S1": ep.EvoNormS1, "S2": ep.EvoNormS2}
ALL_LAYERS = {**B_LAYERS, **S_LAYERS}
PAPER = ["EvoNormB0", "EvoNormB1", "EvoNormB2", "EvoNormS0", "EvoNormS1", "EvoNormS2"]


def randomize_parameters(layer: torch.nn.Module, generator_seed: int = 1) -> None:
    """Move v, γ, β (and a running variance) away from their initial values, so tests see them used."""
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 1.5 + (0.25 if name != "bias" else -0.75))
        if getattr(layer, "running_var", None) is not None:
            layer.running_var.copy_(torch.rand(layer.num_features, generator=g) * 2 + 0.1)


def random_genome(rng: random.Random, size: int) -> Genome:
    """A random valid genome whose last node depends on x (for property tests)."""
    while True:
        nodes = []
        for i in range(size):
            op = rng.choice(list(PRIMITIVES))
            nodes.append(Node(op, tuple(rng.randrange(4 + i) for _ in range(PRIMITIVES[op].arity))))
        try:
            return Genome(tuple(nodes), 3 + size)
        except GenomeError:
            continue
