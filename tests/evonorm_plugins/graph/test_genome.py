"""Genome format: JSON round trip, validation errors, canonical form and hash, formulas."""
import json
import random

import pytest

from evonorm_plugins.graph import (
    AGGREGATION_OPS,
    ELEMENTWISE_OPS,
    Genome,
    GenomeError,
    genome_from_ops,
)
from evonorm_plugins.registry import paper_genome

from support import PAPER, random_genome


def test_primitive_set_is_the_papers():
    assert set(ELEMENTWISE_OPS) == {"add", "mul", "div", "max", "neg", "sigmoid", "tanh", "exp", "log", "abs", "square", "sqrt"}
    assert set(AGGREGATION_OPS) == {f"{s}_{a}" for s in ("mean", "var", "mean_sq") for a in ("batch", "instance", "group")}


@pytest.mark.parametrize("seed", range(20))
def test_json_round_trip_keeps_hash(seed):
    genome = random_genome(random.Random(seed), size=random.Random(seed).randint(1, 10))
    again = Genome.from_json(genome.to_json())
    assert again == genome and again.hash() == genome.hash()
    compact = Genome.from_json(genome.to_json(indent=None))
    assert compact == genome


@pytest.mark.parametrize("name", PAPER)
def test_paper_genomes_round_trip(name, tmp_path):
    genome = paper_genome(name)
    genome.save(tmp_path / "g.json")
    assert Genome.load(tmp_path / "g.json") == genome
    assert Genome.load(tmp_path / "g.json").hash() == genome.hash()
    assert genome.batch_dependent == name.startswith("EvoNormB")


def test_equivalent_genomes_share_a_hash():
    # x * sigmoid(v1 * x) / sqrt(var_group(x)), written four ways.
    plain = genome_from_ops([("mul", [3, 0]), ("sigmoid", [4]), ("mul", [0, 5]), ("var_group", [0]), ("sqrt", [7]), ("div", [6, 8])])
    swapped = genome_from_ops([("var_group", [0]), ("mul", [0, 3]), ("sqrt", [4]), ("sigmoid", [5]), ("mul", [7, 0]), ("div", [8, 6])])
    with_dead_nodes = genome_from_ops([
        ("tanh", [2]), ("mul", [3, 0]), ("exp", [4]), ("sigmoid", [5]), ("mul", [0, 7]), ("var_group", [0]),
        ("sqrt", [9]), ("div", [8, 10]),
    ])
    duplicated = genome_from_ops([
        ("mul", [3, 0]), ("mul", [0, 3]), ("sigmoid", [4]), ("sigmoid", [5]), ("mul", [0, 7]), ("var_group", [0]),
        ("sqrt", [9]), ("div", [8, 10]), ("add", [6, 4]),
    ], output=11)
    assert len({g.hash() for g in (plain, swapped, with_dead_nodes, duplicated)}) == 1
    canonical = {g.canonical() for g in (plain, swapped, with_dead_nodes, duplicated)}
    assert len(canonical) == 1
    assert len(canonical.pop().nodes) == 6


def test_different_expressions_differ():
    a = genome_from_ops([("var_group", [0]), ("sqrt", [4]), ("div", [0, 5])])
    b = genome_from_ops([("var_group", [0]), ("sqrt", [4]), ("div", [5, 0])])  # div is not commutative
    c = genome_from_ops([("var_instance", [0]), ("sqrt", [4]), ("div", [0, 5])])
    assert len({a.hash(), b.hash(), c.hash()}) == 3
    hashes = {paper_genome(n).hash() for n in PAPER}
    assert len(hashes) == 6


@pytest.mark.parametrize("seed", range(10))
def test_canonical_is_idempotent_and_keeps_hash(seed):
    genome = random_genome(random.Random(100 + seed), size=8)
    canonical = genome.canonical()
    assert canonical.hash() == genome.hash()
    assert canonical.canonical() == canonical
    assert len(canonical.nodes) <= len(genome.nodes)


@pytest.mark.parametrize("name, expected", [
    ("EvoNormB0", "x / max(sqrt(var_batch(x) + eps), v1 * x + sqrt(var_instance(x) + eps))"),
    ("EvoNormB1", "x / max(sqrt(var_batch(x) + eps), (x + 1) * sqrt(mean_sq_instance(x) + eps))"),
    ("EvoNormB2", "x / max(sqrt(var_batch(x) + eps), sqrt(mean_sq_instance(x) + eps) - x)"),
    ("EvoNormS0", "x * sigmoid(v1 * x) / sqrt(var_group(x) + eps)"),
    ("EvoNormS1", "x * sigmoid(x) / sqrt(var_group(x) + eps)"),
    ("EvoNormS2", "x * sigmoid(x) / sqrt(mean_sq_group(x) + eps)"),
])
def test_formula(name, expected):
    genome = paper_genome(name)
    assert genome.formula() == expected == str(genome)


def test_formula_parenthesizes_and_folds_constants():
    g = genome_from_ops([("add", [0, 3]), ("neg", [4]), ("square", [4]), ("div", [5, 6]), ("sigmoid", [1]), ("mul", [7, 8])])
    assert g.formula() == "-(x + v1) / (x + v1)^2 * 0.5"


def _bad(data):
    return {"schema_version": 1, **data}


