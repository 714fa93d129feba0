"""Executors: who runs the evaluations. The controller keeps the population and the store and talks to
any backend through one small interface; workers are stateless (``fn(*args)`` in, an :class:`Outcome` out).

* :class:`InlineExecutor`: in the controller's process, one at a time (tests, debugging).
* :class:`ProcessExecutor`: a pool of local worker processes, the default on a laptop.
* :class:`~evonorm_search.ray_executor.RayExecutor`: Ray core tasks, on a local instance or a cluster.

The contract every backend keeps: a task's outcome comes back exactly once. A worker that dies (crash,
``kill -9``, pre-emption) costs only its task, which is retried up to ``max_retries`` times and then
comes back as an ``error`` outcome naming the cause; a task running past ``time_limit`` seconds is
stopped (its worker killed and replaced) and comes back as a ``timeout`` outcome. Nothing a task does
stops the run.
"""
from __future__ import annotations

import multiprocessing
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Deque, List, Optional, Protocol, Tuple

from .evaluator import Outcome

Task = Callable[..., Outcome]


@dataclass(frozen=True)
class ExecutorConfig:
    """How evaluations run: ``backend`` ``local`` (worker processes; ``workers: 0`` runs them in the
    controller's process), or ``ray`` (``address`` None starts a local Ray instance; ``auto`` or
    ``HOST:PORT`` joins a cluster). ``in_flight`` None keeps one task per worker (Ray: per CPU)."""

    backend: str = "local"
    workers: int = 0
    threads_per_worker: int = 1
    in_flight: Optional[int] = None
    time_limit: Optional[float] = None  # seconds per task; None: no limit
    max_retries: int = 1  # re-runs of a task whose worker died
    address: Optional[str] = None


class Executor(Protocol):
    """Runs tasks keyed by the caller's ids; :meth:`wait` returns the ones that finished."""

    capacity: int

    def submit(self, key: int, fn: Task, *args: Any) -> None: ...

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[int, Outcome]]: ...

    def shutdown(self) -> None: ...


def create_executor(config: ExecutorConfig) -> Executor:
    if config.backend == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(config)
    if config.backend != "local":
        raise ValueError(f"unknown executor backend {config.backend!r}; use 'local' or 'ray'")
    if config.workers == 0:
        return InlineExecutor()
    return ProcessExecutor(config)


def _failed(protocol: str, reason: str, started: float) -> Outcome:
    return Outcome(None, protocol, reason, time.perf_counter() - started)


class InlineExecutor:
    """Runs each task in the calling process when its result is waited for (no time limit)."""

    capacity = 1

    def __init__(self) -> None:
        self._queue: Deque[Tuple[int, Task, tuple]] = deque()

    def submit(self, key: int, fn: Task, *args: Any) -> None:
        self._queue.append((key, fn, args))

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[int, Outcome]]:
        if not self._queue:
            return []
        key, fn, args = self._queue.popleft()
        return [(key, fn(*args))]

    def shutdown(self) -> None:
        self._queue.clear()


def _worker_main(connection: Connection, threads: int) -> None:
    """A worker process: run tasks from the pipe until it closes."""
    import torch

    torch.set_num_threads(threads)
    connection.send("ready")  # time limits count from here, not from the process's start-up
    while True:
        try:
            key, fn, args = connection.recv()
        except EOFError:
            return
        started = time.perf_counter()
        try:
            outcome = fn(*args)
        except Exception as error:  # the task itself guards its candidate; this guards the task
            outcome = _failed("error", f"{type(error).__name__}: {error}", started)
        connection.send((key, outcome))


@dataclass
class _Running:
    key: int
    fn: Task
    args: tuple
    attempt: int
    started: float


class _Worker:
    def __init__(self, context, threads: int) -> None:
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.running: Optional[_Running] = None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class ProcessExecutor:
    """``workers`` persistent local processes (spawned: no state shared with the controller), each
    running one task at a time with ``threads_per_worker`` torch threads. Dead or timed-out workers
    are replaced."""

    def __init__(self, config: ExecutorConfig) -> None:
        if config.workers < 1:
            raise ValueError(f"ProcessExecutor needs workers >= 1, got {config.workers}")
        self.config = config
        self.capacity = config.workers
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(self._context, config.threads_per_worker) for _ in range(config.workers)]
        self._queue: Deque[_Running] = deque()

    def submit(self, key: int, fn: Task, *args: Any) -> None:
        self._queue.append(_Running(key, fn, args, 0, 0.0))
        self._dispatch()

    def _dispatch(self) -> None:
        starting = [w for w in self._workers if not w.ready]
        if starting:  # take start-up news without blocking, so work is handed out before the next wait
            ready = wait([w.connection for w in starting] + [w.process.sentinel for w in starting], 0)
            for worker in starting:
                self._start_up(worker, ready)
        for worker in self._workers:
            if worker.ready and worker.running is None and self._queue:
                task = self._queue.popleft()
                task.started = time.perf_counter()
                worker.running = task
                worker.connection.send((task.key, task.fn, task.args))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._context, self.config.threads_per_worker)

    def _start_up(self, worker: _Worker, ready: list) -> None:
        """A starting worker said it is ready, or died trying (the environment's fault: stop the run)."""
        if worker.connection in ready:
            try:
                worker.ready = worker.connection.recv() == "ready"
                return
            except (EOFError, OSError):
                pass
        if worker.connection in ready or worker.process.sentinel in ready:
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            self.shutdown()
            raise RuntimeError(f"a search worker process died while starting (exit code {code}); run "
                               f"`python -c 'import evonorm_search.evaluator'` to see why, or use --workers 0")

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[int, Outcome]]:
        if not self._queue and all(w.running is None for w in self._workers):
            return []
        starting = [w for w in self._workers if not w.ready]
        busy = [w for w in self._workers if w.running is not None]
        limit = self.config.time_limit
        deadline = min(w.running.started + limit for w in busy) if limit and busy else None
        wait_for = timeout if deadline is None else max(0.0, min(timeout or float("inf"), deadline - time.perf_counter()))
        watched = starting + busy
        ready = wait([w.connection for w in watched] + [w.process.sentinel for w in watched], wait_for)
        for worker in starting:
            self._start_up(worker, ready)
        finished: List[Tuple[int, Outcome]] = []
        for worker in busy:
            task = worker.running
            if worker.connection in ready:
                try:
                    finished.append(worker.connection.recv())
                    worker.running = None
                    continue
                except (EOFError, OSError):  # died while sending: handled as a death below
                    pass
            if worker.connection in ready or worker.process.sentinel in ready:
                worker.process.join(timeout=5)  # the pipe can close before the exit code is there
                code = worker.process.exitcode
                self._replace(worker)
                if task.attempt < self.config.max_retries:
                    self._queue.appendleft(_Running(task.key, task.fn, task.args, task.attempt + 1, 0.0))
                else:
                    finished.append((task.key, _failed(
                        "error", f"worker died (exit code {code}) on each of {task.attempt + 1} attempts", task.started)))
            elif limit and time.perf_counter() - task.started > limit:
                self._replace(worker)
                finished.append((task.key, _failed("timeout", f"evaluation exceeded the time limit of {limit:g} s", task.started)))
        self._dispatch()
        return finished

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._queue.clear()
