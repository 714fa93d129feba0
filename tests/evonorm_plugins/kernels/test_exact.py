"""The closed-form backward in float32 equals float64 where a statistic covers a single value
(B-series: N·H·W = 1 or H·W = 1; S-series: a group of one value, C = groups at 1×1), as it does in
every other shape. Forming ``coef·x − coef·μ`` instead of ``coef·(x − μ)`` failed this by up to 2e-2."""
import copy

import pytest
import torch

from evonorm_plugins import functional as F

from support import ALL_LAYERS, B_LAYERS, S_LAYERS, randomize_parameters

TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # what test_lean_kernels holds every other shape to

B_SHAPES = [(1, 8, 1, 1), (4, 8, 1, 1), (2, 8, 3, 3)]  # N·H·W = 1, H·W = 1, and an ordinary shape
S_SHAPES = [(1, 8, 1, 1), (3, 8, 1, 1), (2, 8, 3, 3)]  # groups of one value (C = groups), and ordinary
CASES = [(name, shape, training) for name in B_LAYERS for shape in B_SHAPES for training in (True, False)] + [
    (name, shape, True) for name in S_LAYERS for shape in S_SHAPES  # the S-series has no eval difference
]


def grad_x(layer, x, grad, mode):
    x = x.clone().requires_grad_()
    with F.kernel_mode(mode):
        y = layer(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    return dx


def assert_float32_matches_float64(name, shape, apply_act, training, mode):
    for seed in range(4):
        torch.manual_seed(seed)
        layer = ALL_LAYERS[name](shape[1], groups=shape[1], apply_act=apply_act).train(training)
        randomize_parameters(layer, seed)
        x = torch.randn(shape) * 2 + 0.5
        grad = torch.randn(shape)
        expected = grad_x(copy.deepcopy(layer).double(), x.double(), grad.double(), "reference")
        got = grad_x(layer, x, grad, mode)
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.double() / scale, expected / scale, **TOLERANCE)


@pytest.mark.parametrize("apply_act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("name,shape,training", CASES)
def test_one_value_statistics_eager(name, shape, training, apply_act):
    assert_float32_matches_float64(name, shape, apply_act, training, "eager")


@pytest.mark.parametrize("name,shape", [("B0", (1, 8, 1, 1)), ("S0", (3, 8, 1, 1))])
def test_one_value_statistics_compiled(name, shape, inductor):
    assert_float32_matches_float64(name, shape, True, True, "compiled")
