"""The layer benchmark's measurements (not its timings): saved-bytes accounting, ratios, table and CSV."""
import csv
import importlib.util

import pytest
import torch
from torch import nn

from support import ROOT

SPEC = importlib.util.spec_from_file_location("bench_layers", ROOT / "benchmarks" / "layers.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def test_saved_bytes_counts_each_storage_once():
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    input_bytes = x.numel() * 4
    assert bench.saved_tensor_bytes(nn.ReLU(), x) == input_bytes  # ReLU saves its output
    # x * x saves x twice: one storage.
    assert bench.saved_tensor_bytes(type("Square", (nn.Module,), {"forward": lambda self, t: t * t})(), x) == input_bytes
    bn_relu = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())
    # x and the output; weight, running mean and variance, batch mean and inverse std (8 floats each)
    assert bench.saved_tensor_bytes(bn_relu, x) == 2 * input_bytes + 5 * 8 * 4


def test_run_writes_table_and_csv(tmp_path, capsys):
    out = tmp_path / "layers.csv"
    rows = bench.main(["--shapes", "2x32x4x4", "--layers", "B0", "S0", "--repeats", "1", "--warmup", "0", "--csv", str(out)])
    printed = capsys.readouterr().out
    labels = [row["layer"] for row in rows]
    assert labels[:4] == ["BN+ReLU", "GN+ReLU", "EvoNormB0", "timm EvoNorm2dB0"] or labels[:3] == ["BN+ReLU", "GN+ReLU", "EvoNormB0"]
    by_label = {row["layer"]: row for row in rows}
    assert by_label["BN+ReLU"]["time_vs_bn_relu"] == pytest.approx(1.0)
    assert by_label["GN+ReLU"]["saved_vs_gn_relu"] == pytest.approx(1.0)
    s0 = by_label["EvoNormS0"]
    assert s0["saved_vs_bn_relu"] == pytest.approx(s0["saved_MiB"] / by_label["BN+ReLU"]["saved_MiB"])
    assert "| EvoNormS0 |" in printed
    with out.open() as f:
        written = list(csv.DictReader(f))
    assert [row["layer"] for row in written] == labels
    assert float(written[labels.index("EvoNormB0")]["saved_x_input"]) > 0


def test_bad_shape_is_rejected():
    with pytest.raises(SystemExit):
        bench.main(["--shapes", "16x128x32"])


def test_several_dtypes_in_one_run(tmp_path):
    rows = bench.main(["--shapes", "4x32x16x16", "--layers", "S0", "--dtype", "float32", "bfloat16", "--repeats", "1", "--warmup", "0", "--csv", str(tmp_path / "t.csv")])
    assert {row["dtype"] for row in rows} == {"float32", "bfloat16"}
    bf16_s0 = next(r for r in rows if r["dtype"] == "bfloat16" and r["layer"] == "EvoNormS0")
    assert bf16_s0["saved_x_input"] == pytest.approx(1.0, abs=0.05)  # only the bf16 input is kept


def test_presets_are_valid_shapes():
    for shapes in bench.PRESETS.values():
        assert all(len(bench.parse_shape(s)) == 4 for s in shapes)


def test_modes_channels_last_and_varying_sizes(tmp_path):
    """Rows in another kernel mode and on channels_last input, and the varying-sizes table with its
    graph counts (the eager kernels compile nothing)."""
    out = tmp_path / "layers.csv"
    rows = bench.main([
        "--shapes", "2x32x6x6", "--layers", "S0", "--modes", "reference", "--channels-last", "--varying",
        "--varying-sizes", "2x32x6x6", "2x32x5x7", "--repeats", "2", "--warmup", "0", "--csv", str(out),
    ])
    labels = {row["layer"] for row in rows if "shape" in row}
    assert {"EvoNormS0 reference", "EvoNormS0 channels_last", "BN+ReLU channels_last", "GN+ReLU channels_last"} <= labels
    by_label = {row["layer"]: row for row in rows if "shape" in row}
    assert by_label["EvoNormS0 reference"]["saved_x_input"] > 2  # the reference path keeps intermediates
    # channels_last keeps the same: the input itself (no contiguous copy) and the small statistics
    assert by_label["EvoNormS0 channels_last"]["saved_MiB"] == by_label["EvoNormS0"]["saved_MiB"]
    varying = [row for row in rows if "sizes" in row]
    assert {row["memory_format"] for row in varying} == {"contiguous", "channels_last"}
    assert [row["graphs_later_passes"] for row in varying] == [0] * len(varying)
    assert all(row["later_pass_ms"] > 0 for row in varying)
    with (tmp_path / "layers_varying.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(varying)
