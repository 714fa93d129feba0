"""fp16 / bf16: statistics in float32, output in the input dtype, no overflow up to |x| = 1e4."""
import pytest
import torch

from support import ALL_LAYERS, randomize_parameters


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_float32(name, dtype):
    layer = ALL_LAYERS[name](16, groups=4)
    randomize_parameters(layer)
    x = (torch.randn(4, 16, 6, 6) * 3).to(dtype)
    expected = layer(x.float())
    y = layer(x)
    assert y.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(y.float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("module_dtype", [torch.float32, torch.float16])
def test_fp16_large_inputs_do_not_overflow(name, module_dtype):
    layer = ALL_LAYERS[name](8, groups=2).to(module_dtype)
    x = torch.randn(2, 8, 5, 5) * 1e4
    x[0, 0, 0, 0] = 1e4
    x[1, 3, 2, 2] = -1e4
    y = layer(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    expected = ALL_LAYERS[name](8, groups=2).double()(x.half().double())
    torch.testing.assert_close(y.double(), expected, rtol=2e-3, atol=2e-3)
    if name.startswith("B"):
        assert torch.isfinite(layer.running_var).all()


def test_half_backward_is_finite():
    for name, cls in ALL_LAYERS.items():
        layer = cls(8, groups=2)
        x = (torch.randn(2, 8, 4, 4) * 1e3).half().requires_grad_()
        layer(x).float().sum().backward()
        assert x.grad.dtype == torch.float16 and torch.isfinite(x.grad).all(), name
