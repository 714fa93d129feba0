"""Genomes: a normalization-activation layer as a DAG of primitive ops.

Node ids 0..3 are the initial nodes ``x`` (the input), ``zero`` (a constant 0), ``v0`` and ``v1``
(trainable per-channel vectors, initialized to 0 and 1). Node ``4 + i`` is ``nodes[i]``: one primitive
applied to one or two earlier nodes. ``output`` names the node the layer returns (before its affine
γ, β); the optional ``no_act_output`` names the node used when a host asks for a form without
activation (``apply_act=False``).

JSON form (``schema_version`` 1)::

    {"schema_version": 1, "name": "EvoNormS0",
     "nodes": [{"id": 4, "op": "mul", "inputs": [3, 0]}, ...],
     "output": 9, "no_act_output": 10}

``id`` is optional in files and must equal the node's position when given.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .primitives import INITIAL_NODES, NUM_INITIAL_NODES, PRIMITIVES

SCHEMA_VERSION = 1
X, ZERO, V0, V1 = range(NUM_INITIAL_NODES)
_OPTIONAL_KEYS = {"schema_version", "name", "description", "no_act_output"}
_REQUIRED_KEYS = {"nodes", "output"}
_NODE_KEYS = {"id", "op", "inputs"}


class GenomeError(ValueError):
    """A genome that is malformed: the message names the node (or key) and what is wrong."""


def _unknown_keys(unknown: Iterable[str], allowed: Iterable[str]) -> str:
    """``unknown key(s) ['inptus'] (did you mean 'inputs'?); allowed: [...]``."""
    unknown, allowed = sorted(unknown), sorted(allowed)
    close = [match for key in unknown for match in difflib.get_close_matches(key, allowed, n=1)]
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return f"unknown key(s) {unknown}{hint}; allowed: {allowed}"


@dataclass(frozen=True)
class Node:
    op: str
    inputs: Tuple[int, ...]


@dataclass(frozen=True)
class Genome:
    """An immutable, validated layer graph. Build one from nodes, a dict, JSON text or a file."""

    nodes: Tuple[Node, ...]
    output: int
    no_act_output: Optional[int] = None
    name: Optional[str] = None
    description: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(Node(n.op, tuple(n.inputs)) for n in self.nodes))
        self.validate()

    # ----------------------------------------------------------------------------------------- checks
    @property
    def num_nodes(self) -> int:
        """All nodes, the four initial ones included."""
        return NUM_INITIAL_NODES + len(self.nodes)

    def validate(self) -> None:
        """Raise :class:`GenomeError` naming the first bad node: unknown op, wrong arity, an input that
        does not exist or is not an earlier node (a cycle), or an output that does not depend on x."""
        where = f"genome {self.name!r}: " if self.name else ""
        for index, node in enumerate(self.nodes):
            node_id = NUM_INITIAL_NODES + index
            primitive = PRIMITIVES.get(node.op)
            if primitive is None:
                raise GenomeError(
                    f"{where}node {node_id} has unknown op {node.op!r}; known ops: {', '.join(PRIMITIVES)}"
                )
            if len(node.inputs) != primitive.arity:
                raise GenomeError(
                    f"{where}node {node_id} ({node.op}) takes {primitive.arity} input(s), got "
                    f"{len(node.inputs)}: {list(node.inputs)}"
                )
            for source in node.inputs:
                if not isinstance(source, int) or isinstance(source, bool):
                    raise GenomeError(f"{where}node {node_id} ({node.op}) has input {source!r}; inputs are node ids (ints)")
                if source < 0 or source >= self.num_nodes:
                    raise GenomeError(
                        f"{where}node {node_id} ({node.op}) reads node {source}, which does not exist "
                        f"(dangling input; ids run from 0 to {self.num_nodes - 1})"
                    )
                if source >= node_id:
                    raise GenomeError(
                        f"{where}node {node_id} ({node.op}) reads node {source}, which is not an earlier "
                        f"node (a cycle or forward reference); inputs must be < {node_id}"
                    )
        for key, value in (("output", self.output), ("no_act_output", self.no_act_output)):
            if value is None and key == "no_act_output":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.num_nodes:
                raise GenomeError(f"{where}{key} {value!r} is not a node id (0 to {self.num_nodes - 1})")
            if X not in self.ancestors(value):
                raise GenomeError(
                    f"{where}{key} node {value} ({self.describe(value)}) does not depend on x, so the layer "
                    f"would ignore its input; point {key} at a node computed from x (node 0)"
                )

    def describe(self, node_id: int) -> str:
        return INITIAL_NODES[node_id] if node_id < NUM_INITIAL_NODES else self.nodes[node_id - NUM_INITIAL_NODES].op

    def ancestors(self, node_id: int) -> set:
        """``node_id`` and every node it reads from, transitively."""
        seen = set()
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            if current >= NUM_INITIAL_NODES:
                stack.extend(self.nodes[current - NUM_INITIAL_NODES].inputs)
        return seen

    @property
    def batch_dependent(self) -> bool:
        """Whether the output uses batch statistics (B-series-like) or not (S-series-like)."""
        used = self.ancestors(self.output)
        return any(
            PRIMITIVES[self.nodes[i - NUM_INITIAL_NODES].op].axes == "batch" for i in used if i >= NUM_INITIAL_NODES
        )

    # -------------------------------------------------------------------------------------- JSON I/O
    def to_dict(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        if self.name is not None:
            data["name"] = self.name
        if self.description is not None:
            data["description"] = self.description
        data["nodes"] = [
            {"id": NUM_INITIAL_NODES + i, "op": n.op, "inputs": list(n.inputs)} for i, n in enumerate(self.nodes)
        ]
        data["output"] = self.output
        if self.no_act_output is not None:
            data["no_act_output"] = self.no_act_output
        return data

    def to_json(self, indent: Optional[int] = 2) -> str:
        """JSON text; with ``indent`` each node stays on one line so files read as a program."""
        data = self.to_dict()
        if indent is None:
            return json.dumps(data)
        pad = " " * indent
        lines = []
        for key, value in data.items():
            if key == "nodes":
                nodes = f",\n{pad * 2}".join(json.dumps(node) for node in value)
                lines.append(f'{pad}"nodes": [\n{pad * 2}{nodes}\n{pad}]')
            else:
                lines.append(f"{pad}{json.dumps(key)}: {json.dumps(value)}")
        return "{\n" + ",\n".join(lines) + "\n}"

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "genome") -> "Genome":
        if not isinstance(data, Mapping):
            raise GenomeError(f"{source}: a genome is a JSON object with 'nodes' and 'output', got {type(data).__name__}")
        missing = _REQUIRED_KEYS - set(data)
        if missing:
            raise GenomeError(f"{source}: missing key(s) {sorted(missing)}; a genome needs 'nodes' and 'output'")
        unknown = set(data) - _REQUIRED_KEYS - _OPTIONAL_KEYS
        if unknown:
            raise GenomeError(f"{source}: {_unknown_keys(unknown, _REQUIRED_KEYS | _OPTIONAL_KEYS)}")
        version = data.get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise GenomeError(
                f"{source}: schema_version {version!r} is not supported; this evonorm-plugins reads version "
                f"{SCHEMA_VERSION} (a newer file needs a newer evonorm-plugins)"
            )
        if not isinstance(data["nodes"], list):
            raise GenomeError(f"{source}: 'nodes' must be a list of {{'op': ..., 'inputs': [...]}} objects")
        nodes = []
        for index, item in enumerate(data["nodes"]):
            node_id = NUM_INITIAL_NODES + index
            if isinstance(item, Mapping) and set(item) - _NODE_KEYS:
                raise GenomeError(f"{source}: node {node_id} has {_unknown_keys(set(item) - _NODE_KEYS, _NODE_KEYS)}")
            if not isinstance(item, Mapping) or "op" not in item or "inputs" not in item:
                raise GenomeError(f"{source}: node {node_id} must be an object with 'op' and 'inputs', got {item!r}")
            if not isinstance(item["op"], str):
                raise GenomeError(f"{source}: node {node_id} 'op' must be an op name (a string), got {item['op']!r}")
            if "id" in item and item["id"] != node_id:
                raise GenomeError(
                    f"{source}: node at position {index} has id {item['id']!r} but its id is {node_id} "
                    f"(ids are 4, 5, ... in list order)"
                )
            if not isinstance(item["inputs"], list):
                raise GenomeError(f"{source}: node {node_id} 'inputs' must be a list of node ids, got {item['inputs']!r}")
            nodes.append(Node(item["op"], tuple(item["inputs"])))
        for key in ("name", "description"):
            if not isinstance(data.get(key, ""), str):
                raise GenomeError(f"{source}: {key!r} must be a string, got {data[key]!r}")
        name = data.get("name")
        try:
            return cls(tuple(nodes), data["output"], data.get("no_act_output"), name, data.get("description"))
        except GenomeError as error:
            raise GenomeError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "genome JSON") -> "Genome":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            # Some of json's messages end in "at" ("Unterminated string starting at"): the position completes them.
            problem = error.msg.removesuffix(" at")
            raise GenomeError(f"{source} is not valid JSON: {problem} at line {error.lineno} column {error.colno}") from None
        except ValueError as error:  # e.g. an integer with more digits than Python converts (sys.set_int_max_str_digits)
            raise GenomeError(f"{source} is not readable JSON: {str(error).split(';')[0]}") from None
        except RecursionError:  # json's parser recurses once per nesting level
            raise GenomeError(f"{source} is nested too deeply to be a genome (nodes are a flat list of objects)") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Genome":
        """Read a genome JSON file (UTF-8, a byte-order mark allowed)."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"genome path {str(path)!r} is a folder; give the path to a .json genome file "
                f"(load_genomes() registers every *.json in a folder)"
            )
        if not path.is_file():
            raise FileNotFoundError(f"genome file {str(path)!r} does not exist; give the path to a .json genome")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise GenomeError(
                f"{path} is not UTF-8 text (byte {error.start} is {error.object[error.start]:#04x}); a genome is a JSON file"
            ) from None
        return cls.from_json(text, source=str(path))

    # ------------------------------------------------------------------------- canonical form, hash
    def _digests(self) -> List[str]:
        """A structural digest per node: equal digests ⇔ equal expressions up to commutative order."""
        digests = list(INITIAL_NODES)
        for node in self.nodes:
            children = [digests[i] for i in node.inputs]
            if PRIMITIVES[node.op].commutative:
                children.sort()
            digests.append(hashlib.sha256(f"{node.op}({','.join(children)})".encode()).hexdigest())
        return digests

    def _depths(self) -> List[int]:
        """Longest path from an initial node to each node."""
        depths = [0] * NUM_INITIAL_NODES
        for node in self.nodes:
            depths.append(1 + max(depths[i] for i in node.inputs))
        return depths

    def canonical(self) -> "Genome":
        """The same layer with unused nodes pruned, duplicate subexpressions merged, commutative
        operands ordered (shallower first, then by digest, so formulas read ``x * sigmoid(v1 * x)``)
        and nodes numbered in a fixed post-order: equal expressions give equal genomes."""
        digests = self._digests()
        depths = self._depths()
        new_id: Dict[str, int] = {d: i for i, d in enumerate(INITIAL_NODES)}
        nodes: List[Node] = []

        def operands(node: Node) -> List[int]:
            order = list(node.inputs)
            if PRIMITIVES[node.op].commutative:
                order.sort(key=lambda i: (depths[i], digests[i]))
            return order

        def emit(root: int) -> int:
            # Depth-first post-order with an explicit stack (genomes may be deeper than Python's
            # recursion limit): a node is numbered after its operands, operands in canonical order.
            stack = [(root, False)]
            while stack:
                node_id, operands_done = stack.pop()
                if digests[node_id] in new_id:
                    continue
                node = self.nodes[node_id - NUM_INITIAL_NODES]
                if operands_done:
                    nodes.append(Node(node.op, tuple(new_id[digests[i]] for i in operands(node))))
                    new_id[digests[node_id]] = NUM_INITIAL_NODES + len(nodes) - 1
                else:
                    stack.append((node_id, True))
                    stack.extend((i, False) for i in reversed(operands(node)))
            return new_id[digests[root]]

        output = emit(self.output)
        no_act = emit(self.no_act_output) if self.no_act_output is not None else None
        return Genome(tuple(nodes), output, no_act, self.name, self.description)

    def hash(self) -> str:
        """16 hex digits identifying the expression the layer computes (its ``output``)."""
        return self._digests()[self.output][:16]

    # --------------------------------------------------------------------------------- formula text
    def formula(self, node_id: Optional[int] = None) -> str:
        """A readable expression, e.g. ``x * sigmoid(v1 * x) / sqrt(var_group(x) + eps)``.

        Subexpressions that depend on no input (built from ``zero``) print as their value.
        """
        from .printing import format_expression

        return format_expression(self, self.output if node_id is None else node_id)

    def __str__(self) -> str:
        return self.formula()


def genome_from_ops(ops: Sequence[Tuple[str, Iterable[int]]], output: int = -1, **kwargs: Any) -> Genome:
    """Convenience builder: ``genome_from_ops([("var_group", [0]), ("sqrt", [4]), ("div", [0, 5])])``.

    ``output=-1`` (the default) means the last node.
    """
    nodes = tuple(Node(op, tuple(inputs)) for op, inputs in ops)
    return Genome(nodes, NUM_INITIAL_NODES + len(nodes) - 1 if output == -1 else output, **kwargs)
