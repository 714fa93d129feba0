"""`evonorm-search run | resume | top | export` on the smoke setting (synthetic data, seconds)."""
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("pytorch_lightning")

import evonorm_plugins as ep  # noqa: E402
from evonorm_plugins import registry  # noqa: E402
from evonorm_search.cli import main  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "search" / "smoke.yaml"


@pytest.fixture
def tiny_config(tmp_path):
    data = yaml.safe_load(SMOKE.read_text())
    data["budget"] = 3  # the three seeded paper layers
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_run_top_export_and_load_by_name(tiny_config, tmp_path, capsys):
    store = tmp_path / "run.sqlite"
    assert main(["run", "--config", str(tiny_config), "--store", str(store), "--baselines"]) == 0
    printed = capsys.readouterr().out
    assert "candidates: 3 finished" in printed and "resnet50v2 0." in printed
    assert "baseline BatchNormReLU: resnet50v2 0." in printed and "baseline GroupNormReLU" in printed
    assert SearchStore(store).counts()["done"] == 3

    assert main(["resume", "--store", str(store)]) == 0  # nothing left to do: no new candidate
    assert SearchStore(store).finished_count() == 3

    out = tmp_path / "evolved"
    assert main(["export", "--store", str(store), "-k", "2", "--out", str(out)]) == 0
    files = sorted(out.glob("*.json"))
    assert len(files) == 2
    before = dict(registry._registry)
    try:
        names = ep.load_genomes(out)
        layer = ep.get_layer(names[0], 16, groups=4)
        assert layer(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)
    finally:
        registry._registry.clear()
        registry._registry.update(before)


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "none.yaml"), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "search config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 3\npopulaton_size: 4\n")
    assert main(["run", "--config", str(bad), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "populaton_size" in capsys.readouterr().err
    assert main(["top", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no search store" in capsys.readouterr().err
