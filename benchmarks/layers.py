"""Forward+backward time and bytes saved for backward of each EvoNorm layer, side by side with
BatchNorm2d+ReLU, GroupNorm+ReLU and timm's EvoNorm2d* in one run.

    python benchmarks/layers.py                      # CPU, float32, default shapes, default kernel mode
    python benchmarks/layers.py --dtype float32 bfloat16 --shapes 16x128x32x32 --csv out.csv
    python benchmarks/layers.py --preset resnet50 maskrcnn-fpn
    python benchmarks/layers.py --modes eager reference --channels-last --varying
    python benchmarks/layers.py --device cuda        # cuDNN BN, GN, timm; float32 and bfloat16

Time is the median of ``--repeats`` forward+backward passes after ``--warmup`` passes. Saved bytes
count every distinct storage that autograd saves for backward once (input and parameters included),
via ``torch.autograd.graph.saved_tensors_hooks``. Each row gives its ratios to BatchNorm2d+ReLU and
GroupNorm+ReLU of the same shape, and our rows their ratio to timm's equivalent.

``EvoNormX`` rows run the kernel mode in force (the default ``"compiled"``, or ``EVONORM_KERNEL_MODE``);
``--modes`` adds rows in other modes, ``--channels-last`` rows with a channels_last input (BN+ReLU and
GN+ReLU too), ``--varying`` a second table: a detectron2-like sequence of input sizes, its first pass
(compiles included) and the median of later passes, with the number of graphs compiled in each.
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
from evonorm_plugins.kernels.common import MODES as KERNEL_MODES

# Feature-map sizes of a detectron2 model fed differently sized images (FPN P3 of 2 images, 256 channels
# at 1/8 scale, shorter side 640-800): every pass a new size.
VARYING_SIZES = ["2x128x80x100", "2x128x96x72", "2x128x100x100", "2x128x76x124", "2x128x88x88", "2x128x100x68"]
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

VARYING_COLUMNS = [
    "dtype", "memory_format", "layer", "first_pass_ms", "later_pass_ms", "graphs_first_pass", "graphs_later_passes",
    "later_vs_bn_relu", "later_vs_gn_relu",
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


def time_forward_backward(
    modules: Dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int, inputs: Optional[Dict[str, torch.Tensor]] = None
) -> Dict[str, float]:
    """Median seconds of one forward+backward pass of each module (on ``inputs[label]`` where given,
    else on x).

    The modules take turns within each round, so drift in the machine's speed (other processes,
    frequency scaling) spreads over all of them instead of favouring whichever ran first.
    """
    inputs = inputs or {}
    grads = {id(t): torch.randn_like(t) for t in [x, *inputs.values()]}  # in each input's memory format
    synchronize = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    samples: Dict[str, List[float]] = {label: [] for label in modules}
    for round_index in range(warmup + repeats):
        for label, module in modules.items():
            xi = inputs.get(label, x)
            xi.grad = None
            module.zero_grad(set_to_none=True)
            synchronize()
            start = time.perf_counter()
            module(xi).backward(grads[id(xi)])
            synchronize()
            if round_index >= warmup:
                samples[label].append(time.perf_counter() - start)
    return {label: statistics.median(times) for label, times in samples.items()}


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def measure_varying(
    sizes: Sequence[tuple], layers: Sequence[str], dtype: torch.dtype, device: torch.device, repeats: int,
    modes: Sequence[str] = (), channels_last: bool = False,
) -> List[dict]:
    """Each candidate through a sequence of input sizes, one forward+backward per size and pass: the
    first pass (compiles included), the median of ``repeats`` later passes, and the graphs compiled
    during each. Our rows also as a ratio to BN+ReLU and GN+ReLU over the same sequence."""
    inputs = [(torch.randn(s, device=device) * 2).to(dtype).requires_grad_() for s in sizes]
    grads = [torch.randn_like(x) for x in inputs]
    if channels_last:
        inputs = [x.detach().to(memory_format=torch.channels_last).requires_grad_() for x in inputs]
        grads = [g.to(memory_format=torch.channels_last) for g in grads]
    channels = sizes[0][1]
    candidates: Dict[str, nn.Module] = {name: make(channels) for name, make in BASELINES.items()}
    for name in layers:
        candidates[f"EvoNorm{name}"] = OURS[name](channels)
        for mode in modes:
            candidates[f"EvoNorm{name} {mode}"] = InKernelMode(OURS[name](channels), mode)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results = {}
    for label, module in candidates.items():
        module.to(device).train()
        passes, graphs = [], []
        for _ in range(1 + repeats):
            before = compiled_graphs()
            synchronize()
            start = time.perf_counter()
            for x, grad in zip(inputs, grads):
                x.grad = None
                module(x).backward(grad)
            synchronize()
            passes.append(time.perf_counter() - start)
            graphs.append(compiled_graphs() - before)
        results[label] = (passes[0], statistics.median(passes[1:]), graphs[0], sum(graphs[1:]))
    bn, gn = results["BN+ReLU"][1], results["GN+ReLU"][1]
    sequence = " ".join("x".join(map(str, s)) for s in sizes)
    return [{
        "sizes": sequence, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
        "memory_format": "channels_last" if channels_last else "contiguous", "layer": label,
        "first_pass_ms": first * 1e3, "later_pass_ms": later * 1e3, "graphs_first_pass": g_first,
        "graphs_later_passes": g_later, "later_vs_bn_relu": later / bn, "later_vs_gn_relu": later / gn,
    } for label, (first, later, g_first, g_later) in results.items()]


def _ratio(a: float, b: Optional[float]) -> Optional[float]:
    return a / b if b else None


def measure(
    shapes: Sequence[tuple], layers: Sequence[str], dtype: torch.dtype, device: torch.device, repeats: int, warmup: int,
    graph: bool = False, modes: Sequence[str] = (), channels_last: bool = False,
) -> List[dict]:
    """One row per candidate and shape; ``modes`` adds our layers in those kernel modes,
    ``channels_last`` BN+ReLU, GN+ReLU and our layers on a channels_last copy of the input, ``graph``
    each layer's genome run by GraphNormAct, interpreted and compiled (``torch.compile``), as an
    evolved layer would run."""
    timm = timm_layers()
    rows = []
    for shape in shapes:
        channels = shape[1]
        x = (torch.randn(shape, device=device) * 2).to(dtype).requires_grad_()
        x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        input_bytes = x.numel() * x.element_size()
        candidates: Dict[str, nn.Module] = {name: make(channels) for name, make in BASELINES.items()}
        inputs: Dict[str, torch.Tensor] = {}
        if channels_last:
            for name, make in BASELINES.items():
                candidates[f"{name} channels_last"] = make(channels)
                inputs[f"{name} channels_last"] = x_cl
        timm_label: Dict[str, str] = {}  # our row -> timm's row of the same layer
        for name in layers:
            candidates[f"EvoNorm{name}"] = OURS[name](channels)
            for mode in modes:
                candidates[f"EvoNorm{name} {mode}"] = InKernelMode(OURS[name](channels), mode)
                timm_label[f"EvoNorm{name} {mode}"] = f"timm EvoNorm2d{name}"
            if channels_last:
                candidates[f"EvoNorm{name} channels_last"] = OURS[name](channels)
                inputs[f"EvoNorm{name} channels_last"] = x_cl
                timm_label[f"EvoNorm{name} channels_last"] = f"timm EvoNorm2d{name}"
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
        seconds_by_label = time_forward_backward(candidates, x, repeats, warmup, inputs)
        results = {label: (seconds_by_label[label], saved_tensor_bytes(module, inputs.get(label, x))) for label, module in candidates.items()}
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


def format_table(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> str:
    """A Markdown table, the form quoted in the README."""
    def cell(value) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, help="NxCxHxW shapes (instead of --preset)")
    parser.add_argument("--preset", nargs="+", choices=list(PRESETS), default=["default"], help="named shape sets")
    parser.add_argument("--layers", nargs="+", choices=list(OURS), default=list(OURS))
    parser.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: float32 on CPU, float32 and bfloat16 on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--graph", action="store_true", help="add GraphNormAct rows (interpreted and compiled)")
    parser.add_argument("--modes", nargs="+", default=[], choices=list(KERNEL_MODES),
                        help="add rows for our layers in these kernel modes (the rows without a mode run the one in force)")
    parser.add_argument("--channels-last", action="store_true", help="add rows on a channels_last input")
    parser.add_argument("--varying", action="store_true",
                        help="add a table for a detectron2-like sequence of sizes (--varying-sizes), compiles counted")
    parser.add_argument("--varying-sizes", nargs="+", type=parse_shape, default=None, help="NxCxHxW sizes of that sequence")
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

    if device.type == "cuda":
        torch.backends.cudnn.enabled = True  # BatchNorm2d runs cuDNN's kernel
    dtypes = args.dtype or (["float32", "bfloat16"] if device.type == "cuda" else ["float32"])
    shapes = args.shapes or [parse_shape(s) for preset in args.preset for s in PRESETS[preset]]
    torch.manual_seed(0)
    rows = [
        row for dtype in dtypes
        for row in measure(shapes, args.layers, getattr(torch, dtype), device, args.repeats, args.warmup, args.graph, args.modes, args.channels_last)
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, device {device}, kernel mode {ep.functional.kernel_mode()!r}")
    print(format_table(rows))
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    if args.varying:
        sizes = args.varying_sizes or [parse_shape(s) for s in VARYING_SIZES]
        varying = [
            row for dtype in dtypes for memory_format in ([False, True] if args.channels_last else [False])
            for row in measure_varying(sizes, args.layers, getattr(torch, dtype), device, args.repeats, args.modes, memory_format)
        ]
        print(f"\nvarying sizes, one forward+backward each: {varying[0]['sizes']}")
        print(format_table(varying, VARYING_COLUMNS))
        varying_csv = args.csv.with_name(args.csv.stem + "_varying" + args.csv.suffix)
        write_csv(varying, varying_csv, ["sizes", "device", *VARYING_COLUMNS])
        print(f"wrote {varying_csv}")
        rows = rows + varying
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
