"""The local backend: a pool of persistent worker processes on this machine."""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Tuple

from ..evaluator import Outcome
from .policy import Attempt, Key, Task, failed

if TYPE_CHECKING:
    from . import ExecutorConfig


def _worker_main(connection: Connection, threads: int, device: Optional[int]) -> None:
    """A worker process: run tasks from the pipe until it closes. ``device``: the one accelerator device
    it may see (set before anything initializes CUDA, which reads the variable once)."""
    import torch

    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
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
            outcome = failed("error", f"{type(error).__name__}: {error}", started)
        connection.send((key, outcome))


class _Worker:
    def __init__(self, context, threads: int, device: Optional[int]) -> None:
        self.device = device
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, threads, device), daemon=True)
        self.process.start()
        child.close()
        self.ready = False
        self.running: Optional[Attempt] = None

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class ProcessExecutor:
    """``workers`` (or devices × workers_per_device) persistent local processes (spawned: no state shared
    with the controller), each running one task at a time with ``threads_per_worker`` torch threads and,
    with devices, seeing only its own. Dead or timed-out workers are replaced on the same device."""

    def __init__(self, config: ExecutorConfig) -> None:
        if config.worker_count < 1:
            raise ValueError(f"ProcessExecutor needs workers >= 1, got {config.worker_count}")
        self.config = config
        self.capacity = config.worker_count
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(self._context, config.threads_per_worker, config.device_of(i)) for i in range(self.capacity)]
        self.policy = config.policy
        self._queue: Deque[Attempt] = deque()

    def submit(self, key: Key, fn: Task, *args: Any) -> None:
        self._queue.append(Attempt(key, fn, args))
        self._dispatch()

    def _dispatch(self) -> None:
        starting = [w for w in self._workers if not w.ready]
        if starting:  # take start-up news without blocking, so work is handed out before the next wait
            ready = wait([w.connection for w in starting] + [w.process.sentinel for w in starting], 0)
            for worker in starting:
                self._start_up(worker, ready)
        for worker in self._workers:
            if worker.ready and worker.running is None and self._queue:
                task = self._queue.popleft().start()
                worker.running = task
                worker.connection.send((task.key, task.fn, task.args))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = _Worker(self._context, self.config.threads_per_worker, worker.device)

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

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Key, Outcome]]:
        if not self._queue and all(w.running is None for w in self._workers):
            return []
        starting = [w for w in self._workers if not w.ready]
        busy = [w for w in self._workers if w.running is not None]
        wait_for = self.policy.wait_time(timeout, [w.running for w in busy])
        watched = starting + busy
        ready = wait([w.connection for w in watched] + [w.process.sentinel for w in watched], wait_for)
        for worker in starting:
            self._start_up(worker, ready)
        finished: List[Tuple[Key, Outcome]] = []
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
                retry = self.policy.after_death(task, f"exit code {code}")
                if isinstance(retry, Attempt):
                    self._queue.appendleft(retry)
                else:
                    finished.append((task.key, retry))
            elif self.policy.overdue(task):
                self._replace(worker)
                finished.append((task.key, self.policy.timed_out(task)))
        self._dispatch()
        return finished

    def shutdown(self) -> None:
        for worker in self._workers:
            worker.kill()
        self._queue.clear()
