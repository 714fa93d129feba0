"""Fuzzing genome JSON: whatever a file holds, loading gives a valid Genome or raises GenomeError.

Documents start as valid genomes (the paper layers, random graphs) and go through seeded random
mutations of their structure (values replaced by other JSON values, keys dropped, added or misspelt,
nodes duplicated or swapped, ids shifted), of their text (characters cut, inserted, doubled) and of
their bytes. A document that loads must round-trip: saved and loaded again it is equal, with the same
hash, canonical form and formula.
"""
import copy
import json
import random
from typing import Any, List, Tuple

import pytest

from evonorm_plugins.graph import PRIMITIVES, Genome, GenomeError
from evonorm_plugins.registry import paper_genome

from support import PAPER, random_genome

CASES_PER_SEED = 400
KEYS = ["schema_version", "name", "description", "nodes", "output", "no_act_output", "id", "op", "inputs",
        "outptu", "inptus", "Op", ""]
SNIPPETS = ["{", "}", "[", "]", ",", ":", '"', "\\", "\\u", "\\ud800", "0", "-1", "1e400", "NaN", "Infinity", "null",
            "true", "\x00", "\t", "\n", "\u00e9", "\U0001f600", '"op"', '"inputs": [', "9" * 5000]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, biased towards the ones a genome holds (small ints, op names)."""
    kind = rng.randrange(11 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(-3, 20)
    if kind == 3:
        return rng.choice([2 ** 63, -(2 ** 64), 10 ** 30, 4.0, -0.0, 1e308, float("nan"), float("inf"), 0.5])
    if kind == 4:
        return rng.choice(list(PRIMITIVES) + ["", "x", "ADD", "add ", "sqrt\u0000", "\ud800", "é" * 3])
    if kind == 5:
        return rng.choice(KEYS)
    if kind == 6:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(6)))
    if kind in (7, 8):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(KEYS): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def containers(document: Any) -> List[Any]:
    """Every list and dict inside ``document``, itself included."""
    found, stack = [], [document]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, dict)):
            found.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found


def mutate_structure(rng: random.Random, document: Any) -> Any:
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.05:
            return random_value(rng)
        target = rng.choice(containers(document) or [document])
        if isinstance(target, dict):
            keys = list(target)
            action = rng.randrange(4)
            if action == 0 and keys:
                del target[rng.choice(keys)]
            elif action == 1 or not keys:
                target[rng.choice(KEYS)] = random_value(rng)
            elif action == 2:
                key = rng.choice(keys)
                target[key] = random_value(rng)
            else:
                key = rng.choice(keys)
                if isinstance(target[key], int) and not isinstance(target[key], bool):
                    target[key] += rng.choice([-1, 1, 4, -100])
        elif isinstance(target, list):
            action = rng.randrange(5)
            if action == 0 and target:
                del target[rng.randrange(len(target))]
            elif action == 1 and target:
                target.insert(rng.randrange(len(target) + 1), copy.deepcopy(rng.choice(target)))
            elif action == 2 and len(target) > 1:
                i, j = rng.randrange(len(target)), rng.randrange(len(target))
                target[i], target[j] = target[j], target[i]
            elif action == 3 and target:
                target[rng.randrange(len(target))] = random_value(rng)
            else:
                target.append(random_value(rng))
    return document


def mutate_graph(rng: random.Random, document: dict) -> dict:
    """Edits that usually keep a genome valid: an op swapped for one of the same arity, an input rewired
    to another earlier node, an output moved, a name or description changed."""
    document = copy.deepcopy(document)
    nodes = document["nodes"]
    for _ in range(rng.randint(1, 4)):
        node_id = rng.randrange(len(nodes))
        node = nodes[node_id]
        action = rng.randrange(4)
        if action == 0:
            node["op"] = rng.choice([op for op, p in PRIMITIVES.items() if p.arity == len(node["inputs"])])
        elif action == 1:
            node["inputs"][rng.randrange(len(node["inputs"]))] = rng.randrange(4 + node_id)
        elif action == 2:
            document[rng.choice(["output", "no_act_output"])] = rng.randrange(4, 4 + len(nodes))
        else:
            document[rng.choice(["name", "description"])] = random_value(rng) if rng.random() < 0.3 else "evolved"
    return document


def mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        action = rng.randrange(4)
        if action == 0:
            text = text[:i] + text[i + rng.randint(1, 5):]
        elif action == 1:
            text = text[:i] + rng.choice(SNIPPETS) + text[i:]
        elif action == 2:
            text = text[:i]
        else:
            j = rng.randrange(len(text) + 1)
            text = text[:i] + text[min(i, j):max(i, j)] + text[i:]
    return text


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data) + 1)
        data[i:i] = bytes([rng.choice([0x80, 0xC3, 0xE2, 0xED, 0xEF, 0xFE, 0xFF, 0x00, rng.randrange(256)])])
    return bytes(data)


def seed_documents(rng: random.Random) -> List[dict]:
    documents = [paper_genome(name).to_dict() for name in PAPER]
    for _ in range(6):
        genome = random_genome(rng, rng.randint(1, 10))
        document = genome.to_dict()
        document["name"] = rng.choice(["evolved", "é ✓", "a\nb"])
        if rng.random() < 0.5:
            document["no_act_output"] = genome.output
        documents.append(document)
    return documents


def cases(seed: int) -> List[Tuple[str, Any]]:
    """(kind, payload): 'text' payloads go through Genome.from_json, 'bytes' through a file and Genome.load."""
    rng = random.Random(seed)
    documents = seed_documents(rng)
    mutations = [
        lambda d: ("text", json.dumps(mutate_graph(rng, d))),
        lambda d: ("text", json.dumps(mutate_structure(rng, d))),
        lambda d: ("text", json.dumps(mutate_structure(rng, mutate_graph(rng, d)))),
        lambda d: ("text", mutate_text(rng, json.dumps(d, indent=rng.choice([None, 2])))),
        lambda d: ("text", mutate_text(rng, json.dumps(mutate_structure(rng, d)))),
        lambda d: ("bytes", mutate_bytes(rng, json.dumps(d).encode())),
    ]
    return [rng.choice(mutations)(rng.choice(documents)) for _ in range(CASES_PER_SEED)]


def check_round_trip(genome: Genome, tmp_path) -> None:
    path = tmp_path / "again.json"
    genome.save(path)
    again = Genome.load(path)
    assert again == genome and again.hash() == genome.hash()
    assert again.name == genome.name and again.description == genome.description
    assert Genome.from_json(genome.to_json(indent=None)) == genome
    canonical = genome.canonical()
    assert canonical.hash() == genome.hash() and canonical.canonical() == canonical
    assert isinstance(genome.formula(), str) and genome.formula() == again.formula()


@pytest.mark.parametrize("seed", range(8))
def test_mutated_genome_json_loads_or_raises_genome_error(seed, tmp_path):
    loaded = rejected = 0
    path = tmp_path / "fuzz.json"
    for kind, payload in cases(seed):
        try:
            if kind == "text":
                genome = Genome.from_json(payload)
            else:
                path.write_bytes(payload)
                genome = Genome.load(path)
        except GenomeError as error:
            assert "\n" not in str(error), f"a multi-line message for {payload!r}: {error}"
            rejected += 1
            continue
        except Exception as error:  # anything else is the bug this test looks for
            pytest.fail(f"{type(error).__name__} (not GenomeError) from {kind} {payload!r}: {error}")
        check_round_trip(genome, tmp_path)
        loaded += 1
    assert loaded > 0 and rejected > 0  # the mutations reach both outcomes
