import os

# The default kernel mode compiles each layer configuration with torch.compile, seconds per new
# configuration: the suite runs the same kernels op by op ("eager", exact to the same tolerances), and
# tests/test_kernels_compiled.py covers the compiled default. EVONORM_KERNEL_MODE=compiled pytest runs
# everything compiled. Set before evonorm_plugins is imported (it reads the variable at import), and
# inherited by the worker processes that tests start.
os.environ.setdefault("EVONORM_KERNEL_MODE", "eager")

import pytest  # noqa: E402
import torch  # noqa: E402

import evonorm_plugins as ep  # noqa: E402

B_LAYERS = {"B0": ep.EvoNormB0, "B1": ep.EvoNormB1, "B2": ep.EvoNormB2}
S_LAYERS = {"S0": ep.EvoNormS0, "S1": ep.EvoNormS1, "S2": ep.EvoNormS2}
ALL_LAYERS = {**B_LAYERS, **S_LAYERS}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_parameters(layer: torch.nn.Module, generator_seed: int = 1) -> None:
    """Move v, γ, β (and a running variance) away from their initial values, so tests see them used."""
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 1.5 + (0.25 if name != "bias" else -0.75))
        if getattr(layer, "running_var", None) is not None:
            layer.running_var.copy_(torch.rand(layer.num_features, generator=g) * 2 + 0.1)


_INDUCTOR_WORKS = {}


def inductor_works() -> bool:
    """Whether torch.compile's Inductor backend can build a CPU kernel here (it needs a C++ compiler)."""
    if "cpu" not in _INDUCTOR_WORKS:
        try:
            torch._dynamo.reset()
            compiled = torch.compile(lambda t: t.sin() + 1.0, backend="inductor", fullgraph=True)
            _INDUCTOR_WORKS["cpu"] = bool(torch.allclose(compiled(torch.ones(3)), torch.ones(3).sin() + 1.0))
        except Exception:  # any failure to build means: skip the tests that need it
            _INDUCTOR_WORKS["cpu"] = False
    return _INDUCTOR_WORKS["cpu"]


@pytest.fixture
def inductor():
    """Skips a test that needs torch.compile with Inductor where no C++ compiler works."""
    if not inductor_works():
        pytest.skip("torch.compile's Inductor backend does not work here (no working C++ compiler)")
