"""Executors: who runs the evaluations. The controller keeps the population and the store and talks to
any backend through one small interface (:class:`Executor`); workers are stateless (``fn(*args)`` in,
an :class:`~evonorm_search.evaluator.Outcome` out).

* :class:`InlineExecutor` (:mod:`.inline`): in the controller's process, one at a time (tests, debugging).
* :class:`ProcessExecutor` (:mod:`.local`): a pool of local worker processes.
* :class:`RayExecutor` (:mod:`.ray_backend`): Ray core tasks, on a local instance or a cluster.

The contract every backend keeps, written once in :class:`.policy.RetryPolicy`: a task's outcome comes
back exactly once. A worker may die (crash, ``kill -9``, the OOM killer, pre-emption) or hang at any
moment, and costs at most its task, never the run:

* dying while starting or idle costs nothing (it is started again / replaced);
* dying while evaluating or sending its result back costs the attempt, which is retried up to
  ``max_retries`` times and then comes back as an ``error`` outcome naming the cause;
* a task running past ``time_limit`` seconds is stopped (its worker killed and replaced) and comes back
  as a ``timeout`` outcome.

Whatever comes back (a result, a rejection, a timeout, the final error) carries in ``Outcome.retries``
the cause of each earlier attempt that produced nothing (:meth:`.policy.Attempt.finished`); the inline
backend never retries. Nothing a task does stops the run; only local workers that all fail to start
with the same cause do (:mod:`.startup`), with that cause in one line. Workers of a controller that
died exit on their own, quietly (:mod:`evonorm_search.worker_process`; Ray's workers: the driver owns
their tasks, :mod:`.ray_backend`). A new backend implements :class:`Executor` with the policy and
registers itself in :func:`create_executor`.
"""
from __future__ import annotations

from typing import Annotated, Any, List, Literal, Optional, Protocol, Tuple

from pydantic import Field

from ..evaluator import Outcome
from ..schema import config_class
from .inline import InlineExecutor
from .local import ProcessExecutor
from .policy import Attempt, Key, RetryPolicy, Task


@config_class
class ExecutorConfig:
    """How evaluations run: ``backend`` ``local`` (worker processes; ``workers: 0`` runs them in the
    controller's process), or ``ray`` (``address`` None starts a local Ray instance; ``auto`` or
    ``HOST:PORT`` joins a cluster). ``in_flight`` None keeps one task per worker (Ray: per CPU).

    Accelerators: with ``devices: D`` (GPUs on each machine) several workers share each device,
    ``workers_per_device: W`` of them (a proxy training rarely fills a GPU). The local backend then starts
    D·W workers, worker i seeing only device ⌊i / W⌋ (through ``CUDA_VISIBLE_DEVICES``, which CUDA and
    ROCm builds of torch read); Ray gives each task 1/W of a GPU and sets the variable itself. The
    training's own accelerator is the evaluation's ``accelerator`` (``cpu`` by default, ``cuda`` or
    ``auto``); ``devices: 0`` assigns nothing, as on a CPU-only machine."""


    backend: Literal["local", "ray"] = "local"
    workers: Annotated[int, Field(ge=0)] = 0
    threads_per_worker: Annotated[int, Field(ge=1)] = 1
    in_flight: Optional[Annotated[int, Field(ge=1)]] = None
    time_limit: Optional[Annotated[float, Field(gt=0)]] = None  # seconds per task; None: no limit
    max_retries: Annotated[int, Field(ge=0)] = 1  # re-runs of a task whose worker died
    address: Optional[str] = None
    devices: Annotated[int, Field(ge=0)] = 0  # accelerator devices the workers spread over (0: none assigned)
    workers_per_device: Annotated[int, Field(ge=1)] = 1  # workers sharing one device

    def __post_init__(self) -> None:
        if self.devices and self.backend == "local" and self.workers not in (0, self.devices * self.workers_per_device):
            raise ValueError(f"execution: workers={self.workers} does not match devices={self.devices} × "
                             f"workers_per_device={self.workers_per_device}; leave workers out or set it to "
                             f"{self.devices * self.workers_per_device}")

    @property
    def worker_count(self) -> int:
        """Local worker processes: ``workers``, or devices × workers_per_device when devices are given."""
        return self.devices * self.workers_per_device if self.devices else self.workers

    def device_of(self, worker: int) -> Optional[int]:
        """The device local worker ``worker`` (from 0) uses, or None when no devices are assigned."""
        return worker // self.workers_per_device % self.devices if self.devices else None

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.time_limit, self.max_retries)


class Executor(Protocol):
    """Runs tasks keyed by the caller's ids; :meth:`wait` returns the ones that finished."""

    capacity: int

    def submit(self, key: Key, fn: Task, *args: Any) -> None: ...

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Key, Outcome]]: ...

    def shutdown(self) -> None: ...


def create_executor(config: ExecutorConfig) -> Executor:
    if config.backend == "ray":
        from .ray_backend import RayExecutor  # Ray loads only when asked for

        return RayExecutor(config)
    if config.worker_count == 0:
        return InlineExecutor()
    return ProcessExecutor(config)


__all__ = ["Attempt", "Executor", "ExecutorConfig", "InlineExecutor", "Key", "ProcessExecutor", "RetryPolicy", "Task",
           "create_executor"]
