"""Start-up bookkeeping of the local worker pool: a failed start costs a restart; the pool stops only
when no worker can start (real worker processes failing to start: test_worker_deaths.py)."""
from evonorm_search.execution.startup import StartUps

IMPORT_ERROR = "ModuleNotFoundError: No module named 'lightning'"


def test_a_worker_killed_while_starting_is_started_again_until_its_slot_is_given_up():
    start_ups = StartUps(2, max_failures=3)
    assert start_ups.failed(0, "exit code -9", killed=True) and start_ups.failed(0, "exit code -9", killed=True)
    start_ups.ready(0)  # the third start went through: the count starts over
    assert start_ups.failed(0, "exit code -9", killed=True) and start_ups.failed(0, "exit code -9", killed=True)
    assert not start_ups.failed(0, "exit code -9", killed=True)  # three in a row: given up
    assert start_ups.verdict() is None  # slot 1 starts, or is starting: the pool goes on


def test_killed_workers_never_pass_for_a_broken_environment():
    start_ups = StartUps(2)
    start_ups.failed(0, "exit code -9", killed=True)
    start_ups.failed(1, "exit code -9", killed=True)
    assert start_ups.verdict() is None  # both are started again


def test_every_worker_failing_with_the_same_cause_stops_the_pool_with_it():
    start_ups = StartUps(3)
    start_ups.failed(0, IMPORT_ERROR)
    start_ups.failed(1, IMPORT_ERROR)
    assert start_ups.verdict() is None  # worker 2 may still start
    start_ups.failed(2, IMPORT_ERROR)
    verdict = start_ups.verdict()
    assert verdict.startswith(f"no search worker could start: {IMPORT_ERROR}; fix the environment")
    assert "--workers 0" in verdict and "\n" not in verdict


def test_different_causes_or_a_started_worker_keep_the_pool_going():
    start_ups = StartUps(2)
    start_ups.failed(0, IMPORT_ERROR)
    start_ups.failed(1, "not ready after 300 s")
    assert start_ups.verdict() is None
    start_ups.ready(1)
    start_ups.failed(0, IMPORT_ERROR)
    assert start_ups.verdict() is None


def test_a_pool_whose_every_slot_was_given_up_stops_naming_the_causes():
    start_ups = StartUps(2, max_failures=1)
    assert not start_ups.failed(0, "exit code -9", killed=True)
    assert start_ups.verdict() is None
    assert not start_ups.failed(1, "exit code -11", killed=True)
    assert start_ups.verdict().startswith("no search worker could start (exit code -9; exit code -11; 1 failed starts "
                                          "in a row each); fix the environment")


def test_the_other_slots_failing_alike_stop_the_pool_once_one_is_given_up():
    start_ups = StartUps(2, max_failures=2)
    start_ups.failed(0, "exit code -9", killed=True)
    assert not start_ups.failed(0, "exit code -9", killed=True)
    start_ups.failed(1, IMPORT_ERROR)
    assert start_ups.verdict().startswith(f"no search worker could start: {IMPORT_ERROR};")
