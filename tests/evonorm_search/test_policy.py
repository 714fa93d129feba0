"""The one retry and time-limit policy every executor applies (the real worker kills are slow tests
in test_execution.py)."""
import time

from evonorm_search.evaluator import Outcome
from evonorm_search.execution import Attempt, ExecutorConfig, RetryPolicy


def _task() -> None:
    return None


def test_a_dead_worker_is_retried_then_reported_with_its_cause():
    policy = ExecutorConfig(max_retries=2).policy
    attempt = Attempt(7, _task, (1,)).start()
    for number in (1, 2):
        attempt = policy.after_death(attempt, "exit code -9")
        assert isinstance(attempt, Attempt) and (attempt.key, attempt.number, attempt.args) == (7, number, (1,))
        attempt.start()
    outcome = policy.after_death(attempt, "exit code -9")
    assert outcome.scores is None and outcome.protocol == "error"
    assert outcome.reason == "worker died (exit code -9) on each of 3 attempts"
    assert outcome.retries == ("exit code -9", "exit code -9")


def test_time_limits_bound_the_wait_and_time_out_the_oldest_attempt():
    assert RetryPolicy().wait_time(0.5, []) == 0.5 and RetryPolicy().deadline([Attempt(1, _task, ())]) is None
    policy = RetryPolicy(time_limit=10.0)
    old, new = Attempt(1, _task, ()), Attempt(2, _task, ()).start()
    old.started = time.perf_counter() - 10.5
    assert policy.overdue(old) and not policy.overdue(new)
    assert policy.wait_time(5.0, [old, new]) == 0.0  # the oldest is past its deadline: do not block
    assert 4.0 < policy.wait_time(None, [new]) <= 10.0
    outcome = policy.timed_out(old)
    assert outcome.protocol == "timeout" and "time limit of 10 s" in outcome.reason and outcome.wall_time >= 10.5


def test_each_outcome_carries_the_causes_of_the_attempts_before_it():
    policy = RetryPolicy(time_limit=10.0, max_retries=2)
    first = Attempt(1, _task, ()).start()
    assert first.finished(Outcome((0.5,))).retries == ()
    second = policy.after_death(first, "exit code -9")
    third = policy.after_death(second.start(), "exit code -11")
    assert (second.retries, third.retries) == (("exit code -9",), ("exit code -9", "exit code -11"))
    third.start()
    success = third.finished(Outcome((0.5,), wall_time=2.0))
    assert success == Outcome((0.5,), wall_time=2.0, retries=("exit code -9", "exit code -11"))
    rejection = third.finished(Outcome(None, "quality", "too low"))
    assert (rejection.protocol, rejection.retries) == ("quality", ("exit code -9", "exit code -11"))
    assert policy.timed_out(third).retries == ("exit code -9", "exit code -11")
    final = policy.after_death(third, "exit code -9")  # retries spent: the last cause is in the reason
    assert final.reason == "worker died (exit code -9) on each of 3 attempts"
    assert final.retries == ("exit code -9", "exit code -11")
