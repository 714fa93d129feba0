"""The kernels on a CUDA device against the reference path on the same device: forward, backward and
running variance in float32, bfloat16 and float16, in the default (compiled: Triton) and eager modes,
contiguous and channels_last; and the layer benchmark's ``--device cuda`` table. Skipped without a GPU."""
import copy
import importlib.util
import warnings

import pytest
import torch

from evonorm_plugins import functional as F
from evonorm_plugins.kernels import common

from support import ALL_LAYERS, ROOT, randomize_parameters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
DTYPES = list(TOLERANCE)


def forward_backward(layer, x, grad, mode):
    x = x.clone().requires_grad_()
    with F.kernel_mode(mode):
        y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad, getattr(layer, "running_var", None)


@pytest.mark.parametrize("name", list(ALL_LAYERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("mode", ["compiled", "eager"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
def test_cuda_kernels_equal_reference(name, dtype, mode, memory_format):
    torch.manual_seed(0)
    layer = ALL_LAYERS[name](32, groups=8).cuda()
    randomize_parameters(layer)
    x = (torch.randn(4, 32, 9, 7, device="cuda") * 2 + 0.5).to(dtype).to(memory_format=memory_format)
    grad = torch.randn_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", common.KernelCompileWarning)  # Triton must compile these
        y, dx, running = forward_backward(layer, x, grad, mode)
    y_ref, dx_ref, running_ref = forward_backward(copy.deepcopy(layer), x, grad, "reference")
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(y, y_ref, **TOLERANCE[dtype])
    scale = dx_ref.float().abs().max().clamp(min=1.0)
    torch.testing.assert_close(dx.float() / scale, dx_ref.float() / scale, **TOLERANCE[dtype])
    if running is not None:
        torch.testing.assert_close(running, running_ref)


@pytest.mark.parametrize("name", ["B0", "S0"])
def test_cuda_one_value_statistics_match_float64(name):
    """The float32 gradient where a statistic covers one value, against float64 (as on CPU)."""
    torch.manual_seed(0)
    layer = ALL_LAYERS[name](8, groups=8).cuda()
    randomize_parameters(layer)
    shape = (1, 8, 1, 1) if name == "B0" else (3, 8, 1, 1)
    x, grad = torch.randn(shape, device="cuda") * 2 + 0.5, torch.randn(shape, device="cuda")
    _, dx, _ = forward_backward(layer, x, grad, "compiled")
    _, dx64, _ = forward_backward(copy.deepcopy(layer).double(), x.double(), grad.double(), "reference")
    scale = dx64.abs().max().clamp(min=1.0)
    torch.testing.assert_close(dx.double() / scale, dx64 / scale, rtol=1e-5, atol=1e-5)


def test_cuda_benchmark_table(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_layers", ROOT / "benchmarks" / "layers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--device", "cuda", "--shapes", "4x64x16x16", "--layers", "B0", "S0", "--channels-last",
                       "--repeats", "2", "--warmup", "1", "--csv", str(tmp_path / "cuda.csv")])
    assert {row["dtype"] for row in rows} == {"float32", "bfloat16"}  # both by default on CUDA
    assert all(row["device"].startswith("cuda") for row in rows)
    for dtype in ("float32", "bfloat16"):
        labels = {row["layer"] for row in rows if row["dtype"] == dtype}
        assert {"BN+ReLU", "GN+ReLU", "EvoNormB0", "EvoNormS0", "EvoNormS0 channels_last"} <= labels
        s0 = next(row for row in rows if row["dtype"] == dtype and row["layer"] == "EvoNormS0")
        assert s0["saved_x_input"] == pytest.approx(1.0, abs=0.05)
