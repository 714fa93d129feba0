"""The local backend: a pool of persistent worker processes on this machine, each running
:func:`evonorm_search.worker_process.main`.

A worker may die (a crash, ``kill -9``, the OOM killer) or hang at any moment; what that costs
depends on what it was doing:

* starting: nothing; it is started again (:mod:`.startup` says when a pool cannot start at all);
* idle: nothing; it is replaced;
* evaluating, or sending its result back: that attempt, which the :class:`.policy.RetryPolicy` retries;
* running past the time limit (hung): it is killed and replaced, and its task comes back as ``timeout``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from ..errors import SearchError
from ..evaluator import Outcome
from ..worker_process import READY
from ..worker_process import main as worker_main
from .policy import Attempt, Key, Task
from .startup import StartUps

if TYPE_CHECKING:
    from . import ExecutorConfig

START_LIMIT = 300.0  # seconds a worker may take to import torch and the evaluator before it counts as hung
log = logging.getLogger(__name__)


class _Worker:
    """The worker process in slot ``slot`` of the pool, the pipe to it, and the attempt it runs."""

    def __init__(self, context, slot: int, threads: int, device: Optional[int]) -> None:
        self.slot = slot
        self.connection, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, os.getpid(), threads, device), daemon=True)
        self.process.start()
        child.close()
        self.born = time.perf_counter()
        self.ready = False
        self.running: Optional[Attempt] = None

    def news(self, ready: list) -> bool:
        """Whether it sent something or died (``ready``: what :func:`wait` returned)."""
        return self.connection in ready or self.process.sentinel in ready

    def receive(self) -> Any:
        """Its message, or None if it died before sending one whole (the pipe ended)."""
        try:
            return self.connection.recv() if self.connection.poll() else None
        except (EOFError, OSError):
            return None

    def exit_code(self) -> Optional[int]:
        self.process.join(timeout=5)  # the pipe can close before the exit code is there
        return self.process.exitcode

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class ProcessExecutor:
    """``workers`` (or devices × workers_per_device) persistent local processes (spawned: no state shared
    with the controller), each running one task at a time with ``threads_per_worker`` torch threads and,
    with devices, seeing only its own. Dead, hung or timed-out workers are replaced on the same device;
    a worker not ready ``start_limit`` seconds after its start counts as hung."""

    def __init__(self, config: ExecutorConfig, start_limit: float = START_LIMIT) -> None:
        if config.worker_count < 1:
            raise ValueError(f"ProcessExecutor needs workers >= 1, got {config.worker_count}")
        self.config = config
        self.capacity = config.worker_count
        self.policy = config.policy
        self.start_limit = start_limit
        self._context = multiprocessing.get_context("spawn")
        self._start_ups = StartUps(self.capacity)
        self._workers: Dict[int, _Worker] = {slot: self._spawn(slot) for slot in range(self.capacity)}
        self._queue: Deque[Attempt] = deque()

    def _spawn(self, slot: int) -> _Worker:
        return _Worker(self._context, slot, self.config.threads_per_worker, self.config.device_of(slot))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[worker.slot] = self._spawn(worker.slot)

    def submit(self, key: Key, fn: Task, *args: Any) -> None:
        self._queue.append(Attempt(key, fn, args))
        self._tend(self._poll(0))  # take start-up news without blocking, so work is handed out before the next wait
        self._dispatch()

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Key, Outcome]]:
        if not self._queue and all(w.running is None for w in self._workers.values()):
            return []
        ready = self._poll(self._wait_time(timeout))
        self._tend(ready)  # before the results are taken: a worker that just sent one is not idle news
        finished: List[Tuple[Key, Outcome]] = []
        for worker in list(self._workers.values()):
            if worker.running is not None:
                done = self._collect(worker, ready)
                if done is not None:
                    finished.append(done)
        self._dispatch()
        return finished

    def shutdown(self) -> None:
        for worker in self._workers.values():
            worker.kill()
        self._workers.clear()
        self._queue.clear()

    def _poll(self, timeout: Optional[float]) -> list:
        watched = list(self._workers.values())
        return wait([w.connection for w in watched] + [w.process.sentinel for w in watched], timeout)

    def _wait_time(self, timeout: Optional[float]) -> Optional[float]:
        """``timeout``, shortened to the next time limit of a running task or of a starting worker."""
        workers = self._workers.values()
        wait_for = self.policy.wait_time(timeout, [w.running for w in workers if w.running is not None])
        limits = [w.born + self.start_limit - time.perf_counter() for w in workers if not w.ready]
        if wait_for is not None:
            limits.append(wait_for)
        return max(0.0, min(limits)) if limits else None

    def _dispatch(self) -> None:
        for worker in list(self._workers.values()):
            if worker.ready and worker.running is None and self._queue:
                task = self._queue.popleft().start()
                try:
                    worker.connection.send((task.key, task.fn, task.args))
                except OSError:  # it died while idle: its task was not started
                    self._queue.appendleft(task)
                    self._replace(worker)
                    continue
                worker.running = task

    def _collect(self, worker: _Worker, ready: list) -> Optional[Tuple[Key, Outcome]]:
        """A busy worker's outcome; or, if it died evaluating or sending it, its task retried (None) or
        given up; or, if it is past the time limit, its ``timeout``."""
        task = worker.running
        assert task is not None
        if worker.news(ready):
            message = worker.receive()
            if message is not None:
                worker.running = None
                key, outcome = message
                return key, task.finished(outcome)
            code = worker.exit_code()
            self._replace(worker)
            retry = self.policy.after_death(task, f"exit code {code}")
            if isinstance(retry, Attempt):
                self._queue.appendleft(retry)
                return None
            return task.key, retry
        if self.policy.overdue(task):
            self._replace(worker)
            return task.key, self.policy.timed_out(task)
        return None

    def _tend(self, ready: list) -> None:
        """Take the news of the workers not evaluating: start-ups, and deaths while idle (replaced)."""
        for worker in list(self._workers.values()):
            if not worker.ready:
                self._start_up(worker, ready)
            elif worker.running is None and worker.news(ready):
                self._replace(worker)

    def _start_up(self, worker: _Worker, ready: list) -> None:
        """A starting worker said it is ready, or why it cannot start; or it died or hung trying."""
        if worker.news(ready):
            message = worker.receive()
            if message == READY:
                worker.ready = True
                self._start_ups.ready(worker.slot)
                return
            code = worker.exit_code()
            cause, killed = (message, False) if message else (f"exit code {code}", code is not None and code < 0)
        elif time.perf_counter() - worker.born > self.start_limit:
            cause, killed = f"not ready after {self.start_limit:g} s", False
        else:
            return
        worker.kill()
        if self._start_ups.failed(worker.slot, cause, killed):
            self._workers[worker.slot] = self._spawn(worker.slot)
        else:
            del self._workers[worker.slot]
            log.warning("search worker %d failed to start %d times (%s); going on with %d workers", worker.slot,
                        self._start_ups.max_failures, cause, len(self._workers))
        verdict = self._start_ups.verdict()
        if verdict is not None:
            self.shutdown()
            raise SearchError(verdict)
