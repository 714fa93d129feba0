"""Synchronized batch statistics (``sync_stats``, :func:`convert_sync_evonorm`): two gloo processes on
CPU compute what one process computes on their concatenated batch — outputs, input and parameter
gradients, running statistics — with uneven batches and with a process that holds none; the S-series
and the baselines are left as they are; outside a process group, or in a group of one, a synchronized
layer is the unsynchronized one.

The two processes are started once (``two_processes``) and run every check; each test reads its
check's outcome from both ranks.
"""
import copy
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist
from torch import nn

import evonorm_plugins as ep
from evonorm_plugins import GraphNormAct, convert_sync_evonorm, paper_genome
from evonorm_plugins import functional as F
from evonorm_plugins.graph import genome_from_ops
from evonorm_plugins.kernels import common

from process_group import run_in_process_group
from support import B_LAYERS, randomize_parameters

C = 6
SPLITS = {"uneven": (3, 1), "empty rank": (2, 0)}
# A batch-dependent genome that is not a paper layer: each of the three batch statistics, of x and of
# an expression of x: x · sigmoid(mean_batch(x)) / sqrt(var_batch(x²) + mean_sq_batch(x)).
MIXED_GENOME = genome_from_ops([
    ("mean_batch", [0]), ("sigmoid", [4]), ("mul", [0, 5]), ("square", [0]), ("var_batch", [7]),
    ("mean_sq_batch", [0]), ("add", [8, 9]), ("sqrt", [10]), ("div", [6, 11]),
])
TOLERANCE = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5),
             torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def _b_layer(name: str, apply_act: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        layer = B_LAYERS[name](C, apply_act=apply_act)
        randomize_parameters(layer)
        return layer
    return build


def _graph_layer(genome) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        layer = GraphNormAct(C, genome, groups=3)
        randomize_parameters(layer)
        return layer
    return build


def _batchnorm_relu() -> nn.Module:
    layer = ep.BatchNormReLU(C)
    randomize_parameters(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
    return layer


def _part(sizes: Tuple[int, ...], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _inputs(sizes: Tuple[int, ...], dtype: torch.dtype, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(sum(sizes), C, 4, 3, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    return x, dy


def _forward_backward(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor, create_graph: bool = False,
                      channels_last: bool = False):
    x = x.clone(memory_format=torch.channels_last if channels_last else torch.preserve_format).requires_grad_()
    y = layer(x)
    if channels_last and not (y.is_contiguous(memory_format=torch.channels_last) or y.numel() == 0):
        raise AssertionError("a channels_last input gave an output in another memory format")
    params = [p for _, p in sorted(layer.named_parameters())]
    grads = torch.autograd.grad(y, [x, *params], dy, create_graph=create_graph)
    buffers = {name: b.clone() for name, b in layer.named_buffers()}
    return y.detach(), [g.detach() for g in grads], buffers


def _compare_with_concatenated(
    build: Callable[[], nn.Module], sizes: Tuple[int, ...], rank: int, dtype: torch.dtype = torch.float64,
    convert: Callable[[nn.Module], nn.Module] = convert_sync_evonorm, create_graph: bool = False, seed: int = 0,
    channels_last: bool = False,
) -> Optional[str]:
    """None when this process's part of a synchronized layer's work equals one process's on the whole
    batch (summed parameter gradients against the whole batch's), else what differs."""
    x, dy = _inputs(sizes, dtype, seed)
    single = build().to(torch.float32 if dtype == torch.bfloat16 else dtype).train()  # bfloat16: activations only
    synced = convert(copy.deepcopy(single))
    y_all, grads_all, buffers_all = _forward_backward(single, x, dy)
    part = _part(sizes, rank)
    try:
        y, grads, buffers = _forward_backward(synced, x[part], dy[part], create_graph, channels_last)
    except AssertionError as error:
        return str(error)
    for g in grads[1:]:  # parameter gradients: DDP would average these; their sum is the whole batch's
        dist.all_reduce(g)
    checks = [("output", y, y_all[part]), ("input gradient", grads[0], grads_all[0][part])]
    checks += [(f"parameter gradient {i}", g, e) for i, (g, e) in enumerate(zip(grads[1:], grads_all[1:]))]
    checks += [(name, buffers[name], buffers_all[name]) for name in buffers_all]
    for what, got, expected in checks:
        try:
            torch.testing.assert_close(got, expected, **TOLERANCE[dtype])
        except AssertionError as error:
            return f"{what}: {str(error).splitlines()[0]} ({str(error).splitlines()[-1]})"
    return None


def _sync_all(module: nn.Module) -> nn.Module:
    """Synchronize the BatchNorm baseline too (what a Lightning or BigGAN switch does)."""
    for layer in module.modules():
        if hasattr(layer, "sync_stats"):
            layer.sync_stats = True
    return module


def _convert_leaves_others_alone(rank: int) -> Optional[str]:
    """convert_sync_evonorm: only the B-series and batch-dependent genomes are switched; the model's
    other layers compute exactly what they compute unconverted on this process's own batch."""
    model = nn.Sequential(
        ep.EvoNormS0(C, groups=3), ep.EvoNormB0(C), ep.GroupNormReLU(C, groups=3), ep.BatchNormReLU(C),
        GraphNormAct(C, paper_genome("EvoNormS1"), groups=3), GraphNormAct(C, paper_genome("EvoNormB2")),
        ep.EvoNormB1(C, affine_only=True), ep.EvoNormS2(C, groups=3),
    )
    state = copy.deepcopy(model.state_dict())
    if convert_sync_evonorm(model) is not model:
        return "convert_sync_evonorm did not return the module it converted"
    switched = [i for i, layer in enumerate(model) if getattr(layer, "sync_stats", False)]
    if switched != [1, 5]:
        return f"switched layers {switched}, expected [1, 5] (EvoNormB0 and the B2 genome)"
    if any(not torch.equal(state[k], v) for k, v in model.state_dict().items()) or state.keys() != model.state_dict().keys():
        return "the state dict changed"
    x = torch.randn(3 + rank, C, 4, 4, generator=torch.Generator().manual_seed(rank))
    for i in (0, 2, 3, 4, 6, 7):
        layer = model[i]
        reference = copy.deepcopy(layer)
        if not torch.equal(layer(x), reference(x)):
            return f"layer {i} ({type(layer).__name__}) computes differently after the conversion"
    return None


def _group_of_one_is_unsynchronized(rank: int) -> Optional[str]:
    """In a group of one process (and in eval mode) a synchronized layer computes bit for bit what
    the unsynchronized one does."""
    own = [dist.new_group([r]) for r in range(dist.get_world_size())][rank]
    for name in B_LAYERS:
        for train in (True, False):
            plain = _b_layer(name, True)().train(train)
            synced = convert_sync_evonorm(copy.deepcopy(plain), process_group=own if train else None)
            x, dy = _inputs((3,), torch.float32, seed=rank)
            expected, got = _forward_backward(plain, x, dy), _forward_backward(synced, x, dy)
            if not (torch.equal(got[0], expected[0]) and all(map(torch.equal, got[1], expected[1]))
                    and all(torch.equal(got[2][k], expected[2][k]) for k in expected[2])):
                return f"{name} in {'training' if train else 'eval'} differs from the unsynchronized layer"
    return None


def _saves_only_the_input(rank: int) -> Optional[str]:
    """The lean synchronized kernels keep the input and small statistics for backward (1.0×)."""
    for name in B_LAYERS:
        layer = convert_sync_evonorm(B_LAYERS[name](64))
        x = torch.randn(4 + rank, 64, 16, 16, requires_grad=True)
        storages = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        ratio = sum(storages.values()) / (x.numel() * x.element_size())
        if not 1.0 <= ratio <= 1.02:
            return f"{name} saves {ratio:.2f}x its input"
    return None


def _compiled_kernels(rank: int) -> Optional[str]:
    """The default "compiled" mode traces the synchronized kernels (dynamo, here without Inductor's
    code generation) and does not fall back to the eager ones."""
    with warnings.catch_warnings(record=True) as caught, F.kernel_mode("compiled"):
        warnings.simplefilter("always")
        outcome = _compare_with_concatenated(_b_layer("B0", True), (3, 1), rank, torch.float32)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, common.KernelCompileWarning)]
    return outcome or (fallbacks[0] if fallbacks else None)


def _compiled_model_runs_the_synchronized_layer(rank: int) -> Optional[str]:
    """Under torch.compile of a model the synchronized forward is a graph break that still synchronizes
    (and which fullgraph=True refuses)."""
    sizes = (3, 1)
    x, dy = _inputs(sizes, torch.float32, seed=3)
    single = _b_layer("B0", True)()
    compiled = torch.compile(convert_sync_evonorm(copy.deepcopy(single)), backend="eager")
    part = _part(sizes, rank)
    y = compiled(x[part])
    try:
        torch.testing.assert_close(y, single(x)[part], **TOLERANCE[torch.float32])
    except AssertionError as error:
        return str(error).splitlines()[0]
    torch._dynamo.reset()
    try:
        torch.compile(convert_sync_evonorm(copy.deepcopy(single)), fullgraph=True, backend="eager")(x[part])
    except Exception as error:  # the graph break is refused, on every process alike
        return None if "disable" in str(error) else f"fullgraph=True failed otherwise: {str(error).splitlines()[0]}"
    return "fullgraph=True compiled a synchronized layer"


def sync_checks(rank: int, world_size: int) -> Dict[str, Optional[str]]:
    """Every check, run by each of the two processes; maps a check's name to None (passed) or why not."""
    common.BACKEND = "eager"  # the "compiled" mode traces the split kernels with dynamo, without Inductor's codegen
    results: Dict[str, Optional[str]] = {}
    for split, sizes in SPLITS.items():
        for mode in ("eager", "reference"):
            with F.kernel_mode(mode):
                for name in B_LAYERS:
                    for apply_act in (True, False):
                        key = f"{name} apply_act={apply_act} {mode} {split}"
                        results[key] = _compare_with_concatenated(_b_layer(name, apply_act), sizes, rank)
        with F.kernel_mode("eager"):
            results[f"B0 float32 {split}"] = _compare_with_concatenated(_b_layer("B0", True), sizes, rank, torch.float32)
            results[f"B0 bfloat16 input {split}"] = _compare_with_concatenated(_b_layer("B0", True), sizes, rank, torch.bfloat16)
            results[f"B1 channels_last {split}"] = _compare_with_concatenated(_b_layer("B1", True), sizes, rank, channels_last=True)
            results[f"B0 double backward {split}"] = _compare_with_concatenated(_b_layer("B0", True), sizes, rank, create_graph=True)
            for genome_name, genome in (("B0 genome", paper_genome("EvoNormB0")), ("mixed genome", MIXED_GENOME)):
                results[f"{genome_name} {split}"] = _compare_with_concatenated(_graph_layer(genome), sizes, rank)
            results[f"BatchNormReLU {split}"] = _compare_with_concatenated(_batchnorm_relu, sizes, rank, convert=_sync_all)
            results[f"BatchNormReLU double backward {split}"] = _compare_with_concatenated(
                _batchnorm_relu, sizes, rank, convert=_sync_all, create_graph=True)
    results["B0 compiled kernels"] = _compiled_kernels(rank)
    with F.kernel_mode("eager"):
        results["convert_sync_evonorm leaves the others alone"] = _convert_leaves_others_alone(rank)
        results["a group of one"] = _group_of_one_is_unsynchronized(rank)
        results["memory"] = _saves_only_the_input(rank)
        results["torch.compile of a model"] = _compiled_model_runs_the_synchronized_layer(rank)
    return results


@pytest.fixture(scope="module")
def two_processes() -> List[Dict[str, Optional[str]]]:
    return run_in_process_group(sync_checks, world_size=2)


def _keys() -> List[str]:
    keys = []
    for split in SPLITS:
        keys += [f"{n} apply_act={a} {m} {split}" for m in ("eager", "reference") for n in B_LAYERS for a in (True, False)]
        keys += [f"B0 float32 {split}", f"B0 bfloat16 input {split}", f"B1 channels_last {split}",
                 f"B0 double backward {split}", f"B0 genome {split}", f"mixed genome {split}",
                 f"BatchNormReLU {split}", f"BatchNormReLU double backward {split}"]
    return keys + ["B0 compiled kernels", "convert_sync_evonorm leaves the others alone", "a group of one", "memory",
                   "torch.compile of a model"]


@pytest.mark.parametrize("check", _keys())
def test_two_processes_equal_one_on_the_concatenated_batch(two_processes, check):
    for rank, results in enumerate(two_processes):
        assert results[check] is None, f"rank {rank}: {results[check]}"


def test_every_check_ran(two_processes):
    assert all(set(results) == set(_keys()) for results in two_processes)


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_without_a_process_group_a_synchronized_layer_is_the_unsynchronized_one(name):
    assert not dist.is_initialized()
    plain = _b_layer(name, True)()
    synced = convert_sync_evonorm(copy.deepcopy(plain))
    assert synced.sync_stats and "sync_stats=True" in repr(synced)
    x, dy = _inputs((4,), torch.float32, seed=1)
    expected, got = _forward_backward(plain, x, dy), _forward_backward(synced, x, dy)
    assert torch.equal(got[0], expected[0])
    assert all(map(torch.equal, got[1], expected[1]))
    assert torch.equal(got[2]["running_var"], expected[2]["running_var"])


def test_every_registered_layer_takes_the_keywords():
    """The uniform constructor: layers without batch statistics accept sync_stats and process_group
    and ignore them (as the B-series ignore groups); TorchScript keeps the unsynchronized path."""
    for name in ep.list_layers():
        layer = ep.get_layer(name, 8, sync_stats=True, process_group=None)
        assert not hasattr(layer, "batch_statistics") or layer.batch_statistics == name.startswith("EvoNormB")
    scripted = torch.jit.script(ep.EvoNormB0(8, sync_stats=True))
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(scripted(x), ep.EvoNormB0(8)(x))


