"""The lean kernels equal the reference path (forward, backward, running statistics) and keep only
the input (plus per-channel/per-group statistics) for backward."""
import pytest
import torch

from evonorm_plugins import functional as F
from evonorm_plugins._ops import evonorm_batch_reference, evonorm_sample_reference

from support import ALL_LAYERS, B_LAYERS, randomize_parameters

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}


def _reference(layer, x):
    """The layer's output by the reference implementation (updates a copy of its running variance)."""
    if hasattr(layer, "running_var"):
        running = layer.running_var.clone()
        y = evonorm_batch_reference(x, layer.variant, running, layer.v, layer.weight, layer.bias, layer.training, layer.momentum, layer.eps, layer.apply_act, "ref")
        return y, running
    return evonorm_sample_reference(x, layer.variant, layer.groups, layer.v, layer.weight, layer.bias, layer.eps, layer.apply_act, "ref"), None


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("apply_act", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_lean_equals_reference(name, dtype, apply_act, training):
    layer = ALL_LAYERS[name](24, groups=6, apply_act=apply_act).train(training)
    randomize_parameters(layer)
    x = (torch.randn(4, 24, 6, 5) * 2 + 0.5).to(dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, running_ref = _reference(layer, xa)
    params = [p for p in (layer.v, layer.weight, layer.bias) if p is not None]
    grad = torch.randn_like(y_ref)
    grads_ref = torch.autograd.grad(y_ref, [xa, *params], grad)
    y = layer(xb)
    assert y.dtype == dtype
    grads = torch.autograd.grad(y, [xb, *params], grad)
    torch.testing.assert_close(y, y_ref, **TOLERANCE[dtype])
    for got, expected in zip(grads, grads_ref):
        scale = expected.abs().max().clamp(min=1.0)  # relative to the gradient's size
        torch.testing.assert_close(got / scale, expected / scale, **TOLERANCE[dtype])
    if running_ref is not None:
        torch.testing.assert_close(layer.running_var, running_ref)


def _saved_bytes(fn, x):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(storages.values())


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_only_the_input_and_small_statistics_are_saved(name, dtype):
    layer = ALL_LAYERS[name](64)
    x = torch.randn(8, 64, 16, 16, dtype=dtype, requires_grad=True)
    input_bytes = x.numel() * x.element_size()
    saved = _saved_bytes(layer, x)
    assert input_bytes <= saved <= input_bytes * 1.02
    with F.kernel_mode("reference"):
        assert _saved_bytes(layer, x) >= 2 * input_bytes  # the reference path keeps intermediates


@pytest.mark.parametrize("name", list(ALL_LAYERS))
def test_output_can_be_modified_in_place(name):
    """torchvision's ResNet adds the residual to a norm's output in place."""
    layer = ALL_LAYERS[name](8, groups=4)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    y = layer(x)
    y += 1.0
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list(B_LAYERS))
def test_channels_last_and_double_backward(name):
    layer = B_LAYERS[name](8).double()
    randomize_parameters(layer)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    y = layer(x)
    (grad,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    penalty = grad.square().sum()  # a gradient penalty needs the second derivative
    penalty.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_compiled_mode_equals_reference_and_backward_keeps_its_mode(inductor):
    """The "compiled" mode runs the same kernels through torch.compile (Inductor's C++ on CPU)."""
    for cls in (ALL_LAYERS["B0"], ALL_LAYERS["S0"]):
        layer = cls(16, groups=4)
        randomize_parameters(layer)
        x = torch.randn(4, 16, 6, 6) * 2
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, running_ref = _reference(layer, xa)
        with F.kernel_mode("compiled"):
            y = layer(xb)
        grad = torch.randn_like(y)
        y.backward(grad)  # after the mode was switched back: backward still runs compiled
        y_ref.backward(grad)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        if running_ref is not None:
            torch.testing.assert_close(layer.running_var, running_ref)
    with pytest.raises(ValueError, match=r"unknown kernel mode 'fast'; choose one of compiled, eager, reference"):
        F.set_kernel_mode("fast")
