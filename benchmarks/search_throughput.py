"""How many candidates per second the search controller sustains: propose, hash and dedupe, record in
the SQLite store, dispatch, collect and record the outcome, with an evaluator that does nothing.

The paper's scale (5000 workers, evaluations of about a minute) needs about 5000 / 60 ≈ 83 candidates
per second; the target is 100. Each row runs a fresh search of ``--budget`` candidates with hundreds
of evaluations queued, against a store on disk::

    python benchmarks/search_throughput.py                       # local backends
    python benchmarks/search_throughput.py --ray                 # and a local Ray instance
    python benchmarks/search_throughput.py --ray --address auto  # and a running Ray cluster
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.evaluator import Outcome
from evonorm_search.execution import ExecutorConfig, create_executor
from evonorm_search.space import SearchSpace


def noop_evaluate(genome, config) -> Outcome:
    """Scores from the genome's hash, at once: only the controller's own work is timed."""
    digest = int(genome.hash(), 16)
    return Outcome(((digest % 1000) / 1000, (digest // 1000 % 1000) / 1000))


def measure(execution: ExecutorConfig, budget: int, in_flight: int, dedupe: bool, folder: Path) -> dict:
    config = SearchConfig(space=SearchSpace(batch_dependent=True), population_size=100, tournament_size=25,
                          budget=budget, dedupe=dedupe, seed=0)
    executor = create_executor(execution)
    try:
        store_path = folder / f"{execution.backend}-{execution.workers}-{in_flight}-{dedupe}.sqlite"
        with Controller(store_path, config, noop_evaluate) as controller:
            started = time.perf_counter()
            store = controller.run(executor, in_flight)
            seconds = time.perf_counter() - started
            assert store.finished_count() == budget
    finally:
        executor.shutdown()
    return {"backend": execution.backend, "workers": execution.workers or "in-process", "in flight": in_flight,
            "dedupe": dedupe, "candidates": budget, "seconds": seconds, "per second": budget / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=500, dest="in_flight")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also measure the Ray backend")
    parser.add_argument("--address", help="a running Ray cluster (default: a local instance)")
    args = parser.parse_args()
    runs = [
        (ExecutorConfig(workers=0), 1, False),
        (ExecutorConfig(workers=0), 1, True),
        (ExecutorConfig(workers=args.workers), args.in_flight, True),
    ]
    if args.ray:
        runs.append((ExecutorConfig(backend="ray", workers=args.workers, address=args.address), args.in_flight, True))
    with tempfile.TemporaryDirectory(prefix="search-throughput-", dir=".") as folder:
        rows = [measure(execution, args.budget, in_flight, dedupe, Path(folder)) for execution, in_flight, dedupe in runs]
    print("| backend | workers | in flight | dedupe (functional hash) | candidates | seconds | candidates/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['workers']} | {row['in flight']} | {'on' if row['dedupe'] else 'off'} | "
              f"{row['candidates']} | {row['seconds']:.1f} | {row['per second']:.0f} |")


if __name__ == "__main__":
    main()
