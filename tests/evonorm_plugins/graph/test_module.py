"""GraphNormAct: paper genomes equal the hand-written layers; safe primitives; precision; scripting."""
import random

import pytest
import torch

import evonorm_plugins as ep
from evonorm_plugins.graph import PRIMITIVES, GraphNormAct, genome_from_ops
from evonorm_plugins.graph.primitives import elementwise
from evonorm_plugins.registry import paper_genome

from support import ALL_LAYERS, random_genome, randomize_parameters


def _graph_twin(name, hand, **kwargs):
    """A GraphNormAct for the paper genome with the hand-written layer's parameters."""
    graph = GraphNormAct(hand.num_features, paper_genome(f"EvoNorm{name}"), groups=hand.groups if hasattr(hand, "groups") else 32, **kwargs)
    with torch.no_grad():
        graph.weight.copy_(hand.weight)
        graph.bias.copy_(hand.bias)
        if hand.v is not None:
            graph.v1.copy_(hand.v)
        if getattr(hand, "running_var", None) is not None and graph.running_stats.numel():
            graph.running_stats[0].copy_(hand.running_var)
    return graph


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("apply_act", [True, False])
def test_paper_genomes_equal_hand_written_layers(name, apply_act):
    hand = ALL_LAYERS[name](24, groups=8, apply_act=apply_act)
    randomize_parameters(hand)
    graph = _graph_twin(name, hand, apply_act=apply_act)
    x = torch.randn(4, 24, 6, 5) * 2
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = hand(xa), graph(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(graph.weight.grad, hand.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(graph.bias.grad, hand.bias.grad, rtol=1e-4, atol=1e-4)
    if hand.v is not None:
        torch.testing.assert_close(graph.v1.grad, hand.v.grad, rtol=1e-4, atol=1e-4)
    if name.startswith("B"):
        torch.testing.assert_close(graph.running_stats[0], hand.running_var)
    hand.eval(), graph.eval()
    x = torch.randn(3, 24, 6, 5)
    torch.testing.assert_close(graph(x), hand(x), rtol=1e-5, atol=1e-5)


def test_parameters_exist_only_when_used():
    b0 = GraphNormAct(8, paper_genome("EvoNormB0"))
    assert b0.v0 is None and b0.v1 is not None and b0.running_stats.shape == (1, 8)
    s1 = GraphNormAct(8, paper_genome("EvoNormS1"))
    assert s1.v0 is None and s1.v1 is None and s1.running_stats.shape == (0, 8)
    assert GraphNormAct(8, paper_genome("EvoNormB0"), apply_act=False).v1 is None
    assert {n for n, _ in s1.named_parameters()} == {"weight", "bias"}


def test_default_no_act_form_normalizes():
    batch_genome = genome_from_ops([("var_batch", [0]), ("add", [0, 2]), ("tanh", [5]), ("div", [6, 4])])
    sample_genome = genome_from_ops([("mean_instance", [0]), ("mul", [0, 4]), ("tanh", [5])])
    x = torch.randn(4, 16, 3, 3) * 3
    torch.testing.assert_close(GraphNormAct(16, batch_genome, apply_act=False)(x), ep.EvoNormB0(16, apply_act=False)(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(GraphNormAct(16, sample_genome, groups=4, apply_act=False)(x), ep.EvoNormS0(16, groups=4, apply_act=False)(x), rtol=1e-5, atol=1e-5)


def test_every_batch_aggregation_keeps_its_running_statistic():
    genome = genome_from_ops([("mean_batch", [0]), ("var_batch", [0]), ("mean_sq_batch", [0]), ("add", [4, 5]), ("add", [7, 6]), ("mul", [0, 8])])
    layer = GraphNormAct(3, genome)
    # one row per batch aggregation, in the canonical program's order: mean 0, var 1, second moment 1
    assert sorted(layer.running_stats[:, 0].tolist()) == [0.0, 1.0, 1.0] and layer.running_stats.shape == (3, 3)
    x = torch.randn(5, 3, 4, 4) + 2
    layer(x)
    mean, var, second = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False), (x * x).mean((0, 2, 3))
    # rows follow the canonical program's order; compare as a set of rows
    expected = {tuple(round(v, 4) for v in row.tolist()) for row in (0.1 * mean, 0.9 + 0.1 * var, 0.9 + 0.1 * second)}
    got = {tuple(round(v, 4) for v in row.tolist()) for row in layer.running_stats}
    assert got == expected
    layer.eval()
    y = layer(x[:1])
    stats = layer.running_stats.sum(0).view(1, 3, 1, 1)
    torch.testing.assert_close(y, x[:1] * stats)
    layer.train()
    layer(torch.full((2, 3, 1, 1), float("nan")))
    assert torch.isfinite(layer.running_stats).all()


@pytest.mark.parametrize("op", list(PRIMITIVES))
def test_primitives_are_safe_at_their_domain_edges(op):
    primitive = PRIMITIVES[op]
    if primitive.is_aggregation:
        genome = genome_from_ops([(op, [0]), ("add", [0, 4])])
        layer = GraphNormAct(4, genome, groups=2)
        for x in (torch.zeros(2, 4, 3, 3), torch.full((2, 4, 3, 3), -1e4), torch.randn(1, 4, 1, 1)):
            assert torch.isfinite(layer(x)).all()
        return
    values = torch.tensor([0.0, -0.0, 1e-30, -1e-30, -3.0, 5.0, 1e4, -1e4, 100.0], dtype=torch.float32, requires_grad=True)
    other = torch.tensor([0.0, 1e-30, -1e-30, 0.0, 2.0, -7.0, 1e-3, 3.0, 0.0], requires_grad=True)
    out = elementwise(primitive.code, values, other, 1e-5)
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    assert torch.isfinite(values.grad).all() and (other.grad is None or torch.isfinite(other.grad).all())


def test_safe_definitions():
    a = torch.tensor([4.0, -4.0, 0.0])
    assert torch.allclose(elementwise(11, a, a, 1e-5), torch.tensor([4.00001 ** 0.5, -(4.00001 ** 0.5), 1e-5 ** 0.5]))
    assert torch.allclose(elementwise(2, torch.ones(3), torch.tensor([0.0, -1e-9, 2.0]), 1e-5), torch.tensor([1e5, -1e5, 0.5]))
    assert torch.allclose(elementwise(8, torch.tensor([-1.0, 1.0]), a, 1e-5), torch.tensor([-torch.log(torch.tensor(1.00001)), torch.log(torch.tensor(1.00001))]))
    assert torch.isfinite(elementwise(7, torch.tensor([1e4]), a, 1e-5)).all()


@pytest.mark.parametrize("seed", range(25))
def test_random_genomes_never_raise(seed):
    rng = random.Random(seed)
    genome = random_genome(rng, size=rng.randint(1, 10))
    layer = GraphNormAct(8, genome, groups=4)
    x = torch.randn(3, 8, 4, 4, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    layer.eval()
    assert layer(x).shape == x.shape


@pytest.mark.parametrize("name", ["EvoNormB0", "EvoNormS0"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(name, dtype):
    layer = GraphNormAct(16, paper_genome(name), groups=4)
    x = torch.randn(2, 16, 5, 5) * 1e4
    y = layer(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), GraphNormAct(16, paper_genome(name), groups=4)(x.to(dtype).float()), rtol=2e-2, atol=2e-2)
    layer = layer.half()
    assert layer.running_stats.dtype == torch.float32


@pytest.mark.parametrize("name", ["EvoNormB0", "EvoNormB1", "EvoNormS0", "EvoNormS2"])
def test_torchscript(name):
    layer = GraphNormAct(8, paper_genome(name), groups=2)
    scripted = torch.jit.script(GraphNormAct(8, paper_genome(name), groups=2))
    x = torch.randn(3, 8, 4, 4)
    torch.testing.assert_close(scripted(x), layer(x))
    torch.testing.assert_close(scripted.running_stats, layer.running_stats)
    torch.testing.assert_close(scripted.eval()(x), layer.eval()(x))


def test_compiled_program_equals_interpreted():
    """compile=True runs the program through torch.compile (Inductor's C++ on CPU)."""
    compiled = GraphNormAct(8, paper_genome("EvoNormB0"), compile=True)
    interpreted = GraphNormAct(8, paper_genome("EvoNormB0"))
    x = torch.randn(3, 8, 4, 4)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = compiled(xa), interpreted(xb)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.running_stats, interpreted.running_stats)
    copy = __import__("copy").deepcopy(compiled)  # EMA copies and checkpoints deep-copy layers
    torch.testing.assert_close(copy.eval()(x), interpreted.eval()(x), rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(GraphNormAct(8, paper_genome("EvoNormB0"), compile=True))
    assert scripted(x).shape == x.shape


def test_constructor_errors():
    with pytest.raises(TypeError, match=r"GraphNormAct needs a genome"):
        GraphNormAct(8)
    with pytest.raises(TypeError, match=r"genome must be a Genome or the path"):
        GraphNormAct(8, 42)
    with pytest.raises(FileNotFoundError, match=r"genome file 'nope.json' does not exist"):
        GraphNormAct(8, "nope.json")
    with pytest.raises(ValueError, match=r"the input has 4 channels but weight has 8 elements"):
        GraphNormAct(8, paper_genome("EvoNormS0"))(torch.randn(2, 4, 3, 3))
