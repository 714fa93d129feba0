"""The cost of synchronized batch statistics: forward+backward time of each synchronized B-series layer
in a process group, against the same layer unsynchronized and a synchronized BatchNorm + ReLU, in one run.

    python benchmarks/sync.py                                   # 2 CPU processes (gloo), default shapes
    python benchmarks/sync.py --shapes 8x64x32x32 --modes compiled eager --repeats 20 --threads 1
    python benchmarks/sync.py --device cuda --backend nccl      # one GPU per process

Every process runs every candidate on its own input of the given (per-process) shape; before each
pass the processes meet at a barrier (not timed), so a pass measures the layer and its collectives,
not the processes' drift. Candidates take turns within each round. A candidate's time is the median
over ``--repeats`` passes after ``--warmup``, taken on each process, and the slowest process's median
is reported (the group waits for it).

Synchronized BatchNorm + ReLU: ``nn.SyncBatchNorm`` + ReLU where torch runs it (CUDA; on CPU it
refuses, and its kernels have no CPU implementation), and this package's ``BatchNormReLU(sync_stats=True)``
everywhere — the same statistics, in differentiable ops and collectives. The ratio column
``vs_sync_bn_relu`` refers to the first of those present.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from layers import InKernelMode, format_table, parse_shape, write_csv
from torch import nn

import evonorm_plugins as ep

LAYERS = {"B0": ep.EvoNormB0, "B1": ep.EvoNormB1, "B2": ep.EvoNormB2}
COLUMNS = ["shape", "layer", "ms", "extra_ms", "vs_unsynchronized", "vs_sync_bn_relu"]


def candidates(channels: int, layers: Sequence[str], modes: Sequence[str], device: torch.device) -> Dict[str, nn.Module]:
    """Label → module; ``<label> sync`` is the synchronized form of ``<label>``."""
    found: Dict[str, nn.Module] = {"BN+ReLU": nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())}
    if device.type == "cuda":
        found["SyncBatchNorm+ReLU"] = nn.Sequential(nn.SyncBatchNorm(channels), nn.ReLU())
    found["BatchNormReLU sync_stats"] = ep.BatchNormReLU(channels, sync_stats=True)
    for name in layers:
        for mode in modes:
            label = f"EvoNorm{name} {mode}"
            found[label] = InKernelMode(LAYERS[name](channels), mode)
            found[f"{label} sync"] = InKernelMode(LAYERS[name](channels, sync_stats=True), mode)
    return {label: module.to(device).train() for label, module in found.items()}


def time_in_group(modules: Dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> Dict[str, float]:
    """The slowest process's median seconds of one forward+backward pass of each module."""
    dy = torch.randn_like(x)
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    samples: Dict[str, List[float]] = {label: [] for label in modules}
    for round_index in range(warmup + repeats):
        for label, module in modules.items():
            x.grad = None
            module.zero_grad(set_to_none=True)
            synchronize()
            dist.barrier()
            start = time.perf_counter()
            module(x).backward(dy)
            synchronize()
            if round_index >= warmup:
                samples[label].append(time.perf_counter() - start)
    medians = torch.tensor([statistics.median(samples[label]) for label in modules], dtype=torch.float64)
    dist.all_reduce(medians, dist.ReduceOp.MAX)
    return dict(zip(modules, medians.tolist()))


def collective_ms(channels: int, device: torch.device, repeats: int) -> float:
    """The slowest process's median milliseconds of the synchronized B-series' two collectives alone
    (an all-gather of 2C+1 values, an all-reduce of C), for comparison with the layers' extra time."""
    local = torch.randn(2 * channels + 1, device=device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    left = torch.randn(channels, device=device)
    samples = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_gather(parts, local)
        dist.all_reduce(left)
        samples.append(time.perf_counter() - start)
    median = torch.tensor([statistics.median(samples)], dtype=torch.float64)
    dist.all_reduce(median, dist.ReduceOp.MAX)
    return median.item() * 1e3


def rows_for(shape: tuple, seconds: Dict[str, float]) -> List[dict]:
    reference = "SyncBatchNorm+ReLU" if "SyncBatchNorm+ReLU" in seconds else "BatchNormReLU sync_stats"
    rows = []
    for label, value in seconds.items():
        unsynchronized = seconds["BN+ReLU"] if label in ("SyncBatchNorm+ReLU", "BatchNormReLU sync_stats") else (
            seconds[label[: -len(" sync")]] if label.endswith(" sync") else None)
        rows.append({
            "shape": "x".join(map(str, shape)), "layer": label, "ms": value * 1e3,
            "extra_ms": None if unsynchronized is None else (value - unsynchronized) * 1e3,
            "vs_unsynchronized": None if unsynchronized is None else value / unsynchronized,
            "vs_sync_bn_relu": value / seconds[reference],
        })
    return rows


def worker(rank: int, world_size: int, args: argparse.Namespace, folder: str) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    dist.init_process_group(args.backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # each process its own batch
    rows, collectives = [], {}
    for shape in args.shapes:
        x = (torch.randn(shape, device=device) * 2 + 0.5).requires_grad_()
        modules = candidates(shape[1], args.layers, args.modes, device)
        rows += rows_for(shape, time_in_group(modules, x, args.repeats, args.warmup))
        collectives[shape[1]] = collective_ms(shape[1], device, args.repeats)
    if rank == 0:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s) each"
        print(f"torch {torch.__version__}, {world_size} processes ({args.backend}), {where}; shapes are per process")
        for channels, ms in collectives.items():
            print(f"the two collectives alone (C={channels}): {ms:.2f} ms")
        print(format_table(rows, COLUMNS))
        write_csv(rows, args.csv, COLUMNS)
        print(f"wrote {args.csv}")
    dist.destroy_process_group()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape("8x64x32x32")],
                        help="NxCxHxW per process")
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--modes", nargs="+", choices=["compiled", "eager", "reference"], default=[ep.functional.kernel_mode()],
                        help="kernel modes of the EvoNorm rows (default: the one in force)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/sync.csv"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA device is available")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(worker, args=(args.processes, args, folder), nprocs=args.processes, join=True)


if __name__ == "__main__":
    main(sys.argv[1:])
