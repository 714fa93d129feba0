"""B-series running variance: no autograd graph, biased update, eval use, never NaN/inf, state_dict."""
import io

import pytest
import torch

from support import B_LAYERS


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_update_keeps_no_graph_and_is_biased(name):
    layer = B_LAYERS[name](8)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert not layer.running_var.requires_grad and layer.running_var.grad_fn is None
    expected = 0.9 + 0.1 * x.detach().var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(layer.running_var, expected)
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_eval_uses_running_var_not_batch(name):
    layer = B_LAYERS[name](4)
    with torch.no_grad():
        layer.running_var.fill_(100.0)
    layer.eval()
    x = torch.randn(2, 4, 3, 3)
    before = layer.running_var.clone()
    y_single = layer(x[:1])
    torch.testing.assert_close(layer(x)[:1], y_single)  # no dependence on the rest of the batch
    torch.testing.assert_close(layer.running_var, before)  # eval never updates


@pytest.mark.parametrize("name", list(B_LAYERS))
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (1, 4, 1, 1), (2, 4, 0, 5)])
def test_degenerate_batches_leave_buffer_untouched(name, shape):
    layer = B_LAYERS[name](4)
    before = layer.running_var.clone()
    y = layer(torch.randn(shape))
    assert y.shape == shape and torch.isfinite(y).all()
    torch.testing.assert_close(layer.running_var, before)


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_non_finite_batch_statistics_never_enter_buffer(name):
    layer = B_LAYERS[name](3)
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 0, 0] = float("inf")
    x[1, 2, 1, 1] = float("nan")
    layer(x)
    assert torch.isfinite(layer.running_var).all()
    torch.testing.assert_close(layer.running_var[1:], torch.ones(2))  # bad channels keep their old value
    assert layer.running_var[0] != 1.0  # the good channel was updated


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_state_dict_round_trip(name):
    layer = B_LAYERS[name](6)
    for _ in range(3):
        layer(torch.randn(4, 6, 3, 3) * 5)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = B_LAYERS[name](6)
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored.running_var, layer.running_var)
    x = torch.randn(2, 6, 3, 3)
    torch.testing.assert_close(restored.eval()(x), layer.eval()(x))
    assert set(layer.state_dict()) == {"weight", "bias", "running_var"} | ({"v"} if name == "B0" else set())


def test_half_module_keeps_float32_running_var():
    layer = B_LAYERS["B0"](4).half()
    assert layer.weight.dtype == torch.float16 and layer.running_var.dtype == torch.float32
    layer(torch.randn(2, 4, 3, 3).half() * 1e4)  # variance ~1e8 overflows fp16, not float32
    assert torch.isfinite(layer.running_var).all() and layer.running_var.min() > 1e6
    layer.load_state_dict(B_LAYERS["B0"](4).half().state_dict())
    assert layer.running_var.dtype == torch.float32
    assert B_LAYERS["B0"](4).double().running_var.dtype == torch.float64


def test_reset_running_stats_and_parameters():
    layer = B_LAYERS["B0"](4)
    layer(torch.randn(3, 4, 2, 2) * 3)
    with torch.no_grad():
        layer.v.mul_(3)
    layer.reset_running_stats()
    layer.reset_parameters()
    torch.testing.assert_close(layer.running_var, torch.ones(4))
    torch.testing.assert_close(layer.v, torch.ones(4))
