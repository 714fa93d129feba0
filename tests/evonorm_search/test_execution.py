"""Executors: the local process pool and Ray run the same search as the in-process executor, and a
worker that dies, hangs or raises costs only its own task."""
import functools
import os
import re
import signal
import time
from pathlib import Path

import pytest

from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.execution import (
    ExecutorConfig,
    InlineExecutor,
    ProcessExecutor,
    create_executor,
)
from evonorm_search.space import SearchSpace

import search_tasks
from support import TESTS

CONFIG = SearchConfig(space=SearchSpace(batch_dependent=False, max_nodes=9), population_size=8, tournament_size=3, budget=40, seed=3)


def run_search(path, executor, evaluate=search_tasks.fake_evaluate, in_flight=None, budget=40):
    config = SearchConfig(**{**CONFIG.__dict__, "budget": budget})
    store = Controller(path, config, evaluate).run(executor, in_flight)
    return [(c.id, c.hash, c.status, c.protocol, c.scores, c.parent) for c in store.finished()]


def collect(executor, count, timeout=240.0, results=()):
    """Wait for ``count`` outcomes (some may have come while ``kill_first_attempt`` pumped the executor)."""
    results, deadline = list(results), time.time() + timeout
    while len(results) < count and time.time() < deadline:
        results += executor.wait(timeout=0.5)
    assert len(results) == count, f"only {len(results)} of {count} tasks came back within {timeout} s"
    return dict(results)


def kill_first_attempt(folder: Path, executor, timeout: float = 240.0) -> list:
    """SIGKILL the worker running ``hang_on_first_attempt``'s first attempt; executors make progress
    only inside ``wait``, so it is pumped meanwhile. Returns the outcomes that came in."""
    came, deadline = [], time.time() + timeout
    while not (folder / "attempt-0").exists() or not (folder / "attempt-0").read_text():
        assert time.time() < deadline, "the task never started"
        came += executor.wait(timeout=0.1)
    time.sleep(0.2)
    os.kill(int((folder / "attempt-0").read_text()), signal.SIGKILL)
    return came


def test_inline_search_records_lineage(tmp_path):
    rows = run_search(tmp_path / "s.sqlite", InlineExecutor())
    assert len(rows) == 40
    ids = {row[0] for row in rows}
    parents = [row[5] for row in rows if row[5] is not None]
    assert parents and all(parent in ids for parent in parents)  # children of evaluated members
    assert all(row[5] is None for row in rows[:8])  # the initial population is random


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"backend\n  Input should be 'local' or 'ray'"):
        create_executor(ExecutorConfig(backend="slurm"))


# ------------------------------------------------------------------------------- local processes
@pytest.fixture(scope="module")
def pool():
    executor = ProcessExecutor(ExecutorConfig(workers=2, max_retries=1))
    yield executor
    executor.shutdown()


@pytest.fixture(scope="module")
def strict_pool():
    executor = ProcessExecutor(ExecutorConfig(workers=2, max_retries=0, time_limit=5.0))
    yield executor
    executor.shutdown()


def test_process_pool_runs_the_same_search_as_inline(tmp_path, pool):
    assert run_search(tmp_path / "pool.sqlite", pool, in_flight=1) == run_search(tmp_path / "inline.sqlite", InlineExecutor())


def test_process_pool_keeps_two_in_flight_and_never_evaluates_a_duplicate_twice(tmp_path, pool):
    log = tmp_path / "evaluated.log"
    rows = run_search(tmp_path / "s.sqlite", pool, functools.partial(search_tasks.logged_evaluate, str(log)), budget=80)
    evaluated = log.read_text().split()
    assert len(rows) == 80 and len(evaluated) == len(set(evaluated))
    assert len(evaluated) == sum(1 for row in rows if row[3] != "duplicate")


@pytest.mark.slow
def test_a_killed_worker_costs_one_retry(tmp_path, pool):
    pool.submit(1, search_tasks.hang_on_first_attempt, str(tmp_path))
    pool.submit(2, search_tasks.echo, 7.0)
    results = collect(pool, 2, results=kill_first_attempt(tmp_path, pool))
    assert results[1].scores == (1.0,) and results[1].retries == ("exit code -9",)  # the second attempt's result
    assert results[2].scores == (7.0,) and results[2].retries == ()


