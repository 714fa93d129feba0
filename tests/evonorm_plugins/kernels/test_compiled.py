"""The default "compiled" kernel mode and the kernel-mode switch.

* one compile per layer configuration for every input size (a detectron2-like sequence of sizes), the
  backward in the mode its forward ran in, a loud fallback to the eager kernels where compiling fails;
* ``kernel_mode``/``set_kernel_mode`` as context managers, and ``EVONORM_KERNEL_MODE``;
* channels_last inputs: same values, output and gradient stay channels_last;
* whole models under ``torch.compile(fullgraph=True)``: no graph break, forward and backward as eager.

On CPU the ``"compiled"`` mode runs the hand-written S-series kernels where they build
(``test_native.py``); this module switches them off to cover the Inductor kernels that run everywhere
else (GPU, or CPU without a build).

Most tests compile with a counting ``aot_eager`` backend (dynamo and AOTAutograd as with Inductor, so
the same guards and recompiles, without building C++): they are fast. Inductor itself is exercised by
the tests that take the ``inductor`` fixture, which skip where no C++ compiler works.
"""
import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import evonorm_plugins as ep
from evonorm_plugins import functional as F
from evonorm_plugins.kernels import common, native

from support import ALL_LAYERS, randomize_parameters

# Sizes a detectron2 model sees: batch 2, feature maps of differently sized images, square and not.
DETECTRON2_SIZES = [(2, 16, 24, 40), (2, 16, 32, 24), (2, 16, 20, 36), (2, 16, 28, 28), (2, 16, 13, 21), (2, 16, 40, 40)]


@pytest.fixture(autouse=True)
def inductor_kernels_on_cpu(monkeypatch):
    monkeypatch.setattr(native, "enabled", False)


@pytest.fixture
def counting_backend(monkeypatch):
    """The kernels compile with a counting aot_eager backend, from a clean slate."""
    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(common, "BACKEND", counter)
    common.reset_compiled_kernels()
    torch._dynamo.reset()
    yield counter
    common.reset_compiled_kernels()
    torch._dynamo.reset()


@pytest.fixture
def no_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", common.KernelCompileWarning)
        yield


def forward_backward(layer, x, grad, mode):
    x = x.clone().requires_grad_()
    with F.kernel_mode(mode):
        y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad


# Compiled graphs per training step: the forward and the backward, which for the S-series is two (a pass
# of reductions, then dx element-wise).
GRAPHS_PER_STEP = {"B0": 2, "S0": 3}


@pytest.mark.parametrize("name", ["B0", "S0"])
def test_varying_sizes_compile_once(name, counting_backend, no_fallback_warning):
    step = GRAPHS_PER_STEP[name]
    layer = ALL_LAYERS[name](16, groups=4)
    randomize_parameters(layer)
    counts = []
    for shape in DETECTRON2_SIZES:
        x, grad = torch.randn(shape) * 2, torch.randn(shape)
        y, dx = forward_backward(layer, x, grad, "compiled")
        y_ref, dx_ref = forward_backward(copy.deepcopy(layer), x, grad, "reference")
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
        counts.append(counting_backend.frame_count)
    assert counts == [step] * len(DETECTRON2_SIZES)  # forward and backward, compiled once for all sizes
    # A batch of one is a specialization of its own (torch specializes sizes of 1): once more, then reused.
    for shape in [(1, 16, 9, 9), (1, 16, 12, 7)]:
        forward_backward(layer, torch.randn(shape), torch.randn(shape), "compiled")
        counts.append(counting_backend.frame_count)
    assert counts[-2:] == [2 * step, 2 * step]
    layer.eval()  # eval is a configuration of its own (the running variance replaces the batch's)
    with torch.no_grad(), F.kernel_mode("compiled"):
        for shape in DETECTRON2_SIZES:
            layer(torch.randn(shape))
    assert counting_backend.frame_count == 2 * step + 1


