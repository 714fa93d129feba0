"""Pictures of genomes: SVG (no dependency), PNG (matplotlib) and Graphviz DOT text.

Nodes are laid out in rows by depth (the longest path from an initial node), inputs at the top and
the output at the bottom; the output is drawn bold, the non-activating output dashed. Division edges
are labelled ``num`` and ``den`` because the order of its operands matters.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union
from xml.sax.saxutils import escape

from .genome import Genome
from .primitives import INITIAL_NODES, NUM_INITIAL_NODES, PRIMITIVES

_FILL_INPUT, _FILL_AGGREGATION, _FILL_OP = "#e8f0fe", "#fde9d9", "#f3f3f3"
_SYMBOLS = {"add": "+", "mul": "×", "div": "÷", "neg": "−·", "square": "·²"}
BOX_W, BOX_H, GAP_X, GAP_Y, MARGIN, TITLE_H = 132, 34, 28, 46, 24, 66
LEGEND = "bold: output · dashed: output without activation (apply_act=False)"


@dataclass(frozen=True)
class Drawing:
    """Positions (box centres) and edges of the nodes a genome's outputs use."""

    label: Dict[int, str]
    fill: Dict[int, str]  # by kind: input, aggregation, element-wise op
    centre: Dict[int, Tuple[float, float]]
    edges: List[Tuple[int, int, str]]  # (source, target, edge label)
    width: float
    height: float
    title: str
    subtitle: str
    output: int
    no_act_output: Optional[int]


def node_label(genome: Genome, node_id: int) -> str:
    if node_id < NUM_INITIAL_NODES:
        return "0" if node_id == 1 else INITIAL_NODES[node_id]
    op = genome.nodes[node_id - NUM_INITIAL_NODES].op
    return f"{_SYMBOLS[op]}  ({op})" if op in _SYMBOLS else op


def _fill(genome: Genome, node_id: int) -> str:
    if node_id < NUM_INITIAL_NODES:
        return _FILL_INPUT
    return _FILL_AGGREGATION if PRIMITIVES[genome.nodes[node_id - NUM_INITIAL_NODES].op].is_aggregation else _FILL_OP


def layout(genome: Genome) -> Drawing:
    used = genome.ancestors(genome.output)
    if genome.no_act_output is not None:
        used |= genome.ancestors(genome.no_act_output)
    depth: Dict[int, int] = {}
    for node_id in sorted(used):
        inputs = genome.nodes[node_id - NUM_INITIAL_NODES].inputs if node_id >= NUM_INITIAL_NODES else ()
        depth[node_id] = 1 + max(depth[i] for i in inputs) if inputs else 0
    rows: Dict[int, List[int]] = {}
    for node_id in sorted(used):
        rows.setdefault(depth[node_id], []).append(node_id)
    widest = max(len(r) for r in rows.values())
    width = 2 * MARGIN + max(widest * BOX_W + (widest - 1) * GAP_X, 560)
    height = TITLE_H + 2 * MARGIN + len(rows) * BOX_H + (len(rows) - 1) * GAP_Y
    centre: Dict[int, Tuple[float, float]] = {}
    for level in sorted(rows):
        members = rows[level]
        if level > 0:  # barycentre ordering: each node under the mean position of its inputs
            members.sort(key=lambda i: sum(centre[j][0] for j in genome.nodes[i - NUM_INITIAL_NODES].inputs)
                         / len(genome.nodes[i - NUM_INITIAL_NODES].inputs))
        row_width = len(members) * BOX_W + (len(members) - 1) * GAP_X
        left = (width - row_width) / 2
        for k, node_id in enumerate(members):
            centre[node_id] = (left + k * (BOX_W + GAP_X) + BOX_W / 2, TITLE_H + MARGIN + level * (BOX_H + GAP_Y) + BOX_H / 2)
    edges = []
    for node_id in sorted(used):
        if node_id < NUM_INITIAL_NODES:
            continue
        node = genome.nodes[node_id - NUM_INITIAL_NODES]
        for position, source in enumerate(node.inputs):
            edges.append((source, node_id, ("num", "den")[position] if node.op == "div" else ""))
    title = genome.name or "genome"
    return Drawing(
        {i: node_label(genome, i) for i in used}, {i: _fill(genome, i) for i in used}, centre, edges, width, height,
        f"{title}  [{genome.hash()}]", genome.formula(), genome.output, genome.no_act_output,
    )


