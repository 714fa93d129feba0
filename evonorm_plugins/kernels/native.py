"""Hand-written C++ kernels for the S- and B-series on CPU (``csrc/sample_cpu.cpp``,
``csrc/batch_cpu.cpp``), built on first use.

Why not Inductor's loops: a hand-fused kernel processes each group (S-series) or channel (B-series)
while it sits in cache, so x is read from memory once in the forward and σ(v·x) is computed once in the
backward (Inductor's generated backward reads x and dy twice and computes σ twice; σ is most of the
S-series' arithmetic). On CPU the ``"compiled"`` kernel mode runs these kernels where they build, and
Inductor's where they do not.

The extension is built with ``torch.utils.cpp_extension.load`` (ninja and a C++ compiler) once per
source, torch, Python and CPU vector extension (AVX2, AVX-512, ...: each a build of its own, so a cache
shared by different machines never loads code a CPU cannot run) into a directory named by that key
under ``TORCH_EXTENSIONS_DIR`` (default ``$XDG_CACHE_HOME`` or ``~/.cache``, then
``torch_extensions``); later processes load the library found there directly, and processes that
build at the same time wait for one another (cpp_extension's lock). Where building fails, one :class:`~.common.KernelCompileWarning` says why.
"""
import hashlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from .common import KernelCompileWarning

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "sample_cpu.cpp", CSRC / "batch_cpu.cpp")
HEADERS = (CSRC / "cpu_common.h",)
# ATen's own per-capability flags (ATen/native/cpu kernels are built once per capability the same way).
_CAPABILITY_FLAGS = {
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
}
_state: dict = {}  # "ops": the loaded operator namespace, or "error": why building failed
# Tests switch the hand-written kernels off to exercise Inductor's on CPU; EVONORM_NATIVE=0 does so for a
# whole process.
enabled = os.environ.get("EVONORM_NATIVE", "1").strip() != "0"


def _capability() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _CAPABILITY_FLAGS else "DEFAULT"


def _build() -> None:
    """Load the library built for this source, torch, Python and capability, building it first where
    no earlier process has (the key is in its name: a stale build is never loaded)."""
    capability = _capability()
    flags = ["-O3", "-fopenmp", *_CAPABILITY_FLAGS.get(capability, [])]
    identity = repr((flags, torch.__version__, sys.version_info[:2])).encode()
    code = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    name = f"evonorm_cpu_{capability.lower()}_{hashlib.sha256(code + identity).hexdigest()[:12]}"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    directory = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(cache) / "torch_extensions") / name
    library = directory / f"{name}.so"
    if library.exists():
        try:
            torch.ops.load_library(str(library))  # milliseconds; cpp_extension.load takes ~2 s to find it
            return
        except OSError:  # another process is still linking it: build (which waits for that process's lock)
            pass
    if shutil.which("ninja") is None:  # the ninja wheel's binary, where its bin folder is not on PATH
        import ninja

        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])
    directory.mkdir(parents=True, exist_ok=True)
    # Importing cpp_extension on a CUDA build of torch without a GPU logs "No CUDA runtime is found":
    # irrelevant to a CPU build, kept quiet.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # imports setuptools: only where a build is needed
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    cpp_extension.load(
        name=name,
        sources=[str(path) for path in SOURCES],
        extra_include_paths=[str(CSRC)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(directory),
        is_python_module=False,
        verbose=bool(os.environ.get("EVONORM_NATIVE_VERBOSE")),
    )


def available() -> bool:
    """Whether the CPU kernels are loaded, building them on the first call (seconds; then cached)."""
    if "ops" in _state:
        return True
    if "error" in _state:
        return False
    try:
        _build()
        _state["ops"] = torch.ops.evonorm_cpu
    except Exception as error:  # no compiler, no ninja, a read-only cache directory, ...
        text = str(error).strip().splitlines()
        _state["error"] = f"{type(error).__name__}: {text[-1] if text else ''}"
        warnings.warn(
            f"evonorm_plugins: building the hand-written CPU kernels failed ({_state['error']}); the EvoNorms "
            "run Inductor's kernels on CPU instead (same results, slower). They need ninja and a C++ "
            "compiler; EVONORM_NATIVE_VERBOSE=1 shows the build.",
            KernelCompileWarning,
            stacklevel=3,
        )
        return False
    return True


_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # half types compute in float32


def usable(x: Tensor) -> bool:
    """Whether x's layer runs the hand-written kernels: a CPU tensor in a dtype they take."""
    return enabled and x.device.type == "cpu" and x.dtype in _DTYPES and available()


def runs(x: Tensor, mode: str) -> bool:
    """Whether the kernel mode ``mode`` runs the hand-written kernels for x: ``"compiled"`` where usable."""
    return mode == "compiled" and usable(x)


def sample_forward(
    x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, groups: int, variant: int, eps: float, apply_act: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    """Output (x's shape, dtype and memory format), and per (N, G) the mean and r = (stat + ε)^-½."""
    return _state["ops"].sample_forward(x, v, weight, bias, groups, variant, eps, apply_act)


def sample_backward(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, mean: Tensor, r: Tensor, groups: int, apply_act: bool
) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """dx (x's dtype and memory format), dv, dγ, dβ (the parameters' dtypes; dv ``None`` without the
    activation)."""
    dx, partial = _state["ops"].sample_backward(dy, x, v, weight, mean, r, groups, apply_act)
    d_weight, d_bias, d_v = partial.sum(dim=1).unbind(0)
    return dx, d_v.to(v.dtype) if apply_act else None, d_weight.to(weight.dtype), d_bias.to(weight.dtype)


def batch_forward(
    x: Tensor, v: Tensor, weight: Tensor, bias: Tensor, left_var: Optional[Tensor], variant: int, eps: float, apply_act: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """As :func:`.batch.batch_forward`: output (x's shape, dtype and memory format), batch variance (C,),
    and the statistics backward needs, batch mean and left (1, 1, C, 1), instance mean and statistic
    (N, 1, C, 1)."""
    y, batch_var, batch_mean, left, inst_mean, inst = _state["ops"].batch_forward(x, v, weight, bias, left_var, variant, eps, apply_act)
    n, c = x.shape[0], x.shape[1]
    return y, batch_var, batch_mean.view(1, 1, c, 1), left.view(1, 1, c, 1), inst_mean.view(n, 1, c, 1), inst.view(n, 1, c, 1)


def batch_backward(
    dy: Tensor, x: Tensor, v: Tensor, weight: Tensor, batch_mean: Tensor, left: Tensor, inst_mean: Tensor, inst: Tensor,
    variant: int, apply_act: bool, batch_statistics: bool,
) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """dx (x's dtype and memory format), dv (``None`` but for B0 with the activation), dγ, dβ."""
    dx, grads = _state["ops"].batch_backward(dy, x, v, weight, batch_mean, left, inst_mean, inst, variant, apply_act, batch_statistics)
    d_weight, d_bias, d_v = grads.unbind(0)
    d_v = d_v.to(v.dtype) if variant == 0 and apply_act else None
    return dx, d_v, d_weight.to(weight.dtype), d_bias.to(weight.dtype)