@pytest.mark.parametrize("name", ["B0", "S0"])
def test_channel_counts_of_a_network_compile_once(name, counting_backend, no_fallback_warning):
    """A ResNet's layers have 4–5 channel counts: one compile serves them all (parameters' sizes are
    dynamic too), where each used to recompile until the budget ran out and the kernels fell back."""
    for channels in (16, 32, 64, 128, 256, 512, 1024, 2048, 24, 40):
        layer = ALL_LAYERS[name](channels, groups=8)
        randomize_parameters(layer)
        x, grad = torch.randn(2, channels, 5, 6) * 2, torch.randn(2, channels, 5, 6)
        y, dx = forward_backward(layer, x, grad, "compiled")
        y_ref, dx_ref = forward_backward(copy.deepcopy(layer), x, grad, "reference")
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
    assert counting_backend.frame_count == GRAPHS_PER_STEP[name]  # once for every channel count


def test_backward_runs_in_the_mode_its_forward_ran_in(counting_backend):
    layer = ALL_LAYERS["S0"](16, groups=4)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    with F.kernel_mode("compiled"):
        y = layer(x)
    assert counting_backend.frame_count == 1
    with F.kernel_mode("eager"):
        y.sum().backward()
    assert counting_backend.frame_count == 3  # the backward's two parts compiled although the mode is eager now
    with F.kernel_mode("eager"):
        y = layer(x)
    with F.kernel_mode("compiled"):
        y.sum().backward()
    assert counting_backend.frame_count == 3  # an eager forward's backward stays eager