@pytest.mark.slow
def test_a_worker_killed_without_retries_is_an_error_and_its_replacement_serves_on(tmp_path, strict_pool):
    strict_pool.submit(1, search_tasks.hang_on_first_attempt, str(tmp_path))
    outcome = collect(strict_pool, 1, results=kill_first_attempt(tmp_path, strict_pool))[1]
    assert outcome.scores is None and outcome.protocol == "error"
    assert "worker died (exit code -9) on each of 1 attempts" in outcome.reason and outcome.retries == ()
    strict_pool.submit(2, search_tasks.echo, 1.0)
    strict_pool.submit(3, search_tasks.echo, 2.0)
    assert [o.scores for o in collect(strict_pool, 2).values()] in ([(1.0,), (2.0,)], [(2.0,), (1.0,)])


def test_time_limit_and_errors_cost_only_their_task(strict_pool):
    strict_pool.submit(1, search_tasks.hang, 60.0)
    strict_pool.submit(2, search_tasks.raise_error, "boom")
    strict_pool.submit(3, search_tasks.echo, 3.0)
    started = time.time()
    results = collect(strict_pool, 3)
    assert time.time() - started < 120
    assert results[1].protocol == "timeout" and "time limit of 5 s" in results[1].reason
    assert results[2].protocol == "error" and results[2].reason == "RuntimeError: boom"
    assert results[3].scores == (3.0,)


# ------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'evonorm-plugins[search]')")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}})
    yield ray
    ray.shutdown()


def ray_executor(**settings):
    return create_executor(ExecutorConfig(backend="ray", **settings))


@pytest.mark.slow
def test_ray_runs_the_same_search_as_local(tmp_path, ray_cluster):
    local = run_search(tmp_path / "local.sqlite", InlineExecutor())
    assert run_search(tmp_path / "ray.sqlite", ray_executor(), in_flight=1) == local


@pytest.mark.slow
def test_ray_keeps_its_workers_busy_and_loses_nothing(tmp_path, ray_cluster):
    executor = ray_executor()
    assert executor.capacity == 2
    rows = run_search(tmp_path / "s.sqlite", executor, budget=60)
    assert len(rows) == 60 and {row[2] for row in rows} <= {"done", "rejected"}


@pytest.mark.slow
def test_a_killed_ray_worker_costs_one_retry(tmp_path, ray_cluster):
    executor = ray_executor(max_retries=1)
    executor.submit(1, search_tasks.hang_on_first_attempt, str(tmp_path))
    outcome = collect(executor, 1, results=kill_first_attempt(tmp_path, executor))[1]
    assert outcome.scores == (1.0,)
    assert len(outcome.retries) == 1 and re.fullmatch(r"(WorkerCrashed|NodeDied|LocalRayletDied)Error", outcome.retries[0])


@pytest.mark.slow
def test_a_ray_worker_killed_without_retries_and_a_raising_task_are_errors(tmp_path, ray_cluster):
    executor = ray_executor(max_retries=0)
    executor.submit(1, search_tasks.hang_on_first_attempt, str(tmp_path))
    outcome = collect(executor, 1, results=kill_first_attempt(tmp_path, executor))[1]
    assert outcome.protocol == "error"  # the same wording as the local backend, with Ray's cause
    assert re.search(r"worker died \((WorkerCrashed|NodeDied|LocalRayletDied)Error\) on each of 1 attempts", outcome.reason)
    assert outcome.retries == ()
    executor.submit(2, search_tasks.raise_error, "boom")
    assert collect(executor, 1)[2].reason == "RuntimeError: boom"


@pytest.mark.slow
def test_a_hung_ray_task_times_out(ray_cluster):
    executor = ray_executor(time_limit=5.0)  # counts from submission: a slow worker start only delays it
    executor.submit(1, search_tasks.hang, 300.0)
    outcome = collect(executor, 1)[1]
    assert outcome.protocol == "timeout" and "time limit of 5 s" in outcome.reason


@pytest.mark.slow
def test_ray_outcomes_carry_the_causes_of_the_retries_before_them(tmp_path, ray_cluster):
    executor = ray_executor(max_retries=2, time_limit=20.0)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    executor.submit(1, search_tasks.die_first, str(tmp_path / "a"), 1)  # its worker SIGKILLs itself once
    executor.submit(2, search_tasks.die_first, str(tmp_path / "b"), 1, 300.0)  # then hangs
    results = collect(executor, 2)
    assert results[1].scores == (1.0,) and results[1].retries == ("WorkerCrashedError",)
    assert results[2].protocol == "timeout" and results[2].retries == ("WorkerCrashedError",)
