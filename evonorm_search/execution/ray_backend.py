"""The Ray core backend: each evaluation is a Ray task on any node of a cluster (or a local instance).

Every node needs this package, its dependencies and, for real data, the dataset at the configured
``data_dir`` (the same environment on every node: the usual Ray cluster set-up). A task whose worker
process dies (``WorkerCrashedError``: a crash, ``kill -9``, an OOM kill, a pre-empted node; Ray's own
``OutOfMemoryError``; a result lost with its node) is resubmitted up to ``max_retries`` times by this
executor, not by Ray, so the attempts are counted, and their causes recorded (``Outcome.retries``), the
same way as with the local backend; a task past ``time_limit`` is force-cancelled, which kills its
worker, and comes back as a ``timeout`` outcome. The limit counts from submission, so it includes the
time a task waits for a worker: keep ``in_flight`` at the cluster's capacity (the default) when
using one. Ray starts, replaces and keeps its worker processes itself: a worker that dies idle or
starting costs nothing here.

The tasks belong to the Ray driver, the controller's process: when it ends or dies (``kill -9``
included), Ray kills the worker processes running its tasks (within a second or two on a cluster, as
measured with Ray 2.60) and forgets the tasks, and a local instance the controller started goes with
it; nothing keeps running, and ``evonorm-search resume`` submits the tasks again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..evaluator import Outcome
from .policy import Attempt, Key, Task, failed

if TYPE_CHECKING:
    from . import ExecutorConfig


def _run_task(threads: int, fn: Task, args: tuple) -> Outcome:
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


class RayExecutor:
    """Ray tasks with ``threads_per_worker`` CPUs each (and 1/``workers_per_device`` of a GPU when
    ``devices`` is set). ``capacity`` is the number of such slots the cluster has (the controller keeps
    that many in flight unless told otherwise)."""

    def __init__(self, config: ExecutorConfig) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("the ray backend needs Ray: pip install 'evonorm-plugins[search]' (or pip install ray)") from None
        self.ray, self.config = ray, config
        if not ray.is_initialized():
            if config.address is None:
                ray.init(num_cpus=config.workers or None, include_dashboard=False, logging_level="warning")
            else:
                ray.init(address=config.address, logging_level="warning")
        gpus = 1 / config.workers_per_device if config.devices else 0  # Ray sets CUDA_VISIBLE_DEVICES per task
        self._remote = ray.remote(num_cpus=config.threads_per_worker, num_gpus=gpus, max_retries=0)(_run_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = max(1, cpus // config.threads_per_worker)
        if config.devices:
            self.capacity = min(self.capacity, int(ray.cluster_resources().get("GPU", 0)) * config.workers_per_device) or 1
        self.policy = config.policy
        errors = ray.exceptions  # the ways a task's worker, or its result, can be lost: retried
        self._deaths = (errors.WorkerCrashedError, errors.NodeDiedError, errors.LocalRayletDiedError,
                        errors.OutOfMemoryError, errors.ObjectLostError)
        self._running: Dict[Any, Attempt] = {}

    def submit(self, key: Key, fn: Task, *args: Any) -> None:
        self._submit(Attempt(key, fn, args))

    def _submit(self, task: Attempt) -> None:
        task.start()
        self._running[self._remote.remote(self.config.threads_per_worker, task.fn, task.args)] = task

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Key, Outcome]]:
        if not self._running:
            return []
        timeout = self.policy.wait_time(timeout, self._running.values())
        finished: List[Tuple[Key, Outcome]] = []
        for ref in self._ready(timeout):
            task = self._running.pop(ref)
            try:
                finished.append((task.key, task.finished(self.ray.get(ref))))
            except self.ray.exceptions.TaskCancelledError:
                finished.append((task.key, self.policy.timed_out(task)))
            except self._deaths as error:
                retry = self.policy.after_death(task, type(error).__name__)
                if isinstance(retry, Attempt):
                    self._submit(retry)
                else:
                    finished.append((task.key, retry))
            except self.ray.exceptions.RayTaskError as error:
                cause = error.cause
                finished.append((task.key, failed("error", f"{type(cause).__name__}: {cause}", task.started, task.retries)))
        for ref, task in self._running.items():
            if self.policy.overdue(task):
                self.ray.cancel(ref, force=True)  # comes back as TaskCancelledError on a later wait
        return finished

    def _ready(self, timeout: Optional[float]) -> list:
        """Block until a task is done (or ``timeout``), then take every task that is done."""
        ready, _ = self.ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if not ready:
            return []
        more, _ = self.ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        return list(dict.fromkeys([*ready, *more]))

    def shutdown(self) -> None:
        for ref in list(self._running):
            self.ray.cancel(ref, force=True)
        self._running.clear()
