"""``evonorm-plugins``: look at registered layers and genome files.

    evonorm-plugins list
    evonorm-plugins show EvoNormS0                 # formula, hash; writes EvoNormS0.svg
    evonorm-plugins show evolved.json -o graph.png
"""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .graph.genome import Genome
from .graph.render import write_picture
from .registry import get_genome, get_layer_class, list_layers
from .user_errors import run_reporting_user_errors


def resolve(name_or_file: str) -> Genome:
    """A genome from a JSON file path, or the genome of a registered layer."""
    path = Path(name_or_file)
    if path.suffix.lower() == ".json" or path.exists():
        return Genome.load(path)
    return get_genome(name_or_file)


def describe(genome: Genome) -> List[str]:
    lines = [
        f"name:            {genome.name or '(unnamed)'}",
        f"hash:            {genome.hash()}",
        f"formula:         {genome.formula()}  (then · γ + β)",
    ]
    if genome.no_act_output is not None:
        lines.append(f"without act:     {genome.formula(genome.no_act_output)}")
    lines += [
        f"batch-dependent: {'yes' if genome.batch_dependent else 'no'}",
        f"nodes:           {genome.num_nodes} ({len(genome.canonical().nodes)} after canonicalization)",
    ]
    return lines


def _show(args: argparse.Namespace) -> None:
    genome = resolve(args.layer)
    print("\n".join(describe(genome)))
    output = args.output or Path(f"{genome.name or Path(args.layer).stem}.svg")
    write_picture(genome, output)
    print(f"picture:         {output}")


def _list(args: argparse.Namespace) -> None:
    for name in list_layers():
        try:
            text = get_genome(name).formula()
        except ValueError:
            text = f"(hand-written: {get_layer_class(name).__module__})"
        print(f"{name:16s} {text}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``evonorm-plugins`` command; a user's mistake is one line (``--debug`` keeps the traceback)."""
    return run_reporting_user_errors("evonorm-plugins", _run, argv)


def _run(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="evonorm-plugins", description="Inspect EvoNorm and evolved layers.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="print a layer's formula and write a picture of its graph")
    show.add_argument("layer", help="a registered name (see `list`) or a genome .json file")
    show.add_argument("-o", "--output", type=Path, help="picture file: .svg (default NAME.svg), .png (needs matplotlib) or .dot")
    show.set_defaults(run=_show)
    listing = commands.add_parser("list", help="list the registered layers with their formulas")
    listing.set_defaults(run=_list)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
