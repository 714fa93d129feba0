"""Draw docs/architecture/modules.svg: the import graph of the three packages, from the code.

grimp (the graph library behind import-linter, which the tests use to keep these arrows pointing one
way) reads the imports; Graphviz's ``dot`` lays them out. Each box is a module or sub-package at the
second level (``evonorm_plugins.layers``, ``evonorm_search.execution``, ...); an arrow A → B means A
imports B. Re-run after moving code:  python docs/architecture/make_graph.py
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import grimp

PACKAGES = ("evonorm_plugins", "evonorm_search", "evonorm_biggan")
COLOURS = {"evonorm_plugins": "#dbe9f6", "evonorm_search": "#e3f1dc", "evonorm_biggan": "#f8e5d0"}
PLUGINS = {"timm", "mmcv", "mmdet", "detectron2", "cli", "__main__"}
HERE = Path(__file__).resolve().parent


def node(module: str) -> str:
    """The box a module belongs to: its first two name parts."""
    return ".".join(module.split(".")[:2])


def main() -> None:
    graph = grimp.build_graph(*PACKAGES)
    edges = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = node(importer), node(imported)
            if a != b and b.split(".")[0] in PACKAGES and "." in a and "." in b:  # package __init__s re-export only
                edges.add((a, b))
    boxes = sorted({m for edge in edges for m in edge})
    lines = ["digraph architecture {", '  rankdir=BT; node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];',
             '  edge [color="#555555", arrowsize=0.6];']
    for package in PACKAGES:
        lines.append(f'  subgraph "cluster_{package}" {{ label="{package}"; fontname="Helvetica-Bold"; color="#999999";')
        members = [b for b in boxes if b.split(".")[0] == package]
        if package == "evonorm_plugins":  # the plugins sit in a row of their own above the torch-only library
            plugins = [b for b in members if b.split(".")[1] in PLUGINS]
            lines.append('    subgraph "cluster_plugins" { label="plugins and CLI"; style=dashed; '
                         + " ".join(f'"{b}" [label="{b.split(".")[1]}", fillcolor="{COLOURS[package]}"];' for b in plugins) + " }")
            members = [b for b in members if b not in plugins]
        for box in members:
            lines.append(f'    "{box}" [label="{box.split(".")[1]}", fillcolor="{COLOURS[package]}"];')
        lines.append("  }")
    lines += [f'  "{a}" -> "{b}";' for a, b in sorted(edges)]
    lines.append("}")
    dot_source = "\n".join(lines) + "\n"
    subprocess.run(["dot", "-Tsvg", "-o", str(HERE / "modules.svg")], input=dot_source, text=True, check=True)
    subprocess.run(["dot", "-Tpng", "-Gdpi=80", "-o", str(HERE / "modules.png")], input=dot_source, text=True, check=True)
    print(f"wrote {HERE / 'modules.svg'} and modules.png ({len(boxes)} boxes, {len(edges)} arrows)")


if __name__ == "__main__":
    main()