def test_no_compiler_warns_once_and_runs_the_eager_kernels(monkeypatch):
    calls = []

    def broken_backend(graph, example_inputs):
        calls.append(1)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(common, "BACKEND", broken_backend)
    common.reset_compiled_kernels()
    torch._dynamo.reset()
    try:
        b0, s0 = ALL_LAYERS["B0"](8), ALL_LAYERS["S0"](8, groups=4)
        x, grad = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
        with pytest.warns(common.KernelCompileWarning) as caught:
            y, dx = forward_backward(b0, x, grad, "compiled")
        assert len(caught) == 1 and len(calls) == 1
        message = str(caught[0].message)
        assert "failed on cpu" in message and "C++ compiler" in message and "EVONORM_KERNEL_MODE=eager" in message
        y_eager, dx_eager = forward_backward(b0, x, grad, "eager")
        torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
        torch.testing.assert_close(dx, dx_eager, rtol=0, atol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second warning, no second attempt on this device
            forward_backward(s0, x, grad, "compiled")
        assert len(calls) == 1
    finally:
        common.reset_compiled_kernels()
        torch._dynamo.reset()


def test_torch_compile_unavailable_warns_and_runs_the_eager_kernels(monkeypatch):
    def unavailable(fn, **options):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(common.torch, "compile", unavailable)
    common.reset_compiled_kernels()
    try:
        layer = ALL_LAYERS["S0"](8, groups=4)
        x = torch.randn(2, 8, 3, 3)
        with pytest.warns(common.KernelCompileWarning, match="Dynamo is not supported"):
            with F.kernel_mode("compiled"), torch.no_grad():
                y = layer(x)
        with F.kernel_mode("eager"), torch.no_grad():
            torch.testing.assert_close(y, layer(x), rtol=0, atol=0)
    finally:
        common.reset_compiled_kernels()


def test_exceeding_the_recompile_budget_is_said_not_silent(counting_backend, monkeypatch):
    monkeypatch.setattr(common, "RECOMPILE_LIMIT", 1)
    layer = ALL_LAYERS["S0"](8, groups=4)
    with F.kernel_mode("compiled"), torch.no_grad():
        layer(torch.randn(2, 8, 5, 5))
        with pytest.warns(common.KernelCompileWarning, match="sample_forward"):
            y = layer(torch.randn(1, 8, 5, 5))  # N = 1 needs a second compile: over the budget of 1
    assert y.shape == (1, 8, 5, 5) and torch.isfinite(y).all()


def test_kernel_mode_context_manager_and_set_kernel_mode():
    start = F.kernel_mode()
    assert isinstance(start, str) and start in common.MODES
    with F.kernel_mode("reference") as mode:
        assert F.kernel_mode() == "reference" and mode.mode == "reference"
        with F.kernel_mode("eager"):
            assert F.kernel_mode() == "eager"
        assert F.kernel_mode() == "reference"
    assert F.kernel_mode() == start
    with pytest.raises(KeyError):
        with F.kernel_mode("reference"):
            raise KeyError("inside")
    assert F.kernel_mode() == start  # restored on an exception too
    with F.set_kernel_mode("reference"):  # switched at once, restored at the end of the block
        assert F.kernel_mode() == "reference"
    assert F.kernel_mode() == start
    handle = F.set_kernel_mode("reference")
    try:
        assert F.kernel_mode() == "reference" and repr(handle) == "KernelMode('reference')"
    finally:
        F.set_kernel_mode(start)
    for bad in (lambda: F.kernel_mode("fast"), lambda: F.set_kernel_mode("fast")):
        with pytest.raises(ValueError, match="unknown kernel mode 'fast'; choose one of compiled, eager, reference"):
            bad()
    assert F.kernel_mode() == start


def test_reference_mode_in_a_block_keeps_every_intermediate():
    layer = ALL_LAYERS["S0"](8, groups=4)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with F.kernel_mode("reference"):
        y = layer(x)
    assert y.grad_fn.name() != "EvoNormSampleFunctionBackward"
    with F.kernel_mode("eager"):
        assert layer(x).grad_fn.name() == "EvoNormSampleFunctionBackward"


@pytest.mark.parametrize("value,expected", [("", "compiled"), ("reference", "reference"), (" Eager ", "eager")])
def test_environment_variable_sets_the_default(monkeypatch, value, expected):
    monkeypatch.setenv(common.ENVIRONMENT_VARIABLE, value)
    assert common._mode_from_environment() == expected


def test_unknown_environment_value_warns_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv(common.ENVIRONMENT_VARIABLE, "fast")
    with pytest.warns(UserWarning, match="EVONORM_KERNEL_MODE='fast' is not a kernel mode"):
        assert common._mode_from_environment() == "compiled"


def test_default_mode_in_a_fresh_process_is_compiled_and_the_variable_switches_it():
    code = "import evonorm_plugins.functional as F; print(F.kernel_mode())"
    env = {k: v for k, v in os.environ.items() if k != common.ENVIRONMENT_VARIABLE}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "compiled"
    env[common.ENVIRONMENT_VARIABLE] = "reference"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "reference"


@pytest.mark.parametrize("name,mode", [(name, "eager") for name in ALL_LAYERS] + [("B0", "compiled"), ("S0", "compiled")])
def test_channels_last_same_values_and_format(name, mode, counting_backend, no_fallback_warning):
    layer = ALL_LAYERS[name](16, groups=4)
    randomize_parameters(layer)
    x, grad = torch.randn(3, 16, 5, 7) * 2, torch.randn(3, 16, 5, 7)
    y, dx = forward_backward(copy.deepcopy(layer), x, grad, mode)
    cl = torch.channels_last
    y_cl, dx_cl = forward_backward(layer, x.to(memory_format=cl), grad.to(memory_format=cl), mode)
    assert y_cl.is_contiguous(memory_format=cl) and not y_cl.is_contiguous()
    assert dx_cl.is_contiguous(memory_format=cl)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx_cl, dx, rtol=1e-5, atol=1e-5)
    layer.eval()
    with torch.no_grad(), F.kernel_mode(mode):
        assert layer(x.to(memory_format=cl)).is_contiguous(memory_format=cl)


# --- whole models under torch.compile(fullgraph=True) ---------------------------------------------


