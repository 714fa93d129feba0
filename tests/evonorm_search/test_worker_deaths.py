"""Local workers that die at any moment: starting, idle, evaluating, returning its result, hung; each
costs at most its own task (retried, the causes in ``Outcome.retries``), never the run. Only workers
that all fail to start with the same cause stop it, with that cause; and the workers of a controller
killed with SIGKILL exit on their own, quietly.

The kill tests start real worker processes (seconds each on 2 cores) and are marked slow; the two
start-up failures need no torch import and run by default."""
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.errors import SearchError
from evonorm_search.execution import ExecutorConfig, InlineExecutor, ProcessExecutor
from evonorm_search.space import SearchSpace

import search_tasks
from support import ROOT, TESTS

KILLED = "exit code -9"


def collect(executor, count, timeout=240.0):
    """Wait for ``count`` outcomes, each task's exactly once."""
    results, deadline = [], time.time() + timeout
    while len(results) < count and time.time() < deadline:
        results += executor.wait(timeout=0.5)
    keys = [key for key, _ in results]
    assert len(keys) == len(set(keys)), f"a task came back twice: {keys}"
    assert len(results) == count, f"only {len(results)} of {count} tasks came back within {timeout} s"
    return dict(results)


def alive(pid: int) -> bool:
    """Whether a thread of process ``pid`` still runs (its leader turns zombie before the other threads
    are gone and its files, the pipe to the controller among them, are closed)."""
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    states = []
    for thread in threads:
        try:
            states.append((thread / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except FileNotFoundError:
            continue
    return any(state not in "ZX" for state in states)


def gone_within(pids, seconds: float) -> bool:
    deadline = time.time() + seconds
    while any(alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.1)
    return not any(alive(pid) for pid in pids)


def worker_pids(executor) -> list:
    """The pids of two idle workers, both started: tasks are handed out until two answer at once."""
    while True:
        executor.submit("a", search_tasks.pid_after, 1.0)
        executor.submit("b", search_tasks.pid_after, 1.0)
        pids = {int(outcome.scores[0]) for outcome in collect(executor, 2).values()}
        if len(pids) == 2:
            return sorted(pids)


@pytest.fixture
def pool():
    executor = ProcessExecutor(ExecutorConfig(workers=2, max_retries=1, time_limit=30.0))
    yield executor
    executor.shutdown()


# ------------------------------------------------------------------------------------ starting
@pytest.fixture
def broken_torch(tmp_path, monkeypatch):
    """A ``torch`` package that fails (or hangs) on import, first on the path the spawned workers get
    (this process imported the real one long ago)."""

    def install(body: str) -> None:
        (tmp_path / "torch").mkdir()
        (tmp_path / "torch" / "__init__.py").write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))

    return install


def run_until_error(executor, timeout=60.0) -> str:
    deadline = time.time() + timeout
    with pytest.raises(SearchError) as error:
        executor.submit(1, search_tasks.echo, 1.0)
        while time.time() < deadline:
            executor.wait(timeout=0.5)
    return str(error.value)


def test_every_worker_failing_to_start_with_the_same_cause_stops_with_that_cause(broken_torch):
    broken_torch("raise ImportError('libtorch_cpu.so: cannot open shared object file')\n")
    executor = ProcessExecutor(ExecutorConfig(workers=2))
    message = run_until_error(executor)
    assert message.startswith("no search worker could start: ImportError: libtorch_cpu.so: cannot open shared "
                              "object file; fix the environment")
    assert "\n" not in message
    executor.shutdown()  # as the caller does: a second shutdown is harmless


def test_workers_hung_while_starting_are_stopped_at_the_start_limit(broken_torch):
    broken_torch("import time\ntime.sleep(120)\n")
    executor = ProcessExecutor(ExecutorConfig(workers=2), start_limit=3.0)
    pids = [worker.process.pid for worker in executor._workers.values()]
    message = run_until_error(executor)
    assert message.startswith("no search worker could start: not ready after 3 s; fix the environment")
    assert gone_within(pids, 5)


@pytest.mark.slow
def test_a_worker_killed_while_starting_is_started_again_and_costs_no_task(tmp_path):
    executor = ProcessExecutor(ExecutorConfig(workers=2, max_retries=0))
    try:
        starting = executor._workers[0]
        assert not starting.connection.poll()  # it has not said "ready" (torch takes seconds to import)
        os.kill(starting.process.pid, signal.SIGKILL)
        for key in range(4):
            executor.submit(key, search_tasks.pid_after, 0.5)
        results = collect(executor, 4)
        assert all(outcome.scores and outcome.retries == () for outcome in results.values())
        assert starting.process.pid not in {int(outcome.scores[0]) for outcome in results.values()}
        assert executor._workers[0] is not starting  # its slot was started again
    finally:
        executor.shutdown()


