"""Forward and backward of the hand-written CPU kernels, timed apart, contiguous beside channels_last.

    python benchmarks/kernels.py                                  # 16x128x32x32, S0 and B0, torch's threads
    python benchmarks/kernels.py --layers S0 S1 S2 B0 B1 B2 --shapes 16x128x32x32 2x128x100x100
    python benchmarks/kernels.py --apart 2                        # 2 threads, each on its own N/2 instances
    python benchmarks/kernels.py --against /tmp/old               # A/B against other kernel sources

``benchmarks/layers.py`` times whole layers (autograd included) against the baselines; this script
splits a layer's time between its two operators and the two memory formats, for work on the kernels.
Rounds interleave every (shape, layer, format) so that a busy machine slows them alike; each round's
output is kept until its backward has run, as autograd keeps it, and dx is then added into a buffer of
its own (as autograd accumulates x.grad), so each call finds the caches as a training step leaves them.
Reported: the 25th percentile and the median of the rounds, and channels_last ÷ contiguous. Run as a
script on Linux, it restarts itself with glibc's malloc keeping large blocks (``GLIBC_TUNABLES``, unless
already set): by default glibc hands a freed 8 MiB block back to the system in some rounds and not
others, and the next call pays for fresh pages, a noise of up to 3 ms per call that has nothing to do
with the kernels.

``--against DIR`` builds the kernel sources in DIR (``sample_cpu.cpp``, ``batch_cpu.cpp``,
``cpu_common.h``; e.g. an earlier commit's, from ``git show``) under an operator namespace of their own
and times them in the same rounds, a ``kernels`` column telling the two apart: the way to measure a
change to the kernels on a machine whose speed drifts between runs.

``--apart T`` runs T Python threads at once, each calling the kernels single-threaded on its own N/T
instances, and reports each thread's times: what a static split of the work between T threads would
wait for where the cores are not equally fast (on a shared VM they need not be).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from evonorm_plugins.kernels import native

VARIANTS = {"S0": ("sample", 0), "S1": ("sample", 1), "S2": ("sample", 2), "B0": ("batch", 0), "B1": ("batch", 1), "B2": ("batch", 2)}
GROUPS = 32
STEADY_MALLOC = "glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296"


def parse_shape(text: str) -> Tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: give NxCxHxW, e.g. 16x128x32x32")
    return shape


def step_for(layer: str, x: torch.Tensor, ops: object) -> Callable[[], Tuple[float, float]]:
    """One forward and backward of ``layer``'s kernels (the operators in ``ops``) on x: their seconds."""
    series, variant = VARIANTS[layer]
    channels = x.shape[1]
    v, weight, bias = (torch.randn(channels) for _ in range(3))
    dy, grad_sum = torch.randn_like(x), torch.zeros_like(x)

    def step() -> Tuple[float, float]:
        start = time.perf_counter()
        if series == "sample":
            y, mean, r = ops.sample_forward(x, v, weight, bias, GROUPS, variant, 1e-5, True)
            middle = time.perf_counter()
            dx = ops.sample_backward(dy, x, v, weight, mean, r, GROUPS, True)[0]
        else:
            y, _, batch_mean, left, inst_mean, inst = ops.batch_forward(x, v, weight, bias, None, variant, 1e-5, True)
            middle = time.perf_counter()
            dx = ops.batch_backward(dy, x, v, weight, batch_mean, left, inst_mean, inst, variant, True, True)[0]
        end = time.perf_counter()
        grad_sum.add_(dx)
        return middle - start, end - middle

    return step


def renamed(source: str, namespace: str) -> str:
    """Kernel source whose operators register under ``namespace`` instead of ``evonorm_cpu``."""
    return re.sub(r"\b(TORCH_LIBRARY(?:_FRAGMENT|_IMPL)?)\(evonorm_cpu\b", rf"\1({namespace}", source)


def load_kernels(directory: Path) -> object:
    """The kernel sources in ``directory`` built under an operator namespace of their own (named by
    their hash: a later run reuses the build)."""
    files = {name: (directory / name).read_text() for name in ("sample_cpu.cpp", "batch_cpu.cpp", "cpu_common.h")}
    namespace = "evonorm_ab_" + hashlib.sha256("".join(files.values()).encode()).hexdigest()[:10]
    build = Path(tempfile.gettempdir()) / namespace
    build.mkdir(exist_ok=True)
    for name, text in files.items():  # rewritten only when changed: ninja rebuilds what is newer
        target, text = build / name, renamed(text, namespace)
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
    from torch.utils import cpp_extension

    flags = ["-O3", "-fopenmp", *native._CAPABILITY_FLAGS.get(native._capability(), [])]
    cpp_extension.load(name=namespace, sources=[str(build / "sample_cpu.cpp"), str(build / "batch_cpu.cpp")],
                       build_directory=str(build), extra_cflags=flags, extra_ldflags=["-fopenmp"], is_python_module=False)
    return getattr(torch.ops, namespace)


