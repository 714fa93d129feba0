"""The retry and time-limit policy every backend applies, so that a dead worker or a task past its
limit reads the same whichever backend ran it, and every outcome carries the causes of the attempts
before it (``Outcome.retries``)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Hashable, Iterable, Optional, Tuple, Union

from ..evaluator import Outcome

Task = Callable[..., Outcome]
Key = Hashable  # the caller's name for a task (the search: (candidate id, rung))


@dataclass
class Attempt:
    """One try at a task: the caller's key, the call, which try it is (0 first), when it started, and
    the cause of each earlier try that produced nothing (its worker died)."""

    key: Key
    fn: Task
    args: tuple
    number: int = 0
    started: float = 0.0
    retries: Tuple[str, ...] = ()

    def start(self) -> "Attempt":
        self.started = time.perf_counter()
        return self

    def finished(self, outcome: Outcome) -> Outcome:
        """The outcome this attempt produced (a result, a rejection, the task's error), as the caller
        gets it: with the causes of the earlier attempts."""
        return replace(outcome, retries=self.retries)


def failed(protocol: str, reason: str, started: float, retries: Tuple[str, ...] = ()) -> Outcome:
    """An outcome for a task that produced none (its worker died, it timed out, it raised)."""
    return Outcome(None, protocol, reason, time.perf_counter() - started, retries)


@dataclass(frozen=True)
class RetryPolicy:
    """``time_limit`` seconds per attempt (None: none); ``max_retries`` re-runs after a worker death."""

    time_limit: Optional[float] = None
    max_retries: int = 1

    def deadline(self, running: Iterable[Attempt]) -> Optional[float]:
        """When the first of the running attempts passes its limit (``perf_counter`` time), if any."""
        starts = [attempt.started for attempt in running]
        return min(starts) + self.time_limit if self.time_limit and starts else None

    def wait_time(self, timeout: Optional[float], running: Iterable[Attempt]) -> Optional[float]:
        """How long a backend may block: ``timeout``, shortened to the next deadline."""
        deadline = self.deadline(running)
        if deadline is None:
            return timeout
        return max(0.0, min(timeout if timeout is not None else float("inf"), deadline - time.perf_counter()))

    def overdue(self, attempt: Attempt) -> bool:
        return bool(self.time_limit) and time.perf_counter() - attempt.started > self.time_limit

    def timed_out(self, attempt: Attempt) -> Outcome:
        return failed("timeout", f"evaluation exceeded the time limit of {self.time_limit:g} s", attempt.started,
                      attempt.retries)

    def after_death(self, attempt: Attempt, cause: str) -> Union[Attempt, Outcome]:
        """The next attempt of a task whose worker died (``cause`` added to its retries), or, once the
        retries are spent, its ``error`` outcome: the reason names the last cause, ``retries`` the
        earlier ones."""
        if attempt.number < self.max_retries:
            return Attempt(attempt.key, attempt.fn, attempt.args, attempt.number + 1, retries=(*attempt.retries, cause))
        return failed("error", f"worker died ({cause}) on each of {attempt.number + 1} attempts", attempt.started,
                      attempt.retries)
