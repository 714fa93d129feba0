"""Start-up bookkeeping for the local backend's worker processes.

A worker that fails to start costs nothing but its own restart: it is started again, up to
``max_failures`` times in a row, and then its slot is given up (the pool goes on with the others).
The pool stops only when no worker can start: when every slot's latest start failed with the same
cause that the workers reported themselves (an exception while importing the evaluator, a non-zero
exit, no "ready" within the start limit: the environment's fault, which no restart fixes), or when
every slot was given up. A worker killed by a signal (``kill -9``, the OOM killer) reported nothing:
it is started again, never taken for the environment's fault.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

MAX_START_FAILURES = 3  # failed starts in a row before a slot is given up


class Failure(NamedTuple):
    cause: str
    killed: bool  # by a signal from outside: says nothing about the environment


class StartUps:
    """The failed starts in a row of each slot (0 … ``slots`` - 1) of a pool, and the slots given up."""

    def __init__(self, slots: int, max_failures: int = MAX_START_FAILURES) -> None:
        self.max_failures = max_failures
        self._failures: Dict[int, List[Failure]] = {slot: [] for slot in range(slots)}
        self._given_up: List[int] = []

    def ready(self, slot: int) -> None:
        """The slot's worker started: its earlier failures no longer count."""
        self._failures[slot] = []

    def failed(self, slot: int, cause: str, killed: bool = False) -> bool:
        """Record a failed start; True if the slot is to be started again, False if it is given up."""
        self._failures[slot].append(Failure(cause, killed))
        if len(self._failures[slot]) < self.max_failures:
            return True
        self._given_up.append(slot)
        return False

    def verdict(self) -> Optional[str]:
        """Why the pool cannot run, in one line, or None while it can."""
        live = [failures for slot, failures in self._failures.items() if slot not in self._given_up]
        if not live:
            causes = dict.fromkeys(failures[-1].cause for failures in self._failures.values())
            return (f"no search worker could start ({'; '.join(causes)}; {self.max_failures} failed starts in a row "
                    f"each); {_REMEDY}")
        latest = {failures[-1] if failures else None for failures in live}
        if len(latest) == 1 and None not in latest and not next(iter(latest)).killed:
            return f"no search worker could start: {next(iter(latest)).cause}; {_REMEDY}"
        return None


_REMEDY = ("fix the environment (`python -c 'import evonorm_search.evaluator'` shows the error), or evaluate in "
           "this process with --workers 0")
