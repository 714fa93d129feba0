"""Helpers shared by the lean kernels, which work on a 4-D view (N, G, C/G, L) of the input
(G = 1 for the B-series, whose statistics are per channel)."""
import inspect
import os
import types
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor

MODES = ("compiled", "eager", "reference")
DEFAULT_MODE = "compiled"
ENVIRONMENT_VARIABLE = "EVONORM_KERNEL_MODE"


class KernelCompileWarning(UserWarning):
    """The lean kernels could not be compiled and run op by op (the ``"eager"`` mode) instead."""


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def _mode_from_environment() -> str:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if not value:
        return DEFAULT_MODE
    if value not in MODES:
        warnings.warn(
            f"{ENVIRONMENT_VARIABLE}={value!r} is not a kernel mode ({', '.join(MODES)}); "
            f"using the default {DEFAULT_MODE!r}",
            stacklevel=2,
        )
        return DEFAULT_MODE
    return value


_mode = _mode_from_environment()


class KernelMode:
    """A kernel mode as a context manager. ``kernel_mode(mode)`` switches on ``__enter__``;
    :func:`set_kernel_mode` has switched already. Leaving the ``with`` block, also by an exception,
    restores the mode in force before the switch."""

    def __init__(self, mode: str, switch_now: bool) -> None:
        self.mode = _check_mode(mode)
        self._restore: List[str] = []  # a stack: one object may be entered again inside its own block
        self._switched_at_init = switch_now
        if switch_now:
            self._restore.append(_switch(mode))

    def __enter__(self) -> "KernelMode":
        if self._switched_at_init:
            self._switched_at_init = False  # ``with set_kernel_mode(m):`` undoes the switch set made
        else:
            self._restore.append(_switch(self.mode))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _switch(self._restore.pop())

    def __repr__(self) -> str:
        return f"KernelMode({self.mode!r})"


def _switch(mode: str) -> str:
    global _mode
    previous, _mode = _mode, mode
    return previous


def set_kernel_mode(mode: str) -> KernelMode:
    """Switch how the six EvoNorm layers run in eager PyTorch, for the whole process:

    * ``"compiled"`` (default): the lean kernels (input-only memory, closed-form backward): on CPU the
      hand-written C++ ones (:mod:`.native`), elsewhere, or where those do not build, their forward and
      backward each compiled by ``torch.compile`` (Inductor: C++ loops on CPU, which needs a C++
      compiler; Triton on GPU) with dynamic shapes: once per configuration (layer formula,
      training or eval, ``apply_act``), dtype, device and memory format, not per input size. Where
      compiling fails (no compiler), one :class:`KernelCompileWarning` says so and the ``"eager"``
      kernels run instead;
    * ``"eager"``: the same kernels op by op (no compile time, about 2× slower);
    * ``"reference"``: the reference implementation in plain autograd ops (about 4× the memory).

    The environment variable ``EVONORM_KERNEL_MODE`` sets the mode at import (e.g. ``eager`` where
    compile time matters more than speed). TorchScript, tracing, ``torch.compile`` of a whole model and
    ONNX export always use the reference implementation, which the compilers fuse themselves.

    Returns a :class:`KernelMode`; used as a context manager (``with set_kernel_mode("eager"): ...``)
    it restores the previous mode on exit. See also ``kernel_mode(mode)``.
    """
    return KernelMode(mode, switch_now=True)


@overload
def kernel_mode() -> str: ...


@overload
def kernel_mode(mode: str) -> KernelMode: ...


def kernel_mode(mode: Optional[str] = None) -> Union[str, KernelMode]:
    """``kernel_mode()``: the name of the mode in force. ``kernel_mode(mode)``: a context manager that
    runs its block in ``mode`` and then restores the previous one::

        with evonorm_plugins.functional.kernel_mode("reference"):
            y = model(x)
    """
    if mode is None:
        return _mode
    return KernelMode(mode, switch_now=False)


def current_mode() -> str:
    return _mode


