"""``evonorm-search``: run, resume and inspect a layer search.

    evonorm-search run --config configs/search/smoke.yaml --store runs/smoke.sqlite
    evonorm-search resume --store runs/smoke.sqlite         # after a crash or Ctrl-C
    evonorm-search top --store runs/smoke.sqlite -k 10      # best layers, per-architecture scores
    evonorm-search export --store runs/smoke.sqlite -k 3 --out evolved/   # genome JSON the registry loads
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .controller import Controller, SearchConfig
from .store import SearchStore


def load_config(path: Path) -> SearchConfig:
    if not path.is_file():
        raise FileNotFoundError(f"search config {str(path)!r} does not exist; see configs/search/ for examples")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"search config {str(path)!r} must be a mapping of settings, got {type(data).__name__}")
    try:
        return SearchConfig.from_dict(data)
    except TypeError as error:  # an unknown or misspelled key
        raise ValueError(f"search config {str(path)!r}: {error}") from None


def _existing_store(path: Path) -> SearchStore:
    if not path.is_file():
        raise FileNotFoundError(f"no search store at {str(path)!r}; start a search with `evonorm-search run`")
    return SearchStore(path)


def _print_progress(line: str) -> None:
    print(f"\r{line[:160]:<160}", end="", flush=True)


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    controller = Controller(args.store, config, progress=_print_progress)
    if args.baselines:
        controller.evaluate_baselines()
    controller.run()
    print()
    return _top(args)


def _resume(args: argparse.Namespace) -> int:
    _existing_store(args.store).close()
    Controller(args.store, None, progress=_print_progress).run()
    print()
    return _top(args)


def _top(args: argparse.Namespace) -> int:
    store = _existing_store(args.store)
    counts = store.counts()
    print(f"candidates: {store.finished_count()} finished; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    architectures = [a["name"] for a in (store.get_meta("config") or {}).get("evaluation", {}).get("architectures", [])]
    for rank, candidate in enumerate(store.top(getattr(args, "k", 10)), start=1):
        scores = ", ".join(f"{name} {score:.3f}" for name, score in zip(architectures, candidate.scores or ()))
        print(f"{rank:3d}. [{candidate.hash}] {scores}  {candidate.genome.formula()}")
    for name, result in (store.get_meta("baselines") or {}).items():
        scores = ", ".join(f"{a} {s:.3f}" for a, s in zip(architectures, result)) if isinstance(result, list) else result
        print(f"     baseline {name}: {scores}")
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _existing_store(args.store)
    args.out.mkdir(parents=True, exist_ok=True)
    for rank, candidate in enumerate(store.top(args.k), start=1):
        name = f"{args.prefix}{rank:02d}_{candidate.hash[:8]}"
        genome = type(candidate.genome)(candidate.genome.nodes, candidate.genome.output, name=name,
                                        description=f"evonorm-search candidate {candidate.id}, scores {candidate.scores}")
        genome.save(args.out / f"{name}.json")
        print(f"{args.out / (name + '.json')}: {genome.formula()}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="evonorm-search", description="Evolve normalization-activation layers.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start a search")
    run.add_argument("--config", type=Path, required=True, help="YAML settings (configs/search/*.yaml)")
    run.add_argument("--baselines", action="store_true", help="also train BN-ReLU and GN-ReLU the same way, for comparison")
    run.set_defaults(handler=_run)
    resume = commands.add_parser("resume", help="continue a search from its store (after a crash or kill)")
    resume.set_defaults(handler=_resume)
    top = commands.add_parser("top", help="the best layers so far")
    top.add_argument("-k", type=int, default=10)
    top.set_defaults(handler=_top)
    export = commands.add_parser("export", help="write the top-k genomes as JSON the registry loads by name")
    export.add_argument("-k", type=int, default=10)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--prefix", default="evolved_")
    export.set_defaults(handler=_export)
    for command in (run, resume, top, export):
        command.add_argument("--store", type=Path, required=True, help="the search's SQLite file")
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:  # bad config, store, dataset: said, not a traceback
        print(f"evonorm-search: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
