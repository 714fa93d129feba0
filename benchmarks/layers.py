"""Forward+backward time and bytes saved for backward of each EvoNorm layer, side by side with
BatchNorm2d+ReLU, GroupNorm+ReLU and timm's EvoNorm2d* in one run.

    python benchmarks/layers.py                      # CPU, float32, default shapes
    python benchmarks/layers.py --dtype float32 bfloat16 --shapes 16x128x32x32 --csv out.csv
    python benchmarks/layers.py --preset resnet50 maskrcnn-fpn
    python benchmarks/layers.py --device cuda        # when a GPU is present

Time is the median of ``--repeats`` forward+backward passes after ``--warmup`` passes. Saved bytes
count every distinct storage that autograd saves for backward once (input and parameters included),
via ``torch.autograd.graph.saved_tensors_hooks``. Each row gives its ratios to BatchNorm2d+ReLU and
GroupNorm+ReLU of the same shape, and our rows their ratio to timm's equivalent.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

import evonorm_plugins as ep

PRESETS = {
    "default": ["16x128x32x32", "8x64x64x64", "32x256x16x16"],
    # ResNet-50 bottleneck widths where BN-ReLU sits, batch 16 at 224×224 (stages 1-4)
    "resnet50": ["16x64x56x56", "16x128x28x28", "16x256x14x14", "16x512x7x7"],
    # Mask R-CNN FPN levels P3-P5 for two 800×1333 images, and the mask head on 128 RoIs
    "maskrcnn-fpn": ["2x256x100x168", "2x256x50x84", "2x256x25x42", "128x256x14x14"],
}
OURS = {
    "B0": ep.EvoNormB0, "B1": ep.EvoNormB1, "B2": ep.EvoNormB2,
    "S0": ep.EvoNormS0, "S1": ep.EvoNormS1, "S2": ep.EvoNormS2,
}
BASELINES = {
    "BN+ReLU": lambda c: nn.Sequential(nn.BatchNorm2d(c), nn.ReLU()),
    "GN+ReLU": lambda c: nn.Sequential(nn.GroupNorm(32, c), nn.ReLU()),
}
COLUMNS = [
    "shape", "dtype", "device", "layer", "ms", "saved_MiB", "saved_x_input",
    "time_vs_bn_relu", "time_vs_gn_relu", "time_vs_timm", "saved_vs_bn_relu", "saved_vs_gn_relu", "saved_vs_timm",
]


def parse_shape(text: str) -> tuple:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not NxCxHxW with positive sizes, e.g. 16x128x32x32")
    return shape


class InKernelMode(nn.Module):
    """Runs a layer's forward (and so its backward) with a given evonorm kernel mode."""

    def __init__(self, layer: nn.Module, mode: str) -> None:
        super().__init__()
        self.layer, self.mode = layer, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with ep.functional.kernel_mode(self.mode):
            return self.layer(x)


def timm_layers() -> Dict[str, Callable[[int], nn.Module]]:
    """timm's equivalents with our eps, or nothing when timm is not installed."""
    try:
        from timm.layers import evo_norm
    except ImportError:
        return {}
    classes = {
        "B0": evo_norm.EvoNorm2dB0, "B1": evo_norm.EvoNorm2dB1, "B2": evo_norm.EvoNorm2dB2,
        "S0": evo_norm.EvoNorm2dS0, "S1": evo_norm.EvoNorm2dS1, "S2": evo_norm.EvoNorm2dS2,
    }
    return {name: (lambda c, cls=cls: cls(c, eps=1e-5)) for name, cls in classes.items()}