# --- compiled kernels ---------------------------------------------------------------------------------
# One torch.compile per kernel function and static configuration (the non-tensor arguments, and the
# tensors' dtype, device and memory format), each with dynamic shapes and its own recompile budget, so
# that varying input sizes reuse one compiled kernel and the configurations of a model do not share (and
# exhaust) torch's per-function recompile limit of 8. fullgraph=True makes exceeding the budget an
# error, which falls back loudly instead of silently.
BACKEND: Any = "inductor"  # tests substitute a counting backend
RECOMPILE_LIMIT = 8  # per configuration: size-1 dimensions specialize (N = 1, H·W = 1), nothing else should
_compiled: Dict[Tuple, Callable] = {}
_failed_devices: Dict[str, str] = {}  # device type -> why compiling failed there
_failed_configurations: Dict[Tuple, str] = {}
_COMPILE_PARAMETERS = inspect.signature(torch.compile).parameters


def channels_last(x: Tensor) -> bool:
    """Whether x is stored channels-last (NHWC / NDHWC) rather than contiguous."""
    if x.is_contiguous():
        return False
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)


def kernel_layout(x: Tensor) -> Tensor:
    """x itself when contiguous or channels-last, else a contiguous copy.

    The kernels work on the (N, G, C/G, L) view, which both layouts allow without a copy (C splits into
    G·C/G with strides (C/G, 1) channels-last; the spatial axes merge into L), and write their output
    in x's layout, so a channels-last network stays channels-last.
    """
    return x if x.is_contiguous() or channels_last(x) else x.contiguous()


def _describe(arg: Any) -> Any:
    if isinstance(arg, Tensor):
        return (arg.dtype, arg.device, channels_last(arg))
    return arg


def _compile(fn: Callable) -> Callable:
    options: Dict[str, Any] = dict(dynamic=True, fullgraph=True, backend=BACKEND)
    if "isolate_recompiles" in _COMPILE_PARAMETERS and "recompile_limit" in _COMPILE_PARAMETERS:
        options.update(isolate_recompiles=True, recompile_limit=RECOMPILE_LIMIT)
    else:  # older torch: a copy of the code object is a cache line of its own
        fn = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(fn, **options)


def _warn_fallback(where: str, error: BaseException) -> None:
    warnings.warn(
        f"evonorm_plugins: compiling the EvoNorm kernels failed {where} ({type(error).__name__}: "
        f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); they run op by op (the "
        f'"eager" kernel mode, about 2x slower, same results) instead. torch.compile needs a working C++ '
        f"compiler on CPU and Triton on GPU; set {ENVIRONMENT_VARIABLE}=eager to skip compiling.",
        KernelCompileWarning,
        stacklevel=4,
    )


def run_kernel(fn: Callable, mode: str, *args: Any) -> Any:
    """``fn(*args)``, through its compiled version in the ``"compiled"`` mode.

    ``mode`` is the current mode for a forward; a backward passes the mode its forward ran in.
    """
    if mode != "compiled":
        return fn(*args)
    device = next(a.device.type for a in args if isinstance(a, Tensor))
    if device in _failed_devices:
        return fn(*args)
    key = (fn, *map(_describe, args))
    if key in _failed_configurations:
        return fn(*args)
    compiled = _compiled.get(key)
    if compiled is None:
        try:
            compiled = _compiled[key] = _compile(fn)
        except Exception as error:  # torch.compile unavailable here (e.g. a Python version dynamo lacks)
            _failed_devices[device] = repr(error)
            _warn_fallback(f"on {device}", error)
            return fn(*args)
    try:
        # Without duck sizing, sizes that happen to be equal on the first call (H = W) get symbols of
        # their own, so a later H ≠ W does not recompile.
        shape_config = torch.fx.experimental._config
        duck_shape, shape_config.use_duck_shape = shape_config.use_duck_shape, False  # 4× cheaper than .patch
        try:
            # Parameters (v, γ, β) go in as plain tensors: torch specializes a parameter's sizes, which
            # recompiled for every channel count of a network (a ResNet has 4–5) until the budget ran
            # out. The kernels never record autograd (they run inside autograd Functions or without
            # grad), so nothing is lost.
            return compiled(*(a.detach() if isinstance(a, torch.nn.Parameter) else a for a in args))
        finally:
            shape_config.use_duck_shape = duck_shape
    except torch._dynamo.exc.BackendCompilerFailed as error:  # no C++ compiler / Triton: give up on the device
        _failed_devices[device] = repr(error)
        _warn_fallback(f"on {device}", error)
    except (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit) as error:
        _failed_configurations[key] = repr(error)
        _warn_fallback(f"for {fn.__name__} with {key[1:]}", error)
    return fn(*args)


