"""Rejection protocols and the search store."""
import sqlite3

import pytest

from evonorm_plugins.graph import genome_from_ops
from evonorm_plugins.registry import paper_genome
from evonorm_search.dedupe import functional_hash
from evonorm_search.stability import stability_test
from evonorm_search.store import SearchStore

EXP_EXP = genome_from_ops([("exp", [0]), ("exp", [4])])
FOURTH_POWER = genome_from_ops([("square", [0]), ("square", [4])])
BN_RELU = genome_from_ops([("var_batch", [0]), ("sqrt", [4]), ("mean_batch", [0]), ("neg", [6]), ("add", [0, 7]), ("div", [8, 5]), ("max", [9, 1])])


def test_functional_hash_equates_rewritings_and_separates_functions():
    twice = genome_from_ops([("add", [0, 0])])
    two_times = genome_from_ops([("exp", [1]), ("add", [4, 4]), ("mul", [0, 5])])  # (e^0 + e^0)·x
    assert twice.hash() != two_times.hash()
    assert functional_hash(twice) == functional_hash(two_times)
    hashes = {functional_hash(paper_genome(f"EvoNorm{n}")) for n in ("B0", "B1", "B2", "S0", "S1", "S2")}
    assert len(hashes) == 6
    assert functional_hash(paper_genome("EvoNormS0")) == functional_hash(paper_genome("EvoNormS0").canonical())


@pytest.mark.parametrize("genome, expected", [
    (EXP_EXP, r"not finite"),
    (FOURTH_POWER, r"gradient norm .* > 1e\+08"),
])
def test_stability_rejects_exploding_layers(genome, expected):
    verdict = stability_test(genome, max_steps=20)
    assert not verdict.passed
    assert verdict.reason.startswith("stability:")
    import re
    assert re.search(expected, verdict.reason)


@pytest.mark.parametrize("genome", [paper_genome("EvoNormS0"), BN_RELU], ids=["S0", "BN-ReLU"])
def test_stability_accepts_normalizing_layers(genome):
    verdict = stability_test(genome, max_steps=20)
    assert verdict.passed and 0 < verdict.value < 1e8


def test_store_records_transitions_and_survives_reopening(tmp_path):
    path = tmp_path / "search.sqlite"
    store = SearchStore(path)
    store.set_meta("config", {"population_size": 8})
    s0, b0 = paper_genome("EvoNormS0"), paper_genome("EvoNormB0")
    a = store.add(s0, functional_hash=functional_hash(s0))
    b = store.add(b0, parent=a)
    c = store.add(EXP_EXP, parent=a)
    store.complete(b, (0.5, 0.25), wall_time=1.5)
    store.reject(c, "stability", "stability: gradient norm not finite", wall_time=0.1)
    with pytest.raises(ValueError, match=r"candidate 2 is not pending"):
        store.complete(b, (0.1, 0.1), wall_time=1.0)
    store.close()

    reopened = SearchStore(path)  # as after a crash: what was committed is there
    assert reopened.get_meta("config") == {"population_size": 8}
    assert [c.id for c in reopened.pending()] == [a]
    finished = reopened.finished()
    assert [(f.id, f.status) for f in finished] == [(b, "done"), (c, "rejected")]
    assert finished[0].scores == (0.5, 0.25) and finished[0].parent == a and finished[0].genome == b0
    assert reopened.counts() == {"pending": 1, "done": 1, "rejected": 1, "rejected:stability": 1}
    # duplicates reuse the scores of the finished original
    original = reopened.seen(b0.canonical().hash(), None)
    assert original.id == b
    d = reopened.add(b0.canonical(), parent=b)
    reopened.complete_as_duplicate(d, original)
    assert reopened.finished()[-1].scores == (0.5, 0.25)
    assert [t.id for t in reopened.top(5)] == [b]
    with sqlite3.connect(str(path)) as db:  # a plain SQLite file anyone can inspect
        assert db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 4
