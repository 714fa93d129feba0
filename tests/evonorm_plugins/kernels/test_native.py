"""The hand-written CPU kernels (S-series ``kernels/csrc/sample_cpu.cpp``, B-series ``batch_cpu.cpp``,
loaded by ``kernels/native.py``) against the float64 reference in every layout and shape class, and how the ``"compiled"`` mode uses them:
no dynamo compile, the backward in the kernels its forward ran, lean saved tensors, a loud fallback to
Inductor's kernels where the build fails. Skips where no C++ compiler builds them."""
import copy
import warnings

import pytest
import torch

from evonorm_plugins import functional as F
from evonorm_plugins.kernels import common, native

from support import B_LAYERS, S_LAYERS, randomize_parameters

pytestmark = pytest.mark.usefixtures("native_kernels")


# Groups of several channels; C = groups (one channel per group); L with a vector tail (5×7); one value
# per group (1×1, C = groups); N = 1; 3-D and 5-D inputs; L over one channels-last block (256 rows) with
# a tail.
SHAPES = [((3, 16, 5, 7), 4), ((2, 8, 4, 4), 8), ((3, 8, 1, 1), 8), ((1, 24, 9, 6), 3), ((2, 16, 11), 4), ((2, 8, 3, 4, 5), 2),
          ((3, 16, 17, 17), 4)]
CASES = [(shape, groups, channels_last) for shape, groups in SHAPES for channels_last in (False, True)
         if not (channels_last and len(shape) == 3)]  # 3-D tensors have no channels-last format


def run(layer, x, grad, mode):
    x = x.clone().requires_grad_()
    with F.kernel_mode(mode):
        y = layer(x)
    y.backward(grad)
    return y, x.grad, [p.grad for p in layer.parameters()]


def make(name, channels, groups, apply_act, seed=0):
    """An S-series layer of ``groups`` groups, or a B-series layer (``groups`` unused)."""
    layer = S_LAYERS[name](channels, groups=groups, apply_act=apply_act) if name in S_LAYERS else B_LAYERS[name](channels, apply_act=apply_act)
    randomize_parameters(layer, seed)
    return layer


