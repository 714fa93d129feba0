"""Fixtures shared by every test package."""
import os

# The default kernel mode compiles each layer configuration with torch.compile, seconds per new
# configuration: the suite runs the same kernels op by op ("eager", exact to the same tolerances), and
# tests/evonorm_plugins/kernels/test_compiled.py covers the compiled default. EVONORM_KERNEL_MODE=compiled
# pytest runs everything compiled. Set before evonorm_plugins is imported (it reads the variable at
# import), and inherited by the worker processes that tests start.
os.environ.setdefault("EVONORM_KERNEL_MODE", "eager")

import pytest  # noqa: E402
import torch  # noqa: E402

from evonorm_plugins.registry import REGISTRY  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def clean_registry():
    """Layers a test registers are forgotten after it."""
    with REGISTRY.snapshot():
        yield REGISTRY


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


@pytest.fixture(scope="session")
def native_kernels():
    """Skips a test that needs the hand-written CPU kernels where they do not build (no C++ compiler)."""
    import warnings

    from evonorm_plugins.kernels import common, native

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", common.KernelCompileWarning)
        if not native.available():
            pytest.skip(f"the CPU kernels did not build here: {native._state.get('error')}")