# ---------------------------------------------------------------------------------------- idle
@pytest.mark.slow
def test_a_worker_killed_while_idle_is_replaced_silently(pool):
    first, second = worker_pids(pool)
    os.kill(second, signal.SIGKILL)
    assert gone_within([second], 5)
    pool.submit(1, search_tasks.pid_after, 3.0)  # noticed while this one runs, or when handed a task
    pool.submit(2, search_tasks.pid_after, 3.0)
    results = collect(pool, 2)
    assert all(outcome.retries == () for outcome in results.values())  # no task paid for it
    assert second not in {int(outcome.scores[0]) for outcome in results.values()}
    os.kill(first, signal.SIGKILL)  # and with nothing in flight at all
    assert gone_within([first], 5)
    pool.submit(3, search_tasks.echo, 3.0)
    assert collect(pool, 1)[3] == search_tasks.echo(3.0)


# --------------------------------------------------------------------------- evaluating, returning
@pytest.mark.slow
def test_a_worker_dying_while_evaluating_costs_a_retry_with_its_cause(tmp_path, pool):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    pool.submit(1, search_tasks.die_first, str(tmp_path / "a"), 1)
    pool.submit(2, search_tasks.die_first, str(tmp_path / "b"), 2)  # dies on both attempts
    pool.submit(3, search_tasks.echo, 7.0)
    results = collect(pool, 3)
    assert results[1].scores == (1.0,) and results[1].retries == (KILLED,)
    assert results[2].protocol == "error" and results[2].reason == f"worker died ({KILLED}) on each of 2 attempts"
    assert results[2].retries == (KILLED,)
    assert results[3] == search_tasks.echo(7.0)


@pytest.mark.slow
def test_a_worker_dying_while_returning_its_result_costs_a_retry(tmp_path, pool):
    pool.submit(1, search_tasks.die_returning_first, str(tmp_path))
    outcome = collect(pool, 1)[1]
    assert outcome.scores == (1.0,) and outcome.retries == (KILLED,)
    assert len(list(tmp_path.glob("attempt-*"))) == 2


@pytest.mark.slow
def test_a_hung_retry_times_out_with_the_cause_of_the_death_before_it(tmp_path):
    executor = ProcessExecutor(ExecutorConfig(workers=1, max_retries=1, time_limit=5.0))
    try:
        executor.submit(1, search_tasks.die_first, str(tmp_path), 1, 120.0)
        outcome = collect(executor, 1)[1]
        assert outcome.protocol == "timeout" and outcome.retries == (KILLED,)
        pid = int((tmp_path / "attempt-1").read_text())
        assert gone_within([pid], 5)  # the hung worker was killed
    finally:
        executor.shutdown()


@pytest.mark.slow
def test_a_search_whose_workers_keep_dying_finishes_as_the_in_process_one(tmp_path, pool):
    config = SearchConfig(space=SearchSpace(batch_dependent=False, max_nodes=9), population_size=6, tournament_size=3,
                          budget=16, seed=3)
    (tmp_path / "markers").mkdir()
    deadly = functools.partial(search_tasks.deadly_evaluate, str(tmp_path / "markers"))

    def rows(store):
        return [(c.id, c.hash, c.status, c.protocol, c.scores, c.parent) for c in store.finished()]

    killed = Controller(tmp_path / "pool.sqlite", config, deadly).run(pool, in_flight=1)  # one at a time: the same order
    calm = Controller(tmp_path / "inline.sqlite", config, search_tasks.fake_evaluate).run(InlineExecutor())
    deaths = {marker.name for marker in (tmp_path / "markers").iterdir()}
    assert deaths, "no worker died: the test tests nothing"
    assert rows(killed) == rows(calm)
    retried = {c.hash: c.retries for c in killed.finished() if c.retries}  # the store keeps each retry's cause
    assert set(retried) == deaths and set(retried.values()) == {(KILLED,)}


# --------------------------------------------------------------------------------------- orphans
CONTROLLER = """
import json, sys, time
from pathlib import Path
from evonorm_search.execution import ExecutorConfig, ProcessExecutor
import search_tasks

folder = Path(sys.argv[1])
executor = ProcessExecutor(ExecutorConfig(workers=2))
executor.submit(1, search_tasks.hang_on_first_attempt, str(folder))
executor.submit(2, search_tasks.echo, 1.0)
came = []
while not (folder / "attempt-0").exists() or not (folder / "attempt-0").read_text() or not came:
    came += executor.wait(timeout=0.1)
print(json.dumps([worker.process.pid for worker in executor._workers.values()]), flush=True)
time.sleep(300)
"""


@pytest.mark.slow
def test_the_workers_of_a_controller_killed_with_sigkill_exit_quietly(tmp_path):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    controller = subprocess.Popen([sys.executable, "-c", CONTROLLER, str(tmp_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=environment)
    pids = []
    try:
        pids = json.loads(controller.stdout.readline())
        evaluating = int((tmp_path / "attempt-0").read_text())
        assert evaluating in pids and all(alive(pid) for pid in pids)
        controller.kill()
        assert gone_within(pids, 10), "a worker outlived its controller"
        _, errors = controller.communicate(timeout=60)  # the workers held its stderr until they exited
        assert "Traceback" not in errors, errors
    finally:
        controller.kill()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
