"""The controller: dedupe, record, resume after a crash (a real process killed with SIGKILL), and the
evaluator's protocols on the smoke proxy task."""
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evonorm_plugins.graph import genome_from_ops
from evonorm_plugins.registry import paper_genome
from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.evaluator import EvaluationConfig, Outcome, evaluate
from evonorm_search.proxy import ArchitectureConfig
from evonorm_search.space import SearchSpace
from evonorm_search.store import SearchStore

from search_tasks import fake_evaluate
from support import TESTS

SPACE = SearchSpace(batch_dependent=False, max_nodes=9)


def config(budget, strategy="evolution"):
    return SearchConfig(space=SPACE, strategy=strategy, population_size=8, tournament_size=3, budget=budget, seed=1)


@pytest.mark.parametrize("strategy", ["evolution", "random"])
def test_run_records_every_candidate(tmp_path, strategy):
    lines = []
    store = Controller(tmp_path / "s.sqlite", config(60, strategy), fake_evaluate, lambda *update: lines.append(update)).run()
    counts = store.counts()
    assert store.finished_count() == 60 and counts.get("pending", 0) == 0
    assert counts["done"] + counts["rejected"] == 60
    assert counts.get("rejected:quality", 0) > 0
    assert lines and lines[-1][:2] == (60, 60) and "0 running" in lines[-1][2]  # throttled, and always the final state
    top = store.top(3)
    assert len(top) == 3 and top[0].scores[0] + top[0].scores[1] >= top[1].scores[0] + top[1].scores[1]


def test_duplicates_reuse_scores_without_evaluating(tmp_path):
    calls = []

    def counting(genome, cfg):
        calls.append(genome.hash())
        return fake_evaluate(genome, cfg)

    store = Controller(tmp_path / "s.sqlite", config(120), counting).run()
    duplicates = store.counts().get("done:duplicate", 0) + store.counts().get("rejected:duplicate", 0)
    assert duplicates > 0
    assert len(calls) == 120 - duplicates  # a duplicate is never evaluated


def test_config_mismatch_and_missing_search(tmp_path):
    Controller(tmp_path / "s.sqlite", config(3), fake_evaluate).run()
    with pytest.raises(ValueError, match=r"holds a search with another config \(differing: budget\)"):
        Controller(tmp_path / "s.sqlite", config(5), fake_evaluate)
    # the same config again (its tuples stored as JSON lists) continues the search: nothing left to do
    again = Controller(tmp_path / "s.sqlite", config(3), fake_evaluate).run()
    assert again.finished_count() == 3
    with pytest.raises(ValueError, match=r"holds no search to resume"):
        Controller(tmp_path / "empty.sqlite")


@pytest.mark.slow
def test_kill_9_mid_run_loses_and_repeats_nothing(tmp_path):
    """A real controller process is killed with SIGKILL mid-run; resuming finishes the budget, every
    evaluation finished before the kill is kept and none of them is evaluated again."""
    store_path = tmp_path / "search.sqlite"
    log = tmp_path / "evaluated.log"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{str(TESTS)!r}, {str(Path(__file__).parent)!r}]
        from search_tasks import fake_evaluate
        from test_controller import config
        from evonorm_search.controller import Controller

        def slow(genome, cfg):
            with open({str(log)!r}, "a") as f:
                f.write(genome.hash() + "\\n")
            time.sleep(0.05)
            return fake_evaluate(genome, cfg)

        Controller({str(store_path)!r}, config(400), slow).run()
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not store_path.exists() or SearchStore(store_path).finished_count() < 10):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = SearchStore(store_path).finished()
    finished_before = {c.id: (c.status, c.scores) for c in before}
    assert 10 <= len(finished_before) < 400
    finished_hashes = {c.hash for c in before if c.protocol != "duplicate"}
    evaluated_before = log.read_text().split()

    calls = []

    def recording(genome, cfg):
        calls.append(genome.hash())
        return fake_evaluate(genome, cfg)

    store = Controller(store_path, None, recording).run()  # resume: the config comes from the store
    after = {c.id: (c.status, c.scores) for c in store.finished()}
    assert store.finished_count() == 400
    assert all(after[i] == finished_before[i] for i in finished_before)  # nothing finished was lost or changed
    assert not finished_hashes & set(calls)  # nor evaluated again
    assert len(evaluated_before) >= len([c for c in before if c.protocol is None])