def inputs(shape: Tuple[int, ...], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    x = torch.randn(shape).to(dtype)
    return {"contiguous": x, "channels_last": x.to(memory_format=torch.channels_last)}


def summary(seconds: List[float]) -> Tuple[float, float]:
    quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else seconds * 3
    return quartiles[0] * 1e3, statistics.median(seconds) * 1e3


def interleaved(shapes: Sequence[Tuple[int, ...]], layers: Sequence[str], dtype: torch.dtype, rounds: int,
                kernels: Dict[str, object]) -> List[dict]:
    """Forward and backward times of each (kernels, shape, layer, format), the formats side by side."""
    steps = {}
    for shape in shapes:
        for fmt, x in inputs(shape, dtype).items():
            for layer in layers:
                for label, ops in kernels.items():
                    steps[(label, shape, layer, fmt)] = step_for(layer, x, ops)
    times: Dict[tuple, Tuple[List[float], List[float]]] = {key: ([], []) for key in steps}
    for _ in range(rounds + 1):  # the first round warms up
        for key, step in steps.items():
            forward, backward = step()
            times[key][0].append(forward)
            times[key][1].append(backward)
    rows = []
    for (label, shape, layer, fmt), (forward, backward) in times.items():
        for op, seconds in (("forward", forward[1:]), ("backward", backward[1:])):
            p25, median = summary(seconds)
            rows.append({"kernels": label, "shape": "x".join(map(str, shape)), "layer": layer, "op": op, "format": fmt,
                         "p25_ms": p25, "median_ms": median})
    by_key = {(r["kernels"], r["shape"], r["layer"], r["op"], r["format"]): r["median_ms"] for r in rows}
    for row in rows:
        row["vs_contiguous"] = row["median_ms"] / by_key[(row["kernels"], row["shape"], row["layer"], row["op"], "contiguous")]
    if len(kernels) == 1:
        for row in rows:
            del row["kernels"]
    return sorted(rows, key=lambda r: (r["shape"], r["format"] != "contiguous", r["layer"], r["op"] != "forward"))


def apart(shapes: Sequence[Tuple[int, ...]], layers: Sequence[str], dtype: torch.dtype, rounds: int, threads: int) -> List[dict]:
    """Each of ``threads`` Python threads runs the kernels single-threaded on its own N/threads instances,
    all at once; a row per thread."""
    for shape in shapes:
        if shape[0] % threads:
            raise SystemExit(f"--apart {threads}: N = {shape[0]} of {shape} is not a multiple of it; pick a shape whose N is")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [row for shape in shapes for fmt in ("contiguous", "channels_last") for layer in layers
                for row in apart_rows((shape[0] // threads, *shape[1:]), fmt, layer, dtype, rounds, threads)]
    finally:
        torch.set_num_threads(before)


def apart_rows(part: Tuple[int, ...], fmt: str, layer: str, dtype: torch.dtype, rounds: int, threads: int) -> List[dict]:
    steps = [step_for(layer, inputs(part, dtype)[fmt], torch.ops.evonorm_cpu) for _ in range(threads)]
    times: List[List[Tuple[float, float]]] = [[] for _ in range(threads)]
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            times[i].extend(steps[i]() for _ in range(rounds + 1))
        except BaseException as error:  # raised again in the calling thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    rows = []
    for i, measured in enumerate(times):
        for op, index in (("forward", 0), ("backward", 1)):
            p25, median = summary([t[index] for t in measured[1:]])
            rows.append({"shape": "x".join(map(str, part)), "layer": layer, "op": op, "format": fmt, "thread": i,
                         "p25_ms": p25, "median_ms": median})
    return rows


def table(rows: List[dict]) -> str:
    columns = [c for c in ("kernels", "shape", "layer", "op", "format", "thread", "p25_ms", "median_ms", "vs_contiguous") if c in rows[0]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape("16x128x32x32")], help="NxCxHxW (C a multiple of 32)")
    parser.add_argument("--layers", nargs="+", choices=sorted(VARIANTS), default=["S0", "B0"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--apart", type=int, metavar="T", help="T Python threads, each single-threaded on N/T instances")
    parser.add_argument("--against", type=Path, metavar="DIR", help="also time the kernel sources in DIR, in the same rounds")
    args = parser.parse_args(argv)
    if any(shape[1] % GROUPS for shape in args.shapes):
        parser.error(f"C must be a multiple of {GROUPS} (the S-series' groups)")
    if args.rounds < 1 or any(count is not None and count < 1 for count in (args.apart, args.threads)):
        parser.error("--rounds, --threads and --apart take a count of at least 1")
    if args.apart and args.against:
        parser.error("--apart times this tree's kernels only; drop --against or run it separately")
    if not native.available():
        raise SystemExit(f"the hand-written kernels did not build here: {native._state.get('error')}")
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = measure(args)
    finally:
        torch.set_num_threads(before)
    print(table(rows))
    return rows


def measure(args: argparse.Namespace) -> List[dict]:
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.dtype}, " + (f"{args.apart} threads apart" if args.apart else f"{torch.get_num_threads()} CPU threads"))
    if args.apart:
        return apart(args.shapes, args.layers, dtype, args.rounds, args.apart)
    kernels = {"this tree": torch.ops.evonorm_cpu}
    if args.against:
        missing = [name for name in ("sample_cpu.cpp", "batch_cpu.cpp", "cpu_common.h") if not (args.against / name).is_file()]
        if missing:
            raise SystemExit(f"--against {args.against}: no {', '.join(missing)} there; give a folder with the three kernel sources")
        try:
            kernels[args.against.resolve().name] = load_kernels(args.against)
        except RuntimeError as error:  # the compiler's log: its first error line says enough
            first = next((line for line in str(error).splitlines() if "error:" in line), str(error).splitlines()[-1])
            raise SystemExit(f"--against {args.against}: the sources did not build: {first.strip()}") from None
    return interleaved(args.shapes, args.layers, dtype, args.rounds, kernels)


if __name__ == "__main__":
    if sys.platform.startswith("linux") and "GLIBC_TUNABLES" not in os.environ:
        os.environ["GLIBC_TUNABLES"] = STEADY_MALLOC
        os.execv(sys.executable, sys.orig_argv)  # the same command, interpreter flags included
    main()