def saved_tensor_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward pass, each distinct storage counted once."""
    storages: Dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(x)
    return sum(storages.values())


def time_forward_backward(modules: Dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> Dict[str, float]:
    """Median seconds of one forward+backward pass of each module.

    The modules take turns within each round, so drift in the machine's speed (other processes,
    frequency scaling) spreads over all of them instead of favouring whichever ran first.
    """
    grad = torch.randn_like(x)
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    samples: Dict[str, List[float]] = {label: [] for label in modules}
    for round_index in range(warmup + repeats):
        for label, module in modules.items():
            x.grad = None
            module.zero_grad(set_to_none=True)
            synchronize()
            start = time.perf_counter()
            module(x).backward(grad)
            synchronize()
            if round_index >= warmup:
                samples[label].append(time.perf_counter() - start)
    return {label: statistics.median(times) for label, times in samples.items()}


def _ratio(a: float, b: Optional[float]) -> Optional[float]:
    return a / b if b else None


def measure(
    shapes: Sequence[tuple], layers: Sequence[str], dtype: torch.dtype, device: torch.device, repeats: int, warmup: int,
    graph: bool = False, compiled: bool = False,
) -> List[dict]:
    """One row per candidate and shape; ``compiled`` adds our layers in the ``"compiled"`` kernel mode,
    ``graph`` each layer's genome run by GraphNormAct, interpreted and compiled (``torch.compile``),
    as an evolved layer would run."""
    timm = timm_layers()
    rows = []
    for shape in shapes:
        channels = shape[1]
        x = (torch.randn(shape, device=device) * 2).to(dtype).requires_grad_()
        input_bytes = x.numel() * x.element_size()
        candidates: Dict[str, nn.Module] = {name: make(channels) for name, make in BASELINES.items()}
        timm_label: Dict[str, str] = {}  # our row -> timm's row of the same layer
        for name in layers:
            candidates[f"EvoNorm{name}"] = OURS[name](channels)
            if compiled:
                candidates[f"EvoNorm{name} compiled"] = InKernelMode(OURS[name](channels), "compiled")
                timm_label[f"EvoNorm{name} compiled"] = f"timm EvoNorm2d{name}"
            if name in timm:
                candidates[f"timm EvoNorm2d{name}"] = timm[name](channels)
                timm_label[f"EvoNorm{name}"] = f"timm EvoNorm2d{name}"
            if graph:
                genome = ep.paper_genome(f"EvoNorm{name}")
                candidates[f"graph {name}"] = ep.GraphNormAct(channels, genome)
                candidates[f"graph {name} compiled"] = ep.GraphNormAct(channels, genome, compile=True)
                timm_label[f"graph {name}"] = timm_label[f"graph {name} compiled"] = f"timm EvoNorm2d{name}"
        for module in candidates.values():
            module.to(device).train()
        seconds_by_label = time_forward_backward(candidates, x, repeats, warmup)
        results = {label: (seconds_by_label[label], saved_tensor_bytes(module, x)) for label, module in candidates.items()}
        bn_time, bn_saved = results["BN+ReLU"]
        gn_time, gn_saved = results["GN+ReLU"]
        for label, (seconds, saved) in results.items():
            timm_time, timm_saved = results.get(timm_label.get(label, ""), (None, None))
            rows.append({
                "shape": "x".join(map(str, shape)), "dtype": str(dtype).replace("torch.", ""), "device": str(device),
                "layer": label, "ms": seconds * 1e3, "saved_MiB": saved / 2**20, "saved_x_input": saved / input_bytes,
                "time_vs_bn_relu": seconds / bn_time, "time_vs_gn_relu": seconds / gn_time,
                "time_vs_timm": _ratio(seconds, timm_time),
                "saved_vs_bn_relu": saved / bn_saved, "saved_vs_gn_relu": saved / gn_saved,
                "saved_vs_timm": _ratio(saved, timm_saved),
            })
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A Markdown table, the form quoted in the README."""
    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, help="NxCxHxW shapes (instead of --preset)")
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=["default"], help="named shape sets")
    parser.add_argument("--layers", nargs="+", choices=list(OURS), default=list(OURS))
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", "float16"], default=["float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--graph", action="store_true", help="add GraphNormAct rows (interpreted and compiled)")
    parser.add_argument("--compiled", action="store_true", help='add rows for our layers in the "compiled" kernel mode')
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--csv", type=Path, default=Path("benchmarks/results/layers.csv"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was asked for but no CUDA device is available; use --device cpu")

    shapes = args.shapes or [parse_shape(s) for preset in args.preset for s in PRESETS[preset]]
    torch.manual_seed(0)
    rows = [row for dtype in args.dtype for row in measure(shapes, args.layers, getattr(torch, dtype), device, args.repeats, args.warmup, args.graph, args.compiled)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    print(format_table(rows))
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
