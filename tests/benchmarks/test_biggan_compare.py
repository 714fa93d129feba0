"""The BigGAN comparison script's bookkeeping (losses over resumed runs, smoothing) and, slow, a tiny run."""
import importlib.util
import pickle

import numpy as np
import pytest

from support import ROOT

pytest.importorskip("pytorch_lightning")
SPEC = importlib.util.spec_from_file_location("biggan_compare", ROOT / "benchmarks" / "biggan_compare.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)


def _write_metrics(folder, rows):
    folder.mkdir(parents=True)
    keys = ["g_steps", "loss/d_fake", "loss/d_real", "loss/g", "step"]
    lines = [",".join(keys)] + [",".join(str(row.get(k, "")) for k in keys) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_losses_are_read_by_g_step_over_resumed_versions(tmp_path):
    row = lambda s, v: {"g_steps": float(s), "loss/d_fake": v, "loss/d_real": v, "loss/g": -v, "step": 3 * s}  # noqa: E731
    _write_metrics(tmp_path / "csv" / "version_0", [row(5, 1.0), row(10, 2.0), {"step": 33}])  # a row without losses
    _write_metrics(tmp_path / "csv" / "version_10", [row(10, 3.0), row(15, 4.0)])  # resumed: numeric order, later wins
    _write_metrics(tmp_path / "csv" / "version_2", [row(12, 5.0)])
    losses = bench.read_losses(tmp_path)
    assert losses["g_steps"] == [5.0, 10.0, 12.0, 15.0]
    assert losses["loss/d_real"] == [1.0, 3.0, 5.0, 4.0] and losses["loss/g"] == [-1.0, -3.0, -5.0, -4.0]


def test_smoothing_is_a_trailing_mean():
    assert bench.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


@pytest.mark.slow
def test_a_tiny_comparison_writes_the_figures_and_summary(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batch = {"labels": [i % 10 for i in range(32)], "data": np.random.randint(0, 256, (32, 3072), dtype=np.uint8)}
    (root / "data_batch_1").write_bytes(pickle.dumps(batch))
    out = tmp_path / "out"
    args = ["--data", str(root), "--out", str(out), "--layers", "BatchNormReLU", "EvoNormS0", "--g-steps", "2",
            "--ch", "4", "--batch", "4", "--grid-every", "1"]
    summary = bench.main(args)
    assert {layer: row["g_steps"] for layer, row in summary.items()} == {"BatchNormReLU": 2, "EvoNormS0": 2}
    assert (out / "losses.png").is_file() and (out / "grids.png").is_file()
    assert (out / "summary.md").read_text().splitlines()[2].startswith("| BatchNormReLU | 2 |")
    assert bench.main(args)["EvoNormS0"]["g_steps"] == 2  # a finished run is resumed and only read