class Detectron2StyleBottleneck(nn.Module):
    """detectron2's BottleneckBlock with EvoNorms: conv-norm ×3, the last norm non-activating, the
    shortcut added and ReLU'd in place (``F.relu_(out + shortcut)``)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        make = getattr(ep, norm)
        self.conv1, self.norm1 = nn.Conv2d(channels, channels // 4, 1, bias=False), make(channels // 4, groups=4)
        self.conv2, self.norm2 = nn.Conv2d(channels // 4, channels // 4, 3, padding=1, bias=False), make(channels // 4, groups=4)
        self.conv3, self.norm3 = nn.Conv2d(channels // 4, channels, 1, bias=False), make(channels, groups=4, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm3(self.conv3(self.norm2(self.conv2(self.norm1(self.conv1(x))))))
        return torch.nn.functional.relu_(out + x)


def timm_resnet(norm: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    import evonorm_plugins.timm  # noqa: F401  (registers the layers as timm norm-act types)

    return timm.create_model("resnetv2_18", norm_layer=getattr(ep, norm), num_classes=10, pretrained=False)


def detectron2_bottleneck(norm: str) -> nn.Module:
    plugin = pytest.importorskip("evonorm_plugins.detectron2", exc_type=ImportError)
    return plugin.EvoNormBottleneckBlock(32, 32, bottleneck_channels=8, norm=plugin.EvoNormFactory(norm, kwargs={"groups": 4}))


MODELS = {
    "detectron2_style_block": (lambda norm: Detectron2StyleBottleneck(32, norm), (2, 32, 12, 10)),
    "detectron2_block": (detectron2_bottleneck, (2, 32, 12, 10)),
    "timm_resnetv2_18": (timm_resnet, (2, 3, 64, 64)),  # 2×2 in the last stage: B0 with H·W = 1 is ill-conditioned
}


def check_whole_model_compile(model_name, norm, backend, memory_format=torch.contiguous_format):
    build, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = build(norm).train()
    compiled_model = copy.deepcopy(model)
    x = torch.randn(shape).to(memory_format=memory_format)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)  # a graph break raises
    y = compiled(xb)
    y_eager = model(xa)
    grad = torch.randn_like(y_eager)
    y.backward(grad)
    y_eager.backward(grad)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-4)
    for (name, p), p_eager in zip(compiled_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(p.grad, p_eager.grad, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name}: {m}")
    for b, b_eager in zip(compiled_model.buffers(), model.buffers()):  # running variances updated alike
        torch.testing.assert_close(b, b_eager, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


@pytest.mark.parametrize("norm", ["EvoNormB0", "EvoNormS0"])
@pytest.mark.parametrize("model_name", ["detectron2_style_block", "detectron2_block"])
def test_block_compiles_fullgraph_and_matches_eager(model_name, norm):
    check_whole_model_compile(model_name, norm, "aot_eager")


def test_block_compiles_fullgraph_channels_last():
    check_whole_model_compile("detectron2_style_block", "EvoNormB0", "aot_eager", torch.channels_last)


@pytest.mark.parametrize("norm", ["EvoNormB0", "EvoNormS0"])
def test_timm_resnet_compiles_fullgraph_and_matches_eager(norm):
    check_whole_model_compile("timm_resnetv2_18", norm, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["EvoNormB0", "EvoNormS0"])
def test_timm_resnet_compiles_fullgraph_with_inductor(norm, inductor):
    check_whole_model_compile("timm_resnetv2_18", norm, "inductor")


@pytest.mark.slow
def test_inductor_varying_sizes_and_channels_last(inductor, no_fallback_warning):
    """The real default (Inductor): the detectron2-like sizes compile once per memory format."""
    common.reset_compiled_kernels()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    original = common.BACKEND
    common.BACKEND = counter
    try:
        layer = ALL_LAYERS["S0"](16, groups=4)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            for shape in DETECTRON2_SIZES:
                x, grad = torch.randn(shape).to(memory_format=memory_format), torch.randn(shape)
                y, dx = forward_backward(layer, x, grad, "compiled")
                y_ref, dx_ref = forward_backward(layer, x, grad, "reference")
                torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
                assert y.is_contiguous(memory_format=memory_format)
        # contiguous: the forward, the backward in two parts (reductions, then dx), and the forward once
        # more where a group's C/G·H·W first exceeds 4096 (40×40 here: Inductor guards its reduction
        # strategy on that size); channels_last: the forward in two parts as well (statistics per
        # channel, then element-wise)
        assert counter.frame_count == 3 + 1 + 4
    finally:
        common.BACKEND = original
        common.reset_compiled_kernels()
        torch._dynamo.reset()
