"""The kernel benchmark's bookkeeping (not its timings): rows per shape, layer, operator and format,
the channels_last ÷ contiguous ratio, the threads-apart mode and its input checks."""
import importlib.util

import pytest
import torch

from support import ROOT

SPEC = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


pytestmark = pytest.mark.usefixtures("native_kernels")


def test_rows_pair_each_operator_across_formats(capsys):
    rows = bench.main(["--shapes", "4x32x4x4", "--layers", "S0", "B1", "--rounds", "3"])
    keys = {(r["layer"], r["op"], r["format"]) for r in rows}
    assert keys == {(layer, op, fmt) for layer in ("S0", "B1") for op in ("forward", "backward")
                    for fmt in ("contiguous", "channels_last")}
    by_key = {(r["layer"], r["op"], r["format"]): r for r in rows}
    for layer, op, fmt in keys:
        row = by_key[(layer, op, fmt)]
        assert 0 < row["p25_ms"] <= row["median_ms"]
        expected = row["median_ms"] / by_key[(layer, op, "contiguous")]["median_ms"]
        assert row["vs_contiguous"] == pytest.approx(expected)
    assert "| 4x32x4x4 | S0 | backward | channels_last |" in capsys.readouterr().out


def test_apart_gives_each_thread_its_share():
    threads = torch.get_num_threads()
    rows = bench.main(["--shapes", "4x32x4x4", "--layers", "S2", "--rounds", "2", "--apart", "2"])
    assert torch.get_num_threads() == threads  # restored
    assert {r["thread"] for r in rows} == {0, 1}
    assert {r["shape"] for r in rows} == {"2x32x4x4"}
    assert len(rows) == 2 * 2 * 2  # threads × formats × operators


@pytest.mark.parametrize("argv,message", [
    (["--shapes", "4x30x4x4"], None),  # C not a multiple of the groups: argparse's error
    (["--shapes", "3x32x4x4", "--apart", "2", "--rounds", "1"], "not a multiple"),
    (["--rounds", "0"], "at least 1"),
    (["--apart", "2", "--against", "."], "drop --against"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    text = str(exit_info.value.code) + capsys.readouterr().err
    assert (message or "multiple of 32") in text


def test_other_sources_register_under_their_own_namespace():
    source = (ROOT / "evonorm_plugins" / "kernels" / "csrc" / "batch_cpu.cpp").read_text()
    text = bench.renamed(source, "evonorm_ab_x")
    assert "TORCH_LIBRARY_FRAGMENT(evonorm_ab_x, m)" in text and "TORCH_LIBRARY_IMPL(evonorm_ab_x, CPU, m)" in text
    assert "(evonorm_cpu," not in text
    assert "namespace evonorm_cpu" in bench.renamed("using namespace evonorm_cpu;", "evonorm_ab_x")  # C++ names stay


def test_against_a_folder_without_the_sources_is_one_line(tmp_path):
    (tmp_path / "sample_cpu.cpp").write_text("")
    with pytest.raises(SystemExit, match="no batch_cpu.cpp, cpu_common.h there"):
        bench.main(["--shapes", "2x32x2x2", "--rounds", "1", "--against", str(tmp_path)])


def copy_sources(folder):
    for name in ("sample_cpu.cpp", "batch_cpu.cpp", "cpu_common.h"):
        (folder / name).write_text((ROOT / "evonorm_plugins" / "kernels" / "csrc" / name).read_text())


@pytest.mark.slow
def test_against_sources_that_do_not_build_is_one_line(tmp_path):
    copy_sources(tmp_path)
    (tmp_path / "batch_cpu.cpp").write_text("this is not C++;\n")
    with pytest.raises(SystemExit, match="the sources did not build: .*error:"):
        bench.main(["--shapes", "2x32x2x2", "--rounds", "1", "--against", str(tmp_path)])


@pytest.mark.slow
def test_against_times_both_builds_in_one_run(tmp_path):
    """Builds this tree's sources again under another namespace (about a minute): same numbers."""
    copy_sources(tmp_path)
    rows = bench.main(["--shapes", "2x32x4x4", "--layers", "S0", "B0", "--rounds", "2", "--against", str(tmp_path)])
    assert {r["kernels"] for r in rows} == {"this tree", tmp_path.name}
    assert len(rows) == 2 * 2 * 2 * 2  # builds × layers × operators × formats
