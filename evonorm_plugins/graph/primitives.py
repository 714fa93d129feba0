"""The primitive ops of the layer search space and their numerically safe definitions.

Every genome node applies one of these to one or two earlier nodes. The definitions are stated here
once and used by every evaluator, so that a random graph cannot raise or produce NaN from a domain
error by construction (ε is the layer's ``eps``; ``sgn(z)`` is +1 for z ≥ 0 and −1 otherwise):

=============  ======================================================================
``div(a, b)``  a / b', where b' = sgn(b)·max(|b|, ε): the divisor is kept away from 0
``sqrt(z)``    sgn(z)·√(|z| + ε); for z ≥ 0 this is the paper's √(z + ε)
``log(z)``     sgn(z)·log(|z| + ε)
``exp(z)``     exp(min(z, 80)), so float32 cannot overflow
=============  ======================================================================

``add, mul, max, neg, sigmoid, tanh, abs, square`` are the usual functions. The aggregations take a
statistic — ``mean``, ``var`` (biased variance) or ``mean_sq`` (second moment μ(z²)) — over one of
three index sets and broadcast it back to the input's shape:

* ``batch``: (N, H, W) per channel — the only batch-dependent set;
* ``instance``: (H, W) per sample and channel;
* ``group``: (C/g, H, W) per sample and group of channels.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

# Inputs of every genome, in this order: node ids 0..3.
INITIAL_NODES: Tuple[str, ...] = ("x", "zero", "v0", "v1")
NUM_INITIAL_NODES = len(INITIAL_NODES)

AXES = ("batch", "instance", "group")
STATISTICS = ("mean", "var", "mean_sq")


@dataclass(frozen=True)
class Primitive:
    """One op: its name in genome files, how many inputs it takes, and how it prints."""

    name: str
    code: int
    arity: int
    commutative: bool = False
    statistic: Optional[str] = None  # aggregations only
    axes: Optional[str] = None  # aggregations only

    @property
    def is_aggregation(self) -> bool:
        return self.statistic is not None


_ELEMENTWISE = [
    ("add", 2, True), ("mul", 2, True), ("div", 2, False), ("max", 2, True),
    ("neg", 1, False), ("sigmoid", 1, False), ("tanh", 1, False), ("exp", 1, False),
    ("log", 1, False), ("abs", 1, False), ("square", 1, False), ("sqrt", 1, False),
]


def _build_table() -> Dict[str, Primitive]:
    table: Dict[str, Primitive] = {}
    for name, arity, commutative in _ELEMENTWISE:
        table[name] = Primitive(name, len(table), arity, commutative)
    for statistic in STATISTICS:
        for axes in AXES:
            name = f"{statistic}_{axes}"
            table[name] = Primitive(name, len(table), 1, statistic=statistic, axes=axes)
    return table


PRIMITIVES: Dict[str, Primitive] = _build_table()
PRIMITIVES_BY_CODE: Tuple[Primitive, ...] = tuple(PRIMITIVES.values())
ELEMENTWISE_OPS: Tuple[str, ...] = tuple(name for name, p in PRIMITIVES.items() if not p.is_aggregation)
AGGREGATION_OPS: Tuple[str, ...] = tuple(name for name, p in PRIMITIVES.items() if p.is_aggregation)

# Aggregations follow the 12 element-wise ops in the table; the evaluator below dispatches on the
# codes as literals because TorchScript cannot read module-level constants.
FIRST_AGGREGATION = 12
assert ELEMENTWISE_OPS == tuple(name for name, _, _ in _ELEMENTWISE) and len(ELEMENTWISE_OPS) == FIRST_AGGREGATION


def _sign(z: Tensor) -> Tensor:
    """+1 where z >= 0, -1 elsewhere (unlike torch.sign, never 0)."""
    return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def elementwise(code: int, a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Apply element-wise op ``code`` (its index in the table: add 0 … sqrt 11); unary ops ignore ``b``."""
    if code == 0:  # add
        return a + b
    if code == 1:  # mul
        return a * b
    if code == 2:  # div
        return a / (_sign(b) * torch.clamp(torch.abs(b), min=eps))
    if code == 3:  # max
        return torch.maximum(a, b)
    if code == 4:  # neg
        return -a
    if code == 5:  # sigmoid
        return torch.sigmoid(a)
    if code == 6:  # tanh
        return torch.tanh(a)
    if code == 7:  # exp
        return torch.exp(torch.clamp(a, max=80.0))
    if code == 8:  # log
        return _sign(a) * torch.log(torch.abs(a) + eps)
    if code == 9:  # abs
        return torch.abs(a)
    if code == 10:  # square
        return a * a
    if code == 11:  # sqrt
        return _sign(a) * torch.sqrt(torch.abs(a) + eps)
    raise ValueError(f"op code {code} is not an element-wise op")


def statistic(t: Tensor, stat: int, dims: List[int]) -> Tensor:
    """mean (0), biased variance (1) or second moment (2) of ``t`` over ``dims``, kept as size-1 dims.

    The index is the statistic's position in STATISTICS; aggregation op codes are
    ``FIRST_AGGREGATION + 3·statistic + axes`` (axes: batch 0, instance 1, group 2).
    """
    if stat == 0:
        return torch.mean(t, dim=dims, keepdim=True)
    if stat == 1:
        return torch.var(t, dim=dims, unbiased=False, keepdim=True)
    return torch.mean(t * t, dim=dims, keepdim=True)