def reset_compiled_kernels() -> None:
    """Forget the compiled kernels and earlier compile failures (for tests, or after installing a
    compiler in a running process)."""
    _compiled.clear()
    _failed_devices.clear()
    _failed_configurations.clear()


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, the input's own dtype otherwise (TorchScript-compatible:
    the reference path in ``functional`` uses it too)."""
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return torch.float32
    return x.dtype


def default_parameters(
    x: Tensor, v: Optional[Tensor], weight: Optional[Tensor], bias: Optional[Tensor]
) -> Tuple[Tensor, Tensor, Tensor, bool]:
    """v, γ, β with ``None`` replaced by their initial values 1, 1, 0, and whether autograd must record
    (grad mode on and some input requires grad): without it the kernels run their forward alone."""
    c = x.shape[1]
    options = dict(dtype=weight.dtype if weight is not None else torch.float32, device=x.device)
    v_t = v if v is not None else torch.ones(c, **options)
    w_t = weight if weight is not None else torch.ones(c, **options)
    b_t = bias if bias is not None else torch.zeros(c, **options)
    record = torch.is_grad_enabled() and any(t.requires_grad for t in (x, v_t, w_t, b_t))
    return v_t, w_t, b_t, record


def _two_pass_moments(t: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance along ``dim`` (kept), for compiled kernels: the mean, then the mean
    square of the centred values. Inductor fuses the two reductions into one loop nest that reads each
    row twice from cache; with its one-pass Welford var_mean instead, B0 ran at 1.44–1.46×
    BatchNorm+ReLU where it runs at 1.26× (``benchmarks/layers.py``, README, 2026-12-01). The centred
    second pass is as exact."""
    mean = t.mean(dim=dim, keepdim=True)
    centred = t - mean
    return mean, (centred * centred).mean(dim=dim, keepdim=True)


