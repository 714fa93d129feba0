"""Genomes far deeper than Python's recursion limit: load, print, hash, draw, build, run, show.

The search space caps genomes at 14 nodes; the library itself takes any size, so nothing on these
paths may recurse once per node (a chain of ~400 nodes used to raise RecursionError).
"""
import sys

import pytest
import torch

from evonorm_plugins.cli import main
from evonorm_plugins.graph import Genome, GraphNormAct, genome_from_ops
from evonorm_plugins.graph.render import to_svg

# One op per link, cycling; every link differs from the one before, so canonicalization keeps them all.
_CYCLE = [("tanh", None), ("add", 0), ("mul", 3), ("sigmoid", None), ("max", 0), ("var_batch", None), ("add", 0)]


def chain(length: int) -> Genome:
    ops = []
    for i in range(length):
        op, other = _CYCLE[i % len(_CYCLE)]
        previous = 3 + i if i else 0
        ops.append((op, [previous] if other is None else [previous, other]))
    return genome_from_ops(ops, name="chain", no_act_output=3 + length - 1)


@pytest.mark.parametrize("length", [1500, 5000])
def test_deep_chain_loads_prints_hashes_and_runs(length, tmp_path):
    assert length > sys.getrecursionlimit()
    genome = chain(length)
    path = tmp_path / "chain.json"
    genome.save(path)
    loaded = Genome.load(path)
    assert loaded == genome and loaded.hash() == genome.hash()

    def count(op):
        return sum(_CYCLE[i % len(_CYCLE)][0] == op for i in range(length))

    text = str(loaded)
    assert text.count("tanh(") == count("tanh") and text.count("var_batch(") == count("var_batch")
    canonical = loaded.canonical()
    assert len(canonical.nodes) == length and canonical.hash() == genome.hash() and canonical.canonical() == canonical
    assert to_svg(loaded).count("<rect") == 1 + 2 + length  # background, x and v1, every link

    layer = GraphNormAct(4, loaded, groups=2)
    assert len(layer.ops) == length and layer.running_stats.shape == (count("var_batch"), 4)
    x = torch.randn(3, 4, 2, 2, requires_grad=True)
    y = layer(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert "genome=" in repr(layer)


def test_show_prints_and_draws_a_deep_genome(tmp_path, capsys):
    path = tmp_path / "chain.json"
    chain(5000).save(path)
    assert main(["show", str(path), "-o", str(tmp_path / "chain.svg")]) == 0
    out = capsys.readouterr().out
    assert "nodes:           5004 (5000 after canonicalization)" in out
    assert (tmp_path / "chain.svg").stat().st_size > 0


def doubling(length: int) -> Genome:
    """Each node adds its predecessor to itself: written out in full, the formula doubles per node."""
    return genome_from_ops([("tanh", [0])] + [("add", [4 + i, 4 + i]) for i in range(length - 1)])


def test_formula_names_long_shared_subexpressions(monkeypatch):
    from evonorm_plugins.graph import printing

    text = str(doubling(5000))  # 2^5000 terms written out
    assert len(text) < 2_000_000 and text.count(" where ") == 1
    head, bindings = text.split(" where ")
    names = [binding.split(" = ")[0] for binding in bindings.split(", ")]
    assert len(names) == len(set(names)) > 100 and head.startswith(names[-1] + " + ")

    # Substituting the names back gives the formula written out in full (a sum needs no parentheses).
    small = doubling(12)
    assert " where " in str(small)
    head, bindings = str(small).split(" where ")
    for binding in reversed(bindings.split(", ")):
        name, body = binding.split(" = ")
        head = head.replace(name, body)
    monkeypatch.setattr(printing, "SHARED_TEXT_LIMIT", 10 ** 9)
    assert head == str(small) == " + ".join(["tanh(x)"] * 2 ** 11)
