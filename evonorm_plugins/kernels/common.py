"""Helpers shared by the lean kernels, which work on a 4-D view (N, G, C/G, L) of the input
(G = 1 for the B-series, whose statistics are per channel)."""
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar

import torch
from torch import Tensor


MODES = ("eager", "compiled", "reference")
_mode = "eager"
_compiled: Dict[Callable, Callable] = {}
F = TypeVar("F", bound=Callable)


def set_kernel_mode(mode: str) -> None:
    """How the six EvoNorm layers run in eager PyTorch:

    * ``"eager"`` (default): the lean kernels, op by op;
    * ``"compiled"``: the lean kernels' forward and backward through ``torch.compile`` (Inductor fuses
      each into a few loops: C++ on CPU, which needs a C++ compiler, Triton on GPU); the first call per
      shape, dtype and configuration compiles, which takes seconds;
    * ``"reference"``: the reference implementation in plain autograd ops (about 4× the memory).

    TorchScript, tracing, ``torch.compile`` of a whole model and ONNX export always use the reference
    implementation, which the compilers fuse themselves.
    """
    global _mode
    if mode not in MODES:
        raise ValueError(f"unknown kernel mode {mode!r}; choose one of {', '.join(MODES)}")
    _mode = mode


def kernel_mode() -> str:
    return _mode


def kernel(fn: F, mode: Optional[str] = None) -> F:
    """``fn`` itself, or its ``torch.compile``d version in the ``"compiled"`` mode (built once).

    ``mode`` defaults to the current one; a backward passes the mode its forward ran in.
    """
    if (mode or _mode) != "compiled":
        return fn
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn)
    return _compiled[fn]  # type: ignore[return-value]


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


def group_moments(x4: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and biased variance over axes 2 and 3 of (N, G, C/G, L), each (N, G, 1, 1).

    native_group_norm's moments kernel reads x once and is numerically careful (torch.var is several
    times slower on CPU); its normalized output is discarded. The tiny ε keeps its inverse std finite
    for constant groups, so the variance read back from it is exact to rounding.
    """
    n, g, cg, length = x4.shape
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
    out = torch.empty(x.shape, dtype=a.dtype, device=a.device)
    torch.addcmul(shift, a, scale, out=out.view(a.shape))
    return out.to(x.dtype)


def channel_sums(t: Tensor, keep_batch: bool) -> Tensor:
    """Σ over the spatial axis (and the batch unless ``keep_batch``), keeping 4-D shape."""
    return t.sum(dim=3, keepdim=True) if keep_batch else t.sum(dim=(0, 3), keepdim=True)


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
