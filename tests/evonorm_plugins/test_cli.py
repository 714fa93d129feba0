"""`evonorm-plugins show|list` and the graph pictures."""
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from evonorm_plugins.cli import main
from evonorm_plugins.graph import genome_from_ops
from evonorm_plugins.graph.render import layout, to_dot, write_picture
from evonorm_plugins.registry import UnknownLayerError, paper_genome


def test_show_registered_name_prints_formula_and_writes_svg(tmp_path, capsys):
    out = tmp_path / "s0.svg"
    assert main(["show", "EvoNormS0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "formula:         x * sigmoid(v1 * x) / sqrt(var_group(x) + eps)" in printed
    assert "without act:     x / sqrt(var_group(x) + eps)" in printed
    assert "batch-dependent: no" in printed
    svg = ET.parse(out).getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    for label in ["x", "v1", "var_group", "sqrt", "sigmoid", "÷  (div)", "×  (mul)"]:
        assert label in texts
    assert any("EvoNormS0" in t for t in texts)
    boxes = [r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if r.get("rx")]
    assert len(boxes) == 9  # x, v1 and the 7 nodes the two outputs use


def test_show_genome_file_default_output_name(tmp_path, capsys, monkeypatch):
    genome = genome_from_ops([("mean_sq_instance", [0]), ("sqrt", [4]), ("tanh", [0]), ("div", [6, 5])], name="Evolved7")
    genome.save(tmp_path / "evolved.json")
    monkeypatch.chdir(tmp_path)
    assert main(["show", str(tmp_path / "evolved.json")]) == 0
    assert "tanh(x) / sqrt(mean_sq_instance(x) + eps)" in capsys.readouterr().out
    assert (tmp_path / "Evolved7.svg").is_file()


def test_list(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert "EvoNormB2        x / max(sqrt(var_batch(x) + eps), sqrt(mean_sq_instance(x) + eps) - x)" in printed
    assert "BatchNormReLU" in printed


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["show", "EvoNormSO"]) == 2
    assert "unknown layer 'EvoNormSO'" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["show", "EvoNormS0", "-o", str(tmp_path / "x.gif")]) == 2
    err = capsys.readouterr().err
    assert "use a .svg, .png or .dot file name" in err and err.count("\n") == 1 and "--debug" in err
    with pytest.raises(UnknownLayerError):  # --debug (or EVONORM_DEBUG=1) keeps the traceback
        main(["show", "EvoNormSO", "--debug"])


def test_dot_and_png(tmp_path):
    genome = paper_genome("EvoNormB0")
    dot = to_dot(genome)
    assert dot.startswith('digraph "EvoNormB0') and dot.count("->") == len(layout(genome).edges) == 14
    assert '[label="den"]' in dot
    pytest.importorskip("matplotlib")
    png = write_picture(genome, tmp_path / "b0.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_console_script_module_entry():
    done = subprocess.run([sys.executable, "-m", "evonorm_plugins", "list"], capture_output=True, text=True, check=True)
    assert "EvoNormS0" in done.stdout


def test_layout_rows_follow_depth():
    d = layout(paper_genome("EvoNormS1"))
    ys = {node: y for node, (_, y) in d.centre.items()}
    assert ys[0] < ys[4]  # x above sigmoid(x)
    assert max(ys.values()) == ys[d.output]
