"""BigGAN-deep on CIFAR-10 with several G norm-activations, same settings and seeds: loss curves and
sample grids side by side, and IS/FID when the Inception weights are given::

    python benchmarks/biggan_compare.py --data ../shared/data/cifar10-subset/cifar-10-batches-py \\
        --layers BatchNormReLU EvoNormB0 EvoNormS0 --g-steps 2000 --out runs/biggan-compare
    python benchmarks/biggan_compare.py ... --inception-weights weights/pt_inception-2015-12-05-6726825d.pth

Each layer is trained by the command a user runs (``evonorm-biggan fit``, through
:func:`evonorm_biggan.cli.main`) on ``configs/biggan/cifar10_bn_relu.yaml`` with ``model.layer`` and
the CPU reductions below changed, and the same ``seed_everything`` (so the same initial weights where
the layers allow: BN-ReLU and the EvoNorms draw nothing at init). A run resumes from its
``last.ckpt`` (``--ckpt_path last``), so a killed comparison continues, and a finished run is only
read. ``--out`` then holds, per layer, the run (``<layer>/``: checkpoints, CSV log, grids every
``--grid-every`` G steps) and, for all layers, ``losses.png`` (D's real and fake hinge terms and G's
loss per G step, smoothed), ``grids.png`` (each layer's final G_ema grid of the same fixed latents,
one class per row) and ``summary.md`` (G steps, the seconds this invocation took, the load average and,
with ``--inception-weights``, IS/FID as validation computes them: untruncated z, torch-fidelity's
Inception, the first ``--eval-images`` training images). An evolved layer: register it first (``EVONORM_GENOMES=evolved/``) and name it in
``--layers``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "biggan" / "cifar10_bn_relu.yaml"
LOSSES = {"loss/d_real": "D, real images", "loss/d_fake": "D, generated images", "loss/g": "G"}


def parse(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="cifar-10-batches-py folder (any subset of its data_batch_* files)")
    parser.add_argument("--out", type=Path, default=Path("runs/biggan-compare"))
    parser.add_argument("--layers", nargs="+", default=["BatchNormReLU", "EvoNormB0", "EvoNormS0"])
    parser.add_argument("--g-steps", type=int, default=2000, help="G steps per layer")
    parser.add_argument("--ch", type=int, default=16, help="g_ch and d_ch (the config: 64)")
    parser.add_argument("--batch", type=int, default=32, help="micro-batch per D step (the config: 50)")
    parser.add_argument("--d-steps", type=int, default=2, help="D steps per G step (the config: 4)")
    parser.add_argument("--ema-start", type=int, default=500)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--grid-every", type=int, default=500, help="G steps between sample grids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights: IS/FID of each final G_ema")
    parser.add_argument("--eval-images", type=int, default=10000)
    return parser.parse_args(argv)


def fit_arguments(layer: str, args: argparse.Namespace) -> List[str]:
    """``evonorm-biggan fit`` arguments of one layer's run (resumed from its last checkpoint if any)."""
    run = args.out / layer
    per_iteration = args.d_steps + 1  # optimizer steps per G step
    logger = {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    return [
        "fit", "--config", str(CONFIG), "--seed_everything", str(args.seed), "--model.layer", layer,
        "--model.g_ch", str(args.ch), "--model.d_ch", str(args.ch), "--model.d_steps", str(args.d_steps),
        "--model.ema_start", str(args.ema_start), "--model.ema_decay", str(args.ema_decay),
        "--model.standing_stats_batches", "4", "--model.standing_stats_batch_size", "64",
        "--data.init_args.root", args.data, "--data.init_args.batch_size", str(args.batch * args.d_steps),
        "--data.init_args.num_workers", "0", "--data.init_args.eval_images", str(args.eval_images),
        "--trainer.default_root_dir", str(run), "--trainer.max_steps", str(args.g_steps * per_iteration),
        "--trainer.max_epochs", "-1", "--trainer.logger", json.dumps(logger), "--trainer.log_every_n_steps", "5",
        "--trainer.enable_progress_bar", "false", "--sample_grid.every_n_steps", str(args.grid_every),
        "--checkpoint.every_n_train_steps", str(args.grid_every * per_iteration), "--ckpt_path", "last",
    ]


def read_losses(run: Path) -> Dict[str, List[float]]:
    """The run's logged losses by G step, over all its CSV versions (a resumed run logs to a new one)."""
    by_step: Dict[int, Dict[str, float]] = {}
    for path in sorted((run / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("g_steps") and all(row.get(k) for k in LOSSES):
                    by_step[int(float(row["g_steps"]))] = {k: float(row[k]) for k in LOSSES}
    steps = sorted(by_step)
    return {"g_steps": [float(s) for s in steps], **{k: [by_step[s][k] for s in steps] for k in LOSSES}}


def smooth(values: List[float], window: int) -> List[float]:
    """Trailing moving average (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot(layers: List[str], losses: Dict[str, Dict[str, List[float]]], grids: Dict[str, torch.Tensor], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 3.6), sharex=True)
    for ax, (key, title) in zip(axes, LOSSES.items()):
        for layer in layers:
            if losses[layer]["g_steps"]:
                ax.plot(losses[layer]["g_steps"], smooth(losses[layer][key], 20), label=layer, linewidth=1.2)
        ax.set(title=f"{title} (hinge, smoothed)", xlabel="G step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 4.3), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        ax.imshow(grids[layer].permute(1, 2, 0).numpy())
        ax.set_title(layer)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "grids.png", dpi=120)
    plt.close(fig)


@torch.no_grad()
def evaluate(model, datamodule, weights: str) -> Dict[str, float]:
    """IS/FID of the final G_ema as validation computes them (untruncated z, standing statistics first)."""
    from evonorm_biggan.metrics import InceptionMetrics

    metrics = InceptionMetrics(weights)
    model.refresh_ema_stats()
    for x, _ in datamodule.val_dataloader():
        metrics.update_real(x)
        metrics.update_fake(model.sample(x.shape[0]))
    return {k: float(v) for k, v in metrics.compute().items()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    from evonorm_biggan.cli import main as biggan

    args.out.mkdir(parents=True, exist_ok=True)
    losses, grids, summary = {}, {}, {}
    for layer in args.layers:
        start = time.perf_counter()
        cli = biggan(fit_arguments(layer, args))
        seconds = time.perf_counter() - start
        losses[layer] = read_losses(args.out / layer)
        grids[layer] = cli.model.sample_grid()
        g_steps = int(cli.model.g_steps)
        summary[layer] = {"g_steps": g_steps, "seconds": seconds, "load": os.getloadavg()[0]}
        if args.inception_weights:
            summary[layer].update(evaluate(cli.model, cli.datamodule, args.inception_weights))
        print(f"{layer}: {json.dumps(summary[layer])}", flush=True)
    plot(args.layers, losses, grids, args.out)
    scores = ["fid", "is_mean", "is_std"] if args.inception_weights else []
    header = ["layer", "G steps", "seconds (this invocation)", "load", *scores]
    rows = [[layer, str(row["g_steps"]), f"{row['seconds']:.0f}", f"{row['load']:.1f}", *(f"{row[k]:.3f}" for k in scores)]
            for layer, row in summary.items()]
    lines = [f"| {' | '.join(cells)} |" for cells in [header, ["---"] * len(header), *rows]]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


if __name__ == "__main__":
    main()