SMOKE = EvaluationConfig(
    architectures=(ArchitectureConfig("resnet50v2", 0.125, (1, 1, 1, 1)),),
    data_dir=None, data_limit=600, batch_size=32, train_steps=30, quality_steps=30, quality_threshold=0.2,
    stability_steps=10, lr=0.05,
)


def test_evaluator_protocols_on_the_smoke_task():
    s0 = evaluate(paper_genome("EvoNormS0"), SMOKE)
    assert s0.scores is not None and s0.scores[0] > 0.2, s0
    bn_relu = genome_from_ops([("var_batch", [0]), ("sqrt", [4]), ("mean_batch", [0]), ("neg", [6]), ("add", [0, 7]), ("div", [8, 5]), ("max", [9, 1])])
    assert evaluate(bn_relu, SMOKE).scores is not None
    exploding = evaluate(genome_from_ops([("exp", [0]), ("exp", [4])]), SMOKE)
    assert exploding.scores is None and exploding.protocol == "stability"
    constant = evaluate(genome_from_ops([("mul", [0, 1])]), EvaluationConfig(**{**SMOKE.__dict__, "stability": False}))
    assert constant.scores is None and constant.protocol == "quality" and "< 0.2" in constant.reason


def test_a_missing_dataset_stops_the_run_instead_of_rejecting_everything(tmp_path):
    broken = SearchConfig(space=SPACE, budget=3, evaluation=EvaluationConfig(data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-10 python batches"):
        Controller(tmp_path / "s.sqlite", broken).run()
    assert SearchStore(tmp_path / "s.sqlite").finished_count() == 0


def test_config_numbers_are_coerced_and_bad_ones_named():
    config = SearchConfig.from_dict({"budget": "10", "evaluation": {"stability_threshold": "1.0e8", "train_steps": 5.0}})
    assert config.budget == 10 and config.evaluation.stability_threshold == 1e8 and config.evaluation.train_steps == 5
    with pytest.raises(ValueError, match=r"evaluation.lr: Input should be a valid number.*got 'fast'"):
        SearchConfig.from_dict({"evaluation": {"lr": "fast"}})


def test_the_same_error_over_and_over_stops_the_run(tmp_path):
    def broken(genome, cfg):
        return Outcome(None, "error", "TypeError: '>' not supported between instances of 'float' and 'str'")

    with pytest.raises(RuntimeError, match=r"5 candidates in a row failed with the same error, so the run itself is broken"):
        Controller(tmp_path / "s.sqlite", config(50), broken).run()
    assert SearchStore(tmp_path / "s.sqlite").finished_count() < 50


def test_a_store_from_before_mean_scores_is_upgraded_in_place(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE candidates (id INTEGER PRIMARY KEY AUTOINCREMENT, genome TEXT NOT NULL, hash TEXT NOT NULL,
            functional_hash TEXT, parent INTEGER, status TEXT NOT NULL, protocol TEXT, reason TEXT, scores TEXT,
            wall_time REAL, created REAL NOT NULL, finished REAL, finish_order INTEGER);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)
    for order, (name, scores) in enumerate([("EvoNormS0", [0.2, 0.4]), ("EvoNormS1", [0.5, 0.5])], start=1):
        genome = paper_genome(name)
        db.execute("INSERT INTO candidates (genome, hash, status, scores, created, finish_order) VALUES (?, ?, 'done', ?, 0, ?)",
                   (genome.to_json(indent=None), genome.hash(), json.dumps(scores), order))
    db.commit()
    db.close()
    top = SearchStore(path).top(2)
    assert [c.scores for c in top] == [(0.5, 0.5), (0.2, 0.4)]
