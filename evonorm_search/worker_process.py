"""The local backend's worker process (:class:`evonorm_search.execution.ProcessExecutor` spawns it).

It lives outside the ``execution`` package, whose import pulls in torch and the evaluator, so that a
spawned worker always gets as far as :func:`main` and can tell the controller, over its pipe, why the
rest would not import: its first message is :data:`READY` or that one-line cause.

A worker exits quietly (no traceback) when its controller goes: the pipe's end (shut down, or the
controller died while the worker was idle), a failed send, or, while it evaluates, a watcher thread
that sees the worker orphaned (its parent process changed). Ctrl-C is ignored here: it reaches the
whole process group, and stopping the workers is the controller's job.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Optional

READY = "ready"
ORPHAN_POLL = 0.5  # seconds between checks that the controller is still the parent


def main(connection: Connection, parent: int, threads: int, device: Optional[int]) -> None:
    """Run tasks from the pipe until it closes. ``parent``: the controller's pid; ``device``: the one
    accelerator device the worker may see (set before anything can initialize CUDA, which reads the
    variable once)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="orphan-watch", daemon=True).start()
    try:
        if device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
        import torch

        # the evaluator's imports, which every task needs: a broken environment shows here
        from .execution.policy import failed

        torch.set_num_threads(threads)
    except BaseException as error:  # whatever it is, the controller hears it and decides
        _send(connection, " ".join(f"{type(error).__name__}: {error}".split()))
        return
    if not _send(connection, READY):  # time limits count from here, not from the process's start-up
        return
    while True:
        try:
            key, fn, args = connection.recv()
        except (EOFError, OSError):  # the controller shut the pool down, or died
            return
        started = time.perf_counter()
        try:
            outcome = fn(*args)
        except Exception as error:  # the task itself guards its candidate; this guards the task
            outcome = failed("error", f"{type(error).__name__}: {error}", started)
        if not _send(connection, (key, outcome)):
            return


def _send(connection: Connection, message: Any) -> bool:
    """Send ``message``; False if the controller is gone."""
    try:
        connection.send(message)
    except OSError:
        return False
    return True


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL)
    os._exit(0)