def to_svg(genome: Genome) -> str:
    d = layout(genome)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{d.width:.0f}" height="{d.height:.0f}" '
        f'viewBox="0 0 {d.width:.0f} {d.height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN}" y="22" font-size="15" font-weight="bold">{escape(d.title)}</text>',
        f'<text x="{MARGIN}" y="42" font-size="12" fill="#333">{escape(d.subtitle)}</text>',
        f'<text x="{MARGIN}" y="60" font-size="10" fill="#777">{escape(LEGEND)}</text>',
    ]
    for source, target, label in d.edges:
        (x1, y1), (x2, y2) = d.centre[source], d.centre[target]
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1 + BOX_H / 2:.1f}" x2="{x2:.1f}" y2="{y2 - BOX_H / 2:.1f}" '
            f'stroke="#555" stroke-width="1.3" marker-end="url(#arrow)"/>'
        )
        if label:
            mx, my = x1 + 0.7 * (x2 - x1), (y1 + BOX_H / 2) + 0.7 * ((y2 - BOX_H / 2) - (y1 + BOX_H / 2))
            parts.append(f'<text x="{mx + 4:.1f}" y="{my:.1f}" font-size="10" fill="#a33">{label}</text>')
    for node_id, (cx, cy) in d.centre.items():
        fill = d.fill[node_id]
        stroke_width = 3 if node_id == d.output else 1.2
        dash = ' stroke-dasharray="5,3"' if node_id == d.no_act_output else ""
        parts.append(
            f'<rect x="{cx - BOX_W / 2:.1f}" y="{cy - BOX_H / 2:.1f}" width="{BOX_W}" height="{BOX_H}" rx="7" '
            f'fill="{fill}" stroke="#222" stroke-width="{stroke_width}"{dash}/>'
        )
        parts.append(
            f'<text x="{cx:.1f}" y="{cy + 4:.1f}" font-size="12" text-anchor="middle">{escape(d.label[node_id])}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def to_dot(genome: Genome) -> str:
    d = layout(genome)
    lines = [f'digraph "{d.title}" {{', "  rankdir=TB;", '  node [shape=box, style="rounded,filled"];']
    lines.append(f'  labelloc=t; label="{d.subtitle}";')
    for node_id, label in d.label.items():
        extra = ", penwidth=3" if node_id == d.output else (", style=\"rounded,dashed\"" if node_id == d.no_act_output else "")
        lines.append(f'  n{node_id} [label="{label}", fillcolor="{d.fill[node_id]}"{extra}];')
    for source, target, label in d.edges:
        lines.append(f'  n{source} -> n{target}' + (f' [label="{label}"];' if label else ";"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_png(genome: Genome, path: Union[str, Path]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyBboxPatch
    except ImportError:
        raise ImportError("writing PNG needs matplotlib (pip install matplotlib); or write .svg, which needs nothing") from None
    d = layout(genome)
    dpi = 100
    fig = plt.figure(figsize=(d.width / dpi, d.height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, d.width)
    ax.set_ylim(d.height, 0)
    ax.axis("off")
    ax.text(MARGIN, 22, d.title, fontsize=11, fontweight="bold", va="baseline")
    ax.text(MARGIN, 42, d.subtitle, fontsize=8.5, va="baseline")
    ax.text(MARGIN, 60, LEGEND, fontsize=7, color="#777", va="baseline")
    for source, target, label in d.edges:
        (x1, y1), (x2, y2) = d.centre[source], d.centre[target]
        ax.annotate("", xy=(x2, y2 - BOX_H / 2), xytext=(x1, y1 + BOX_H / 2),
                    arrowprops=dict(arrowstyle="-|>", color="#555", lw=1.1))
        if label:
            ax.text(x1 + 0.7 * (x2 - x1) + 4, y1 + BOX_H / 2 + 0.7 * (y2 - y1 - BOX_H), label, fontsize=7, color="#a33")
    for node_id, (cx, cy) in d.centre.items():
        box = FancyBboxPatch((cx - BOX_W / 2, cy - BOX_H / 2), BOX_W, BOX_H, boxstyle="round,pad=0,rounding_size=7",
                             facecolor=d.fill[node_id], edgecolor="#222", lw=3 if node_id == d.output else 1.0,
                             linestyle="--" if node_id == d.no_act_output else "-")
        ax.add_patch(box)
        ax.text(cx, cy, d.label[node_id], ha="center", va="center", fontsize=8.5)
    fig.savefig(str(path), dpi=dpi)
    plt.close(fig)


def write_picture(genome: Genome, path: Union[str, Path]) -> Path:
    """Write ``path`` as SVG, PNG or DOT according to its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".svg":
        path.write_text(to_svg(genome))
    elif suffix == ".dot":
        path.write_text(to_dot(genome))
    elif suffix == ".png":
        to_png(genome, path)
    else:
        raise ValueError(f"cannot write a picture as {path.name!r}: use a .svg, .png or .dot file name")
    return path
