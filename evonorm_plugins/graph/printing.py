"""Readable formulas for genomes, e.g. ``x * sigmoid(v1 * x) / sqrt(var_group(x) + eps)``.

``sqrt(z)`` prints as ``sqrt(z + eps)`` (for z ≥ 0 it is exactly √(z+ε); see :mod:`.primitives` for
the sign-preserving definition); subexpressions built from ``zero`` alone print as their value.

A subexpression used more than once is written out at each use, so text can double with every node of
a graph that reuses its previous node (``add(n, n)``, again and again). One longer than
``SHARED_TEXT_LIMIT`` characters and used more than once is printed once, by name:
``n9 + n9 where n9 = ...``; formulas of search-space-sized genomes stay far below the limit.
"""
from collections import Counter
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import torch

from .primitives import INITIAL_NODES, NUM_INITIAL_NODES, PRIMITIVES, elementwise

if TYPE_CHECKING:
    from .genome import Genome

ATOM, POWER, UNARY, PRODUCT, SUM = 5, 4, 3, 2, 1
SHARED_TEXT_LIMIT = 1000
_FUNCTIONS = {"sigmoid", "tanh", "exp", "log", "abs"}


def _constant_values(genome: "Genome") -> Dict[int, float]:
    """Values of the nodes that depend on nothing but ``zero``."""
    values: Dict[int, float] = {1: 0.0}
    for index, node in enumerate(genome.nodes):
        if not all(i in values for i in node.inputs):
            continue
        primitive = PRIMITIVES[node.op]
        a = torch.tensor(values[node.inputs[0]], dtype=torch.float64)
        if primitive.is_aggregation:
            value = {"mean": a, "var": torch.zeros_like(a), "mean_sq": a * a}[primitive.statistic]
        else:
            b = torch.tensor(values[node.inputs[1]], dtype=torch.float64) if primitive.arity == 2 else a
            value = elementwise(primitive.code, a, b, 1e-5)
        values[NUM_INITIAL_NODES + index] = float(value)
    return values


def _format_number(value: float) -> Tuple[str, int]:
    text = f"{value:.6g}"
    return text, (UNARY if value < 0 else ATOM)


def format_expression(genome: "Genome", node_id: int) -> str:
    constants = _constant_values(genome)
    # Text and precedence of each node, filled in id order: inputs are earlier nodes, so an operand's
    # text is always ready and no recursion is needed, whatever the depth of the graph.
    rendered: Dict[int, Tuple[str, int]] = {}

    def negated(node_id: int) -> Optional[int]:
        if node_id >= NUM_INITIAL_NODES and node_id not in constants:
            node = genome.nodes[node_id - NUM_INITIAL_NODES]
            if node.op == "neg":
                return node.inputs[0]
        return None

    def wrap(node_id: int, min_precedence: int) -> str:
        text, precedence = rendered[node_id]
        return f"({text})" if precedence < min_precedence else text

    def render(node_id: int) -> Tuple[str, int]:
        if node_id in constants and node_id != 1:
            return _format_number(constants[node_id])
        if node_id < NUM_INITIAL_NODES:
            return ("0" if node_id == 1 else INITIAL_NODES[node_id], ATOM)
        return _render_op(node_id)

    def _render_op(node_id: int) -> Tuple[str, int]:
        node = genome.nodes[node_id - NUM_INITIAL_NODES]
        op, inputs = node.op, node.inputs
        if op == "add":
            a, b = inputs
            if negated(b) is not None:
                return f"{wrap(a, SUM)} - {wrap(negated(b), PRODUCT)}", SUM
            if negated(a) is not None:
                return f"{wrap(b, SUM)} - {wrap(negated(a), PRODUCT)}", SUM
            return f"{wrap(a, SUM)} + {wrap(b, SUM)}", SUM
        if op == "mul":
            return f"{wrap(inputs[0], PRODUCT)} * {wrap(inputs[1], PRODUCT)}", PRODUCT
        if op == "div":
            return f"{wrap(inputs[0], PRODUCT)} / {wrap(inputs[1], UNARY)}", PRODUCT
        if op == "neg":
            return f"-{wrap(inputs[0], UNARY)}", UNARY
        if op == "square":
            return f"{wrap(inputs[0], ATOM)}^2", POWER
        if op == "sqrt":
            return f"sqrt({wrap(inputs[0], SUM)} + eps)", ATOM
        if op == "max":
            return f"max({rendered[inputs[0]][0]}, {rendered[inputs[1]][0]})", ATOM
        # sigmoid, tanh, exp, log, abs and the aggregations print as calls
        return f"{op}({rendered[inputs[0]][0]})", ATOM

    used = sorted(genome.ancestors(node_id))
    uses = Counter(i for j in used if j >= NUM_INITIAL_NODES for i in genome.nodes[j - NUM_INITIAL_NODES].inputs)
    named: List[str] = []
    for i in used:
        rendered[i] = render(i)
        if uses[i] > 1 and len(rendered[i][0]) > SHARED_TEXT_LIMIT and i != node_id:
            named.append(f"n{i} = {rendered[i][0]}")
            rendered[i] = (f"n{i}", ATOM)
    return rendered[node_id][0] + (f" where {', '.join(named)}" if named else "")