def group_moments(x4: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance over axes 2 and 3 of (N, G, C/G, L), each (N, G, 1, 1).

    Eager, native_group_norm's moments kernel reads x once and is numerically careful (torch.var is
    several times slower on CPU); its normalized output is discarded. The tiny ε keeps its inverse std
    finite for constant groups, so the variance read back from it is exact to rounding. Compiled,
    two reductions take its place (:func:`_two_pass_moments`).
    """
    n, g, cg, length = x4.shape
    if torch.compiler.is_compiling() and not x4.is_contiguous():
        # channels-last under Inductor: moments per channel over L (a reduction it vectorizes across the
        # contiguous channels), then per group: variance = mean channel variance + variance of the means.
        mean_c, var_c = _two_pass_moments(x4.reshape(n, 1, g * cg, length), dim=3)
        var_c, mean_c = var_c.view(n, g, cg, 1), mean_c.view(n, g, cg, 1)
        mean = mean_c.mean(dim=2, keepdim=True)
        spread = mean_c - mean
        return mean, (var_c + spread * spread).mean(dim=2, keepdim=True)
    if torch.compiler.is_compiling():
        # native_group_norm takes C as a plain int, which would specialize the compiled kernel to one
        # channel count (a recompile per layer width).
        mean, var = _two_pass_moments(x4.reshape(n * g, cg * length), dim=1)  # one contiguous row per group
        return mean.view(n, g, 1, 1), var.view(n, g, 1, 1)
    _, mean, rstd = torch.native_group_norm(x4.reshape(n, g * cg, length), None, None, n, g * cg, length, g, 1e-30)
    return mean.view(n, g, 1, 1), rstd.pow(-2).view(n, g, 1, 1)


def per_channel(param: Tensor, groups: int, dtype: torch.dtype) -> Tensor:
    """A (C,) parameter viewed as (1, G, C/G, 1) to broadcast over the grouped input."""
    return param.to(dtype).view(1, groups, -1, 1)


def affine_output(x: Tensor, a: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``a·scale + shift`` written into a new tensor of x's shape and dtype.

    The result is a base tensor, not a view: hosts such as torchvision's ResNet add the residual to a
    norm's output in place, which autograd forbids on a view returned by a custom Function.
    """
    if torch.is_grad_enabled() and (a.requires_grad or scale.requires_grad or shift.requires_grad):
        return torch.addcmul(shift, a, scale).reshape(x.shape).to(x.dtype)  # double backward: out= has no autograd
    if torch.compiler.is_compiling():  # Inductor allocates and fuses itself; dynamo rejects out= views
        return torch.addcmul(per_input(shift, a, x), a.reshape(x.shape), per_input(scale, a, x)).to(x.dtype)
    out = torch.empty_like(x, dtype=a.dtype)  # x's memory format, whose grouped view is a's
    torch.addcmul(shift, a, scale, out=out.view(a.shape))
    return out.to(x.dtype)


def as_base(t: Tensor, shape: Sequence[int]) -> Tensor:
    """``t`` viewed as ``shape`` (no copy), returned as a tensor of its own rather than a view.

    A custom Function's output that is a view cannot be modified in place, and hosts such as
    torchvision's ResNet add the residual to a norm's output in place. Where autograd records ``t``
    (a double backward), a plain reshape keeps the graph.
    """
    view = t.reshape(shape)
    if t.requires_grad or view._base is None:
        return view
    return t.new_empty(0).set_(t.untyped_storage(), view.storage_offset(), view.shape, view.stride())


def per_input(t: Tensor, view: Tensor, x: Tensor) -> Tensor:
    """A small (N or 1, G or 1, C/G or 1, 1) tensor of the grouped view as (N or 1, C, 1, ...) against x.

    Under Inductor the last full-size op of a kernel runs in x's own shape: its output is then laid
    out like x (channels-last stays channels-last) instead of being computed in the view's shape and
    copied into x's layout afterwards.
    """
    full = t.expand(t.shape[0], view.shape[1], view.shape[2], 1)
    return full.reshape([t.shape[0], x.shape[1]] + [1] * (x.dim() - 2))


def channel_sums(t: Tensor, keep_batch: bool) -> Tensor:
    """Σ over the spatial axis (and the batch unless ``keep_batch``), keeping 4-D shape.

    The batch is summed second, over the small per-instance sums: every full-size reduction of a
    backward then has the same loop structure, which Inductor fuses into one pass over its inputs.
    """
    per_instance = t.sum(dim=3, keepdim=True)
    return per_instance if keep_batch else per_instance.sum(dim=0, keepdim=True)


def differentiable_backward(
    forward: Callable[[], Tensor], inputs: Sequence[Tensor], needs_grad: Sequence[bool], dy: Tensor
) -> Tuple[Optional[Tensor], ...]:
    """Backward by autograd through ``forward()`` (built from differentiable ops on the saved inputs),
    with a graph: used when a double backward is asked for (``create_graph=True``, e.g. gradient
    penalties), which the closed-form backward does not support."""
    with torch.enable_grad():
        y = forward()
    wanted = [t for t, needed in zip(inputs, needs_grad) if needed]
    grads = iter(torch.autograd.grad(y, wanted, dy, create_graph=True, allow_unused=True))
    return tuple(next(grads) if needed else None for needed in needs_grad)
