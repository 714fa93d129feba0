"""What one proxy training costs on this machine, and where it ends: seconds and validation accuracy
(search-validation part) of one layer trained on one proxy architecture, as the search trains it::

    python benchmarks/proxy_cost.py --data ../shared/data/cifar10-subset/cifar-10-batches-py \\
        --widths 0.125 0.25 --depth 3 4 6 3 --batch 64 --steps 100 --layers BatchNormReLU --threads 2

The time includes building the model, the Lightning trainer and one validation pass over the
search-validation part. The machine's load average is printed with each row: on a shared machine,
the numbers are only as good as it was quiet.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from evonorm_plugins.registry import get_layer_class
from evonorm_search.proxy import (
    ArchitectureConfig,
    CIFAR10DataModule,
    train_and_validate,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="cifar-10-batches-py folder (default: synthetic data)")
    parser.add_argument("--architecture", default="resnet50v2")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125])
    parser.add_argument("--depth", type=float, nargs="*", default=[3, 4, 6, 3], help="resnet50v2: blocks per stage")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--layers", nargs="+", default=["BatchNormReLU"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu", help="Lightning's accelerator: cpu, cuda, auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = CIFAR10DataModule(args.data, batch_size=args.batch, val_fraction=0.2, heldout_fraction=0.2)
    data.setup()
    print(f"accelerator {args.accelerator}, {args.threads} torch threads")
    print("| architecture | width | depth | batch | steps | layer | seconds | accuracy | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for width in args.widths:
        for layer in args.layers:
            architecture = ArchitectureConfig(args.architecture, width, tuple(args.depth))
            start = time.perf_counter()
            torch.manual_seed(0)  # the initialization, as the search's evaluator seeds it
            accuracy, nonfinite = train_and_validate(architecture.build(get_layer_class(layer)), data, args.steps, args.lr, 0,
                                                     args.accelerator)
            seconds = time.perf_counter() - start
            depth = "×".join(f"{d:g}" for d in args.depth)
            print(f"| {args.architecture} | {width:g} | {depth} | {args.batch} | {args.steps} | {layer} | {seconds:.1f} | "
                  f"{'non-finite' if nonfinite else f'{accuracy:.3f}'} | {os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