@pytest.mark.parametrize("data, message", [
    (_bad({"nodes": [{"op": "dvi", "inputs": [0, 0]}], "output": 4}), r"node 4 has unknown op 'dvi'; known ops: add, mul"),
    (_bad({"nodes": [{"op": "sigmoid", "inputs": [0, 1]}], "output": 4}), r"node 4 \(sigmoid\) takes 1 input\(s\), got 2"),
    (_bad({"nodes": [{"op": "add", "inputs": [0, 9]}], "output": 4}), r"node 4 \(add\) reads node 9, which does not exist \(dangling input"),
    (_bad({"nodes": [{"op": "neg", "inputs": [0]}, {"op": "add", "inputs": [6, 4]}, {"op": "abs", "inputs": [5]}], "output": 6}),
     r"node 5 \(add\) reads node 6, which is not an earlier node \(a cycle"),
    (_bad({"nodes": [{"op": "sigmoid", "inputs": [4]}], "output": 4}), r"node 4 \(sigmoid\) reads node 4, which is not an earlier node"),
    (_bad({"nodes": [{"op": "tanh", "inputs": [3]}, {"op": "abs", "inputs": [0]}], "output": 4}), r"output node 4 \(tanh\) does not depend on x"),
    (_bad({"nodes": [{"op": "abs", "inputs": [0]}], "output": 7}), r"output 7 is not a node id \(0 to 4\)"),
    (_bad({"nodes": [{"op": "abs", "inputs": [0]}], "output": 4, "no_act_output": 2}), r"no_act_output node 2 \(v0\) does not depend on x"),
    ({"schema_version": 2, "nodes": [], "output": 0}, r"schema_version 2 is not supported"),
    (_bad({"nodes": []}), r"missing key\(s\) \['output'\]"),
    (_bad({"nodes": [], "output": 0, "outptu": 1}), r"unknown key\(s\) \['outptu'\] \(did you mean 'output'\?\)"),
    (_bad({"nodes": [{"op": "abs", "inputs": [0], "inptus": [1]}], "output": 4}),
     r"node 4 has unknown key\(s\) \['inptus'\] \(did you mean 'inputs'\?\); allowed: \['id', 'inputs', 'op'\]$"),
    (_bad({"nodes": [{"op": "abs", "inputs": [0], "weight": 2}], "output": 4}), r"node 4 has unknown key\(s\) \['weight'\]; allowed"),
    (_bad({"nodes": [{"op": 5, "inputs": [0]}], "output": 4}), r"node 4 'op' must be an op name \(a string\), got 5"),
    (_bad({"nodes": [{"op": "abs", "inputs": [0]}], "output": 4, "name": ["L"]}), r"'name' must be a string, got \['L'\]"),
    (_bad({"nodes": [{"op": "abs"}], "output": 4}), r"node 4 must be an object with 'op' and 'inputs'"),
    (_bad({"nodes": [{"id": 7, "op": "abs", "inputs": [0]}], "output": 4}), r"has id 7 but its id is 4"),
    (_bad({"nodes": [{"op": "abs", "inputs": ["x"]}], "output": 4}), r"node 4 \(abs\) has input 'x'; inputs are node ids"),
    ([1, 2], r"a genome is a JSON object"),
])
def test_validation_errors_name_the_node(data, message):
    with pytest.raises(GenomeError, match=message):
        Genome.from_json(json.dumps(data))


def test_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": [}')
    with pytest.raises(GenomeError, match=r"bad.json is not valid JSON: .* line 1 column 12"):
        Genome.load(bad)
    with pytest.raises(FileNotFoundError, match=r"genome file '.*missing.json' does not exist"):
        Genome.load(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError, match=r"genome path '.*' is a folder; give the path to a .json genome file"):
        Genome.load(tmp_path)
    # the error names the file for errors found after parsing too
    bad.write_text(json.dumps({"name": "L", "nodes": [{"op": "nope", "inputs": [0]}], "output": 4}))
    with pytest.raises(GenomeError, match=r"bad.json: genome 'L': node 4 has unknown op 'nope'"):
        Genome.load(bad)


@pytest.mark.parametrize("text, message", [
    ('{"name": "L', r"Unterminated string starting at line 1 column 10$"),
    ('{"name": "a\tb"}', r"Invalid control character at line 1 column 12$"),
    ('{"nodes": [],}', r"Illegal trailing comma before end of object at line 1 column 13$|Expecting property name enclosed in double quotes at line 1 column 14$"),
    ('{}\n{}', r"Extra data at line 2 column 1$"),
])
def test_json_errors_read_as_one_sentence(text, message, tmp_path):
    path = tmp_path / "g.json"
    path.write_text(text)
    with pytest.raises(GenomeError, match=r"^.*g\.json is not valid JSON: " + message) as error:
        Genome.load(path)
    assert " at at " not in str(error.value) and "\n" not in str(error.value)


def test_unreadable_files_are_genome_errors(tmp_path):
    path = tmp_path / "g.json"
    path.write_text("[" * 100_000)
    with pytest.raises(GenomeError, match=r"g\.json is nested too deeply to be a genome"):
        Genome.load(path)
    path.write_text('{"nodes": [], "output": ' + "9" * 5000 + "}")
    with pytest.raises(GenomeError, match=r"g\.json is not readable JSON: Exceeds the limit \(4300 digits\) for integer string conversion"):
        Genome.load(path)
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(GenomeError, match=r"g\.json is not UTF-8 text \(byte 10 is 0xff\)"):
        Genome.load(path)
    genome = paper_genome("EvoNormS0")
    path.write_bytes(b"\xef\xbb\xbf" + genome.to_json().encode())  # a byte-order mark, as some editors write
    assert Genome.load(path) == genome


def test_show_names_a_folder_as_a_folder(tmp_path, capsys):
    from evonorm_plugins.cli import main

    assert main(["show", str(tmp_path)]) == 2
    assert "is a folder; give the path to a .json genome file" in capsys.readouterr().err
