"""The store cannot be misused: one writer at a time (named when refused), read-only opening for the
commands that only read, foreign and damaged files refused in one line, a store whose run never
started reusable, seeds marked and never proposed twice, retries recorded with their causes."""
import os
import socket
import sqlite3

import pytest

from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.evaluator import Outcome
from evonorm_search.lock import StoreLock, StoreLockedError
from evonorm_search.space import SearchSpace
from evonorm_search.store import SearchStore, StoreError

from search_tasks import fake_evaluate

SPACE = SearchSpace(batch_dependent=False, max_nodes=9)


def config(budget, space=SPACE, **changes):
    return SearchConfig(space=space, population_size=8, tournament_size=3, budget=budget, seed=1, **changes)


def test_a_second_writer_is_refused_with_the_owner_named(tmp_path):
    path = tmp_path / "s.sqlite"
    with StoreLock(path):
        with pytest.raises(StoreLockedError, match=rf"s.sqlite is in use by pid {os.getpid()} on {socket.gethostname()}"):
            Controller(path, config(3), fake_evaluate)
        assert not path.exists()  # refused before anything was written
    with Controller(path, config(3), fake_evaluate) as controller:
        controller.run()
        with pytest.raises(StoreLockedError, match="in use by pid"):
            Controller(path, None, fake_evaluate)
        assert SearchStore(path, read_only=True).finished_count() == 3  # readers are never refused
    with Controller(path, None, fake_evaluate) as resumed:  # released on close
        assert resumed.run().finished_count() == 3


def test_read_only_opening_writes_nothing_and_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match=r"no search store at .*missing.sqlite"):
        SearchStore(tmp_path / "missing.sqlite", read_only=True)
    assert not (tmp_path / "missing.sqlite").exists()
    other = tmp_path / "app.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    for read_only in (True, False):
        with pytest.raises(StoreError, match=r"app.sqlite is not a search store \(it holds the tables users\); give a new path"):
            SearchStore(other, read_only=read_only)
    assert {row[0] for row in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")} == {"users"}
    with pytest.raises(StoreError, match="is a folder"):
        SearchStore(tmp_path)


def test_a_damaged_store_is_one_line(tmp_path):
    path = tmp_path / "s.sqlite"
    with Controller(path, config(5), fake_evaluate) as controller:
        controller.run()
    data = path.read_bytes()
    path.write_bytes(data[:100])  # truncated
    for read_only in (True, False):
        with pytest.raises(StoreError, match=r"s.sqlite is not a search store or is damaged \(.*\); give the store a search wrote"):
            SearchStore(path, read_only=read_only)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="is not a search store or is damaged"):
        SearchStore(path, read_only=True)


def test_a_store_whose_run_never_started_takes_a_new_config(tmp_path):
    path = tmp_path / "s.sqlite"
    Controller(path, config(3)).close()  # e.g. it failed before its first candidate
    with Controller(path, config(4), fake_evaluate) as controller:
        assert controller.run().finished_count() == 4
    with pytest.raises(ValueError, match=r"holds a search with another config \(differing: budget\); resume it without --config"):
        Controller(path, config(6), fake_evaluate)


def test_seeds_are_marked_and_never_proposed_twice_across_a_resume(tmp_path):
    path = tmp_path / "s.sqlite"
    calls = []

    def interrupted(genome, cfg):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the third candidate (the third seed) is evaluated
        calls.append(genome.hash())
        return fake_evaluate(genome, cfg)

    with pytest.raises(KeyboardInterrupt):
        with Controller(path, config(8, SearchSpace(batch_dependent=False), seed_with_paper_layers=True), interrupted) as controller:
            controller.run()
    with Controller(path, None, fake_evaluate) as resumed:
        store = resumed.run()
        seeded = [c for c in store.finished() if c.seeded]
        assert sorted(c.genome.name for c in seeded) == ["EvoNormS0", "EvoNormS1", "EvoNormS2"]
        hashes = [c.hash for c in store.finished()]
        assert all(hashes.count(c.hash) == 1 for c in seeded)  # the pending seed ran once, none was re-proposed
        assert not any(c.seeded for c in store.finished() if c.genome.name not in ("EvoNormS0", "EvoNormS1", "EvoNormS2"))


def test_retries_and_their_causes_are_recorded(tmp_path):
    def retried(genome, cfg):
        return Outcome(fake_evaluate(genome, cfg).scores or (0.1, 0.1), retries=("worker died (exit code -9)",))

    with Controller(tmp_path / "s.sqlite", config(2), retried) as controller:
        store = controller.run()
        assert all(c.retries == ("worker died (exit code -9)",) for c in store.finished())
