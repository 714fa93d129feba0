"""``evonorm-search``: run, resume and inspect a layer search.

    evonorm-search run --config configs/search/smoke.yaml --store runs/smoke.sqlite
    evonorm-search resume --store runs/smoke.sqlite         # after a crash or Ctrl-C
    evonorm-search top --store runs/smoke.sqlite -k 10      # best layers, per-architecture scores
    evonorm-search export --store runs/smoke.sqlite -k 3 --out evolved/   # genome JSON the registry loads
    evonorm-search plot --store runs/smoke.sqlite --out plots/             # progress.png, pareto.png
    evonorm-search rerank --store runs/smoke.sqlite -k 10 --seeds 3 --out rerank/  # longer training, held-out table
    evonorm-search calibrate --config configs/search/calibration.yaml --reference reference --store runs/cal.sqlite --out cal/
    evonorm-search ablate --config configs/search/cpu.yaml --seeds 3 --out runs/ablation/   # evolution vs random search

``run``, ``resume``, ``rerank``, ``calibrate`` and ``ablate`` take ``--backend local|ray`` (``--address auto|HOST:PORT`` for a Ray cluster),
``--workers``, ``--in-flight`` and ``--time-limit``, over the config file's ``execution`` section.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from evonorm_plugins.graph import Genome
from evonorm_plugins.user_errors import run_reporting_user_errors

from .ablation import ARMS
from .config import (
    SearchConfig,
    execution_config,
    load_search_file,
    read_yaml,
    validated,
)
from .controller import Controller
from .errors import SearchError
from .execution import Executor, ExecutorConfig, create_executor
from .lock import StoreLock, StoreLockedError
from .progress import ProgressBar
from .store import SearchStore

QUICKSTART = Path(__file__).with_name("quickstart.yaml")
DEFAULT_STORE = Path("runs/search.sqlite")


def load_config(path: Path) -> SearchConfig:
    return load_search_file(path).search


def _execution(args: argparse.Namespace) -> ExecutorConfig:
    """The config file's ``execution`` section (if any), overridden by the command line's flags."""
    config = execution_config(read_yaml(args.config), str(args.config)) if getattr(args, "config", None) else ExecutorConfig()
    flags = {"backend": args.backend, "address": args.address, "workers": args.workers,
             "in_flight": args.in_flight, "time_limit": args.time_limit}
    settings = {**asdict(config), **{k: v for k, v in flags.items() if v is not None}}
    if settings["address"] is not None:
        settings["backend"] = "ray"
    return validated(ExecutorConfig, settings, "execution (config file and flags)")


def _where(execution: ExecutorConfig, store: Path) -> str:
    """What runs where, for the line a command prints before it starts."""
    if execution.backend == "ray":
        runner = f"Ray ({execution.address or 'a local instance'})"
    elif execution.worker_count:
        runner = f"{execution.worker_count} local worker process{'es' if execution.worker_count > 1 else ''}"
    else:
        runner = "this process (no workers; --workers N for N worker processes)"
    return f"on {runner}, store {store}"


@contextlib.contextmanager
def _executor(execution: ExecutorConfig, command: str, store: Path) -> Iterator[Tuple[Executor, Optional[int]]]:
    """The executor ``execution`` asks for, and how many evaluations to keep in flight; shut down on
    the way out. Prints what runs where first."""
    print(f"evonorm-search {command}: {_where(execution, store)}", flush=True)
    executor = create_executor(execution)
    try:
        yield executor, execution.in_flight
    finally:
        executor.shutdown()


def _search(args: argparse.Namespace, config: Optional[SearchConfig]) -> None:
    """Run (config given) or resume the search in ``args.store``, with a progress bar."""
    execution = _execution(args)  # bad execution settings are refused before the store is written
    with ProgressBar("search", "candidate") as bar:
        with Controller(args.store, config, progress=bar) as controller:  # refuses a store in use, before any worker starts
            if getattr(args, "baselines", False):
                controller.evaluate_baselines()
            with _executor(execution, args.command, args.store) as (executor, in_flight):
                controller.run(executor, in_flight)


def _run(args: argparse.Namespace) -> int:
    from .preflight import check_evaluation

    if args.config is None:
        args.config = QUICKSTART
        print(f"evonorm-search run: no --config given, so the quickstart search ({QUICKSTART.name}: synthetic data, "
              f"one small proxy, 6 candidates)", flush=True)
    config = load_config(args.config)
    check_evaluation(config.evaluation, str(args.config))  # the data and every proxy, before the store is written
    _search(args, config)
    return _report(args)


def _resume(args: argparse.Namespace) -> int:
    SearchStore(args.store, read_only=True).close()  # a missing or foreign file is refused before anything starts
    _search(args, None)
    return _report(args)


def _report(args: argparse.Namespace) -> int:
    """After a run: the best layers, and what to do with the store."""
    _top(args)
    store = args.store
    print(f"results: {store} (a SQLite file). Next: `evonorm-search export --store {store} --out evolved/` writes the "
          f"best genomes as JSON, `evonorm-search rerank --store {store} --out rerank/` retrains them longer on held-out "
          f"data, `evonorm-search plot --store {store} --out plots/` draws the run")
    return 0


def _top(args: argparse.Namespace) -> int:
    store = SearchStore(args.store, read_only=True)
    counts = store.counts()
    print(f"candidates: {store.finished_count()} finished; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    architectures = store.architecture_names()
    for rank, candidate in enumerate(store.top(getattr(args, "k", 10)), start=1):
        scores = ", ".join(f"{name} {score:.3f}" for name, score in zip(architectures, candidate.scores or ()))
        notes = [f"rung {candidate.rung}"] if candidate.rung else []
        notes += [f"seed: the paper's {candidate.genome.name}, not evolved"] if candidate.seeded else []
        notes += [f"retried {len(candidate.retries)}×: {candidate.retries[-1]}"] if candidate.retries else []
        print(f"{rank:3d}. [{candidate.hash}] {scores}{''.join(f' ({note})' for note in notes)}  {candidate.genome.formula()}")
    for name, result in (store.get_meta("baselines") or {}).items():
        scores = ", ".join(f"{a} {s:.3f}" for a, s in zip(architectures, result)) if isinstance(result, list) else result
        print(f"     baseline {name}: {scores}")
    return 0


def _save_named(genome: Genome, name: str, description: str, out: Path) -> None:
    """Write ``genome`` under a registry name (the file the registry loads by that name)."""
    named = replace(genome, name=name, description=description)
    named.save(out / f"{name}.json")
    print(f"{out / (name + '.json')}: {named.formula()}")


def _export(args: argparse.Namespace) -> int:
    """The top-k as genome files; seeds (paper layers the search started from) are named ``seed_<layer>``,
    so an exported file never passes a paper layer off as evolved."""
    store = SearchStore(args.store, read_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for rank, candidate in enumerate(store.top(args.k), start=1):
        if candidate.seeded:
            _save_named(candidate.genome, f"seed_{candidate.genome.name or candidate.hash[:8]}",
                        f"the paper's {candidate.genome.name}, a seed of the search (candidate {candidate.id}, scores "
                        f"{candidate.scores}), not evolved", args.out)
        else:
            _save_named(candidate.genome, f"{args.prefix}{rank:02d}_{candidate.hash[:8]}",
                        f"evonorm-search candidate {candidate.id}, scores {candidate.scores}", args.out)
    return 0


def _rerank(args: argparse.Namespace) -> int:
    from .rerank import RerankSettings, format_table, rerank

    SearchStore(args.store, read_only=True).close()  # a missing or foreign file is refused before anything starts
    settings = RerankSettings(args.k, args.seeds, args.steps_scale, tuple(args.baselines))
    execution = _execution(args)
    with StoreLock(args.store), ProgressBar("re-rank", "training") as bar:
        store = SearchStore(args.store)
        with _executor(execution, "rerank", args.store) as (executor, in_flight):
            rows = rerank(store, settings, executor, in_flight, bar)
    table = format_table(rows, store.architecture_names())
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rerank.md").write_text(
        f"Re-ranking of {store.path}: top {settings.k}, {settings.seeds} seeds, steps × {settings.steps_scale:g}\n\n{table}\n")
    print(f"{args.out / 'rerank.md'}")
    candidates = [row for row in rows if row.genome is not None and row.runs][: args.export]
    for rank, row in enumerate(candidates, start=1):
        _save_named(row.genome, f"{args.prefix}{rank:02d}_{row.genome.hash()[:8]}",
                    f"evonorm-search {row.name}, re-ranked {rank}: mean accuracy {row.mean:.4f} over {len(row.runs)} seeds", args.out)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration import (
        calibrate,
        calibration_panel,
        format_calibration,
        plot_calibration,
        read_settings,
    )

    data = read_yaml(args.config, "calibration config")
    settings = {s.name: s for s in read_settings(data, str(args.config))}
    if args.reference not in settings:
        raise ValueError(f"calibration config {str(args.config)!r} has no setting {args.reference!r} to use as the "
                         f"reference; its settings: {', '.join(settings)}")
    reference = settings.pop(args.reference)
    panel_options = data.get("panel") or {}
    panel = calibration_panel(int(panel_options.get("random_genomes", 4)), int(panel_options.get("seed", 0)))
    seeds = args.seeds or int(data.get("seeds", 2))
    execution = _execution(args)
    with StoreLock(args.store), ProgressBar("calibrate", "training") as bar:
        store = SearchStore(args.store)
        with _executor(execution, "calibrate", args.store) as (executor, in_flight):
            reference_row, rows = calibrate(store, reference, list(settings.values()), panel, seeds, executor, in_flight, bar)
    table = format_calibration(reference_row, rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.md").write_text(f"Calibration ({args.config}, reference {args.reference}, {seeds} seeds)\n\n{table}\n")
    print(args.out / "calibration.md")
    print(plot_calibration(reference_row, rows, args.out / "calibration.png"))
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from .ablation import ablate, format_ablation, plot_ablation

    config = load_config(args.config)
    if args.budget is not None:
        config = replace(config, budget=args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    execution = _execution(args)
    with ProgressBar("ablate", "candidate") as bar, _executor(execution, "ablate", args.out) as (executor, in_flight):
        results = ablate(config, args.seeds, args.out, tuple(args.arms), args.top, executor=executor, in_flight=in_flight,
                         progress=bar)
    table = format_ablation(results, args.top)
    print(table)
    (args.out / "ablation.md").write_text(
        f"Ablation of {args.config}: budget {config.budget} candidates per run, {args.seeds} seeds, held-out top-{args.top}\n\n{table}\n")
    print(args.out / "ablation.md")
    print(plot_ablation(results, args.out / "ablation.png"))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_search

    for path in plot_search(SearchStore(args.store, read_only=True), args.out):
        print(path)
    return 0


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_execution_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--backend", choices=("local", "ray"), help="local (default: in this process, or --workers N "
                         "processes) or Ray")
    command.add_argument("--address", help="Ray cluster to join: auto or HOST:PORT (default: start a local Ray)")
    command.add_argument("--workers", type=int, help="local worker processes (default 0: in this process); Ray: CPUs of a local instance")
    command.add_argument("--in-flight", type=int, dest="in_flight", help="evaluations at once (default: one per worker)")
    command.add_argument("--time-limit", type=float, dest="time_limit", help="seconds per evaluation before it is stopped")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evonorm-search", description="Evolve normalization-activation layers.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start a search")
    run.add_argument("--config", type=Path, help="YAML settings (configs/search/*.yaml; default: the one-minute quickstart)")
    run.add_argument("--baselines", action="store_true", help="also train BN-ReLU and GN-ReLU the same way, for comparison")
    run.set_defaults(handler=_run)
    resume = commands.add_parser("resume", help="continue a search from its store (after a crash or kill)")
    resume.set_defaults(handler=_resume)
    top = commands.add_parser("top", help="the best layers so far")
    top.add_argument("-k", type=_positive, default=10)
    top.set_defaults(handler=_top)
    export = commands.add_parser("export", help="write the top-k genomes as JSON the registry loads by name")
    export.add_argument("-k", type=_positive, default=10)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--prefix", default="evolved_")
    export.set_defaults(handler=_export)
    plot = commands.add_parser("plot", help="draw the search's progress and Pareto front as PNGs")
    plot.add_argument("--out", type=Path, required=True, help="folder for progress.png and pareto.png")
    plot.set_defaults(handler=_plot)
    rerank = commands.add_parser("rerank", help="retrain the top-k and the baselines longer, with several seeds, and rank them")
    rerank.add_argument("-k", type=_positive, default=10, help="candidates to re-rank (default 10, as the paper)")
    rerank.add_argument("--seeds", type=_positive, default=3)
    rerank.add_argument("--steps-scale", type=float, default=3.0, dest="steps_scale", help="training steps × this (default 3)")
    rerank.add_argument("--baselines", nargs="*", default=["BatchNormReLU", "GroupNormReLU"], help="registry layers to rank alongside")
    rerank.add_argument("--out", type=Path, required=True, help="folder for rerank.md and the best layers' genome JSON")
    rerank.add_argument("--export", type=_positive, default=3, help="best candidates to write as genome JSON (default 3)")
    rerank.add_argument("--prefix", default="evolved_")
    rerank.set_defaults(handler=_rerank, config=None)
    calibration = commands.add_parser("calibrate", help="how well each proxy setting ranks a fixed panel of layers like a long reference training")
    calibration.add_argument("--config", type=Path, required=True, help="calibration YAML (configs/search/calibration.yaml)")
    calibration.add_argument("--reference", default="reference", help="the setting the others are compared with (default: reference)")
    calibration.add_argument("--seeds", type=_positive, help="trainings per layer and setting (default: the file's seeds, else 2)")
    calibration.add_argument("--out", type=Path, required=True, help="folder for calibration.md and calibration.png")
    calibration.set_defaults(handler=_calibrate)
    ablation = commands.add_parser("ablate", help="evolution vs random search, with and without rejection, at equal budget over seeds")
    ablation.add_argument("--config", type=Path, required=True, help="the search config every arm starts from")
    ablation.add_argument("--seeds", type=_positive, default=3)
    ablation.add_argument("--budget", type=_positive, help="candidates per run (default: the config's budget)")
    ablation.add_argument("--top", type=_positive, default=5, help="each run's best candidates scored on the held-out part (default 5)")
    ablation.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ablation.add_argument("--out", type=Path, required=True, help="folder for each run's store, ablation.md and ablation.png")
    ablation.set_defaults(handler=_ablate)
    for command in (run, resume, rerank, calibration, ablation):
        _add_execution_flags(command)
    run.add_argument("--store", type=Path, default=DEFAULT_STORE, help=f"the search's SQLite file (default {DEFAULT_STORE})")
    for command in (resume, top, export, plot, rerank, calibration):
        command.add_argument("--store", type=Path, required=True, help="the search's SQLite file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; a user's mistake is one line on stderr and exit code 2 (``--debug``: traceback)."""
    def run(args: List[str]) -> int:
        parsed = _parser().parse_args(args)
        return parsed.handler(parsed)

    return run_reporting_user_errors("evonorm-search", run, argv, also=(SearchError, StoreLockedError))


if __name__ == "__main__":
    sys.exit(main())