@pytest.mark.parametrize("apply_act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("shape,groups,channels_last", CASES)
@pytest.mark.parametrize("name", sorted(S_LAYERS))
def test_float32_matches_float64_reference(name, shape, groups, channels_last, apply_act):
    torch.manual_seed(0)
    layer = make(name, shape[1], groups, apply_act)
    x, grad = torch.randn(shape) * 2 + 0.5, torch.randn(shape)
    memory_format = torch.contiguous_format
    if channels_last:
        memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, grad = x.to(memory_format=memory_format), grad.to(memory_format=memory_format)
    y, dx, param_grads = run(layer, x, grad, "compiled")
    y64, dx64, param_grads64 = run(copy.deepcopy(layer).double(), x.double(), grad.double(), "reference")
    for got, expected in [(y, y64), (dx, dx64), *zip(param_grads, param_grads64)]:
        scale = expected.abs().max().clamp(min=1.0)  # one-value groups: gradients of order 1/√ε
        torch.testing.assert_close(got.double() / scale, expected / scale, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=memory_format) and dx.is_contiguous(memory_format=memory_format)


# B-series: several instances and values; one value per instance (1×1, B1/B2's ri of one value); N = 1;
# more than one channels-last block; a 3-D input.
B_SHAPES = [(3, 8, 5, 7), (4, 16, 1, 1), (1, 8, 3, 3), (2, 8, 17, 16), (3, 8, 11)]
B_CASES = [(shape, channels_last) for shape in B_SHAPES for channels_last in (False, True)
           if not (channels_last and len(shape) == 3)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("apply_act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("shape,channels_last", B_CASES)
@pytest.mark.parametrize("name", sorted(B_LAYERS))
def test_batch_float32_matches_float64_reference(name, shape, channels_last, apply_act, training):
    """Outputs, gradients and the running variance; in eval the running variance stands in for the
    batch's and receives no gradient path."""
    torch.manual_seed(0)
    layer = make(name, shape[1], None, apply_act)
    layer.train(training)
    x, grad = torch.randn(shape) * 2 + 0.5, torch.randn(shape)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    layer64 = copy.deepcopy(layer).double()
    y, dx, param_grads = run(layer, x, grad, "compiled")
    y64, dx64, param_grads64 = run(layer64, x.double(), grad.double(), "reference")
    for got, expected in [(y, y64), (dx, dx64), *zip(param_grads, param_grads64), (layer.running_var, layer64.running_var)]:
        scale = expected.abs().max().clamp(min=1.0)  # one-value statistics: gradients of order 1/√ε
        torch.testing.assert_close(got.double() / scale, expected / scale, rtol=1e-5, atol=1e-5)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", sorted(S_LAYERS) + sorted(B_LAYERS))
def test_float64_to_rounding_and_bfloat16(name):
    layer = make(name, 16, 4, True)
    x, grad = torch.randn(2, 16, 6, 5) * 2, torch.randn(2, 16, 6, 5)
    y, dx, grads = run(copy.deepcopy(layer).double(), x.double(), grad.double(), "compiled")
    y_ref, dx_ref, grads_ref = run(copy.deepcopy(layer).double(), x.double(), grad.double(), "reference")
    for got, expected in [(y, y_ref), (dx, dx_ref), *zip(grads, grads_ref)]:
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    y, dx, _ = run(copy.deepcopy(layer), x.bfloat16(), grad.bfloat16(), "compiled")
    y_ref, dx_ref, _ = run(copy.deepcopy(layer), x.bfloat16().float(), grad.bfloat16().float(), "reference")
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=1e-2)  # bf16 output rounding
    torch.testing.assert_close(dx.float(), dx_ref, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(S_LAYERS) + sorted(B_LAYERS))
def test_half_types_convert_in_the_kernels(name, dtype, channels_last):
    """Half-type tensors are read and written as such (converted in registers, computed in float): the
    results are those of float32 on the rounded input, rounded once, in x's dtype and layout."""
    layer = make(name, 16, 4, True)
    x, grad = (torch.randn(2, 16, 9, 7) * 2).to(dtype), torch.randn(2, 16, 9, 7).to(dtype)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    y, dx, grads = run(copy.deepcopy(layer), x, grad, "compiled")
    y_ref, dx_ref, grads_ref = run(copy.deepcopy(layer), x.float(), grad.float(), "reference")
    assert y.dtype == dx.dtype == dtype
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    assert y.is_contiguous(memory_format=memory_format) and dx.is_contiguous(memory_format=memory_format)
    resolution = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    for got, expected in [(y, y_ref), (dx, dx_ref)]:
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.float() / scale, expected / scale, rtol=2 * resolution, atol=2 * resolution)
    for got, expected in zip(grads, grads_ref):  # float32 parameters: sums over the rounded input, unrounded
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# (N, threads, H×W): whole instances, handed out one at a time (four), then one shared by all threads
# (its one block to one of them); one chunk of three instances shared by four threads; two chunks, {0, 1}
# and {2}, of two blocks each; one instance, its blocks shared.
SCHEDULES = [(5, 4, (5, 3)), (3, 4, (5, 3)), (3, 4, (17, 16)), (1, 2, (17, 16))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch,threads,size", SCHEDULES, ids=["whole-then-shared", "chunk", "chunks", "shared-blocks"])
@pytest.mark.parametrize("name", sorted(S_LAYERS))
def test_channels_last_schedules(name, batch, threads, size, dtype):
    """The S-series channels-last kernels schedule instances by how many there are for the threads; each
    schedule gives the contiguous kernels' results (with a half type, through its per-thread or per-chunk
    float scratch)."""
    layer = make(name, 16, 4, True)
    x, grad = (torch.randn(batch, 16, *size) * 2).to(dtype), torch.randn(batch, 16, *size).to(dtype)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y_cl, dx_cl, grads_cl = run(copy.deepcopy(layer), x.to(memory_format=torch.channels_last),
                                    grad.to(memory_format=torch.channels_last), "compiled")
        y, dx, grads = run(copy.deepcopy(layer), x, grad, "compiled")
    finally:
        torch.set_num_threads(before)
    assert dx_cl.is_contiguous(memory_format=torch.channels_last)
    tolerance = 1e-5 if dtype == torch.float32 else 2 * 2.0 ** -8
    for got, expected in [(y_cl, y), (dx_cl, dx), *zip(grads_cl, grads)]:
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.float() / scale, expected.float() / scale, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_inlined_sigmoid_far_out_and_nan(channels_last):
    """σ's inlined exp clamps its argument at ±88: with v·x out to ±600 outputs and gradients still match
    float64, and a NaN stays in its own group."""
    layer = make("S0", 16, 4, True)
    with torch.no_grad():
        layer.v.copy_(torch.linspace(-100.0, 100.0, 16))
    x, grad = torch.randn(2, 16, 6, 5) * 3, torch.randn(2, 16, 6, 5)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    y, dx, grads = run(layer, x, grad, "compiled")
    y64, dx64, grads64 = run(copy.deepcopy(layer).double(), x.double(), grad.double(), "reference")
    for got, expected in [(y, y64), (dx, dx64), *zip(grads, grads64)]:
        scale = expected.abs().max().clamp(min=1.0)
        torch.testing.assert_close(got.double() / scale, expected / scale, rtol=1e-5, atol=1e-5)
    x[1, 0, 2, 2] = float("nan")
    y, dx, _ = run(layer, x, grad, "compiled")
    assert y[1, :4].isnan().all() and dx[1, :4].isnan().all()  # group 0 of instance 1
    assert not y[0].isnan().any() and not y[1, 4:].isnan().any() and not dx[1, 4:].isnan().any()


@pytest.mark.parametrize("name", ["S0", "B0"])
def test_compiled_mode_runs_them_without_dynamo(name, monkeypatch):
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    monkeypatch.setattr(common, "BACKEND", counter)
    calls = []
    kernel = "sample_forward" if name in S_LAYERS else "batch_forward"
    forward = getattr(native, kernel)
    monkeypatch.setattr(native, kernel, lambda *args: calls.append(1) or forward(*args))
    layer = make(name, 16, 4, True)
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    with F.kernel_mode("compiled"):
        y = layer(x)
        with torch.no_grad():
            layer(x)
    with F.kernel_mode("eager"):  # the backward runs the kernels its forward ran
        y.sum().backward()
    assert len(calls) == 2 and counter.frame_count == 0
    with F.kernel_mode("eager"):
        layer(x).sum().backward()
    assert len(calls) == 2  # an eager forward stays eager


def test_saves_only_the_input_and_returns_a_base_tensor():
    layer = make("S0", 32, 8, True)
    x = torch.randn(4, 32, 8, 8, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with F.kernel_mode("compiled"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    v_and_weight = 2 * 32 * 4  # β is not needed
    statistics = 2 * 4 * 8 * 4  # mean and r per (N, G)
    assert sum(storages.values()) == x.numel() * 4 + v_and_weight + statistics
    y += 1.0  # hosts such as torchvision's ResNet add the residual in place
    y.sum().backward()
    assert x.grad is not None


def test_a_failed_build_warns_once_and_runs_inductor(monkeypatch):
    def no_compiler():
        raise RuntimeError("Error building extension 'evonorm_cpu': c++: not found")

    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_build", no_compiler)
    monkeypatch.setattr(common, "BACKEND", "aot_eager")
    common.reset_compiled_kernels()
    layer = make("S1", 8, 4, True)
    x, grad = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    try:
        with pytest.warns(common.KernelCompileWarning, match="c\\+\\+: not found") as caught:
            y, dx, _ = run(layer, x, grad, "compiled")
        assert len(caught) == 1 and "Inductor" in str(caught[0].message)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once
            y2, dx2, _ = run(layer, x, grad, "compiled")
        y_ref, dx_ref, _ = run(layer, x, grad, "reference")
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
    finally:
        common.reset_compiled_kernels()
        torch._dynamo.reset()


def test_build_key_names_source_torch_and_capability(tmp_path, monkeypatch):
    """A cache shared by machines or torch versions never loads a library built for another."""
    built = []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native.torch.ops, "load_library", lambda path: built.append(("load", path)))
    from torch.utils import cpp_extension

    def fake_load(name, build_directory, **kwargs):
        built.append(("build", name))
        (tmp_path / name / f"{name}.so").write_bytes(b"")

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    native._build()
    native._build()  # found: loaded, not rebuilt
    assert [kind for kind, _ in built] == ["build", "load"]
    name = built[0][1]
    assert name.startswith(f"evonorm_cpu_{native._capability().lower()}_")
    monkeypatch.setattr(native.torch, "__version__", "0.0.0-other")
    native._build()
    assert built[-1][0] == "build" and built[-1][1] != name
