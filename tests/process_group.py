"""Running a test function in several CPU processes joined by a gloo process group (importable as
``process_group``: pytest puts tests/ on the path).

``run_in_process_group(fn, world_size)`` spawns the processes, each of which loads ``fn``'s module from
its file (test modules are imported by path, not by a package name a child could import), joins a
group through a file store in a temporary folder, calls ``fn(rank, world_size)`` with one torch
thread, and returns every rank's (picklable) return value in rank order. A process that raises makes
the call raise with its traceback; the group's timeout turns a collective no peer answers into an
error rather than a hang.
"""
import datetime
import importlib.util
import inspect
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(seconds=120)


def _worker(rank: int, world_size: int, path: str, name: str, folder: str) -> None:
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location(f"_process_group_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size, timeout=TIMEOUT)
    try:
        result = getattr(module, name)(rank, world_size)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.pickle"), "wb") as file:
        pickle.dump(result, file)


def run_in_process_group(fn: Callable[[int, int], Any], world_size: int = 2) -> List[Any]:
    """``[fn(0, world_size), fn(1, world_size), ...]``, each computed in its own process of one group."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_worker, args=(world_size, inspect.getfile(fn), fn.__name__, folder), nprocs=world_size, join=True)
        results = []
        for rank in range(world_size):
            with open(os.path.join(folder, f"rank{rank}.pickle"), "rb") as file:
                results.append(pickle.load(file))
        return results
