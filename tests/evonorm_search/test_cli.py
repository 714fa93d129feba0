"""`evonorm-search run | resume | top | export | plot | rerank` on the smoke setting (synthetic data, seconds)."""

import pytest
import torch
import yaml

from support import ROOT

pytest.importorskip("pytorch_lightning")

import evonorm_plugins as ep  # noqa: E402
from evonorm_plugins import registry  # noqa: E402
from evonorm_search.cli import main  # noqa: E402
from evonorm_search.rerank import RerankSettings  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402

SMOKE = ROOT / "evonorm_search" / "quickstart.yaml"


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
    with registry.REGISTRY.snapshot():
        names = ep.load_genomes(out)
        layer = ep.get_layer(names[0], 16, groups=4)
        assert layer(torch.randn(2, 16, 4, 4)).shape == (2, 16, 4, 4)


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "none.yaml"), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "search config" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 3\npopulaton_size: 4\n")
    assert main(["run", "--config", str(bad), "--store", str(tmp_path / "s.sqlite")]) == 2
    assert "populaton_size" in capsys.readouterr().err
    assert main(["top", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert "no search store" in capsys.readouterr().err


def test_plot_and_rerank_on_a_finished_search(tiny_config, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    store = tmp_path / "run.sqlite"
    assert main(["run", "--config", str(tiny_config), "--store", str(store)]) == 0
    assert main(["plot", "--store", str(store), "--out", str(tmp_path / "plots")]) == 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["pareto.png", "progress.png"]

    out = tmp_path / "rerank"
    args = ["rerank", "--store", str(store), "-k", "2", "--seeds", "2", "--steps-scale", "0.5",
            "--baselines", "BatchNormReLU", "--export", "1", "--out", str(out), "--workers", "0"]
    capsys.readouterr()
    assert main([a if a != "BatchNormReLU" else "BatchNormRelu" for a in args]) == 2  # named before any training
    assert "did you mean 'BatchNormReLU'" in capsys.readouterr().err
    assert main(args) == 0
    table = (out / "rerank.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 3 and "BatchNormReLU" in table and " ± " in table  # 2 candidates and the baseline
    assert all(row.rstrip(" |").endswith("2") for row in rows)  # every layer trained on both seeds
    assert len(SearchStore(store).trainings(RerankSettings(2, 2, 0.5, ("BatchNormReLU",)).key())) == 6
    exported = sorted(out.glob("*.json"))
    assert len(exported) == 1
    with registry.REGISTRY.snapshot():
        (name,) = ep.load_genomes(exported[0])
        assert ep.get_layer(name, 8, groups=4)(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished re-ranking must be read back, not trained again")

    monkeypatch.setattr("evonorm_search.trainings.train_layer", no_training)
    assert main(args) == 0 and (out / "rerank.md").read_text() == table


def test_execution_section_and_flags(tmp_path):
    from types import SimpleNamespace

    from evonorm_search.cli import _execution

    config = tmp_path / "c.yaml"
    config.write_text("budget: 3\nexecution: {workers: 2, time_limit: 300}\n")
    flags = dict(backend=None, address=None, workers=None, in_flight=None, time_limit=None)
    assert _execution(SimpleNamespace(config=config, **flags)).workers == 2
    changed = _execution(SimpleNamespace(config=config, **{**flags, "workers": 0, "address": "auto"}))
    assert (changed.workers, changed.time_limit, changed.backend, changed.address) == (0, 300.0, "ray", "auto")
    config.write_text("execution: {wrokers: 2}\n")
    with pytest.raises(ValueError, match="wrokers"):
        _execution(SimpleNamespace(config=config, **flags))


def test_user_errors_are_one_line_and_debug_keeps_the_traceback(tmp_path, capsys):
    store = str(tmp_path / "s.sqlite")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    broken = tmp_path / "broken.yaml"
    broken.write_text("budget: 3\nevaluation: {batch_size: 4\n")
    cases = [
        (["run", "--config", str(empty), "--store", store], "is empty; start from"),
        (["run", "--config", str(broken), "--store", store], "broken.yaml:3:1: YAML syntax error"),
        (["run", "--config", str(tmp_path), "--store", store], "is a folder; give a YAML file"),
        (["top", "--store", str(tmp_path / "missing.sqlite")], "no search store at"),
        (["resume", "--store", str(tmp_path / "missing.sqlite")], "no search store at"),
        (["top", "-k", "0", "--store", store], "argument -k: must be at least 1, got 0"),
        (["run", "--store", store, "--workers", "-1"], "execution (config file and flags): workers: Input should be greater than or equal to 0"),
    ]
    for argv, message in cases:
        if "-k" in argv:  # argparse's own errors: usage and one line, exit code 2
            with pytest.raises(SystemExit) as exited:
                main(argv)
            assert exited.value.code == 2
        else:
            assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
        assert len([line for line in err.splitlines() if "error" in line]) == 1, err
    assert not (tmp_path / "s.sqlite").exists()  # nothing was written by a failed start
    with pytest.raises(Exception, match="is empty"):
        main(["run", "--config", str(empty), "--store", store, "--debug"])


def test_a_store_in_use_is_refused_and_readers_still_read(tiny_config, tmp_path, capsys):
    from evonorm_search.lock import StoreLock

    store = tmp_path / "run.sqlite"
    assert main(["run", "--config", str(tiny_config), "--store", str(store)]) == 0
    out = capsys.readouterr()
    assert f"evonorm-search run: on this process (no workers; --workers N for N worker processes), store {store}" in out.out
    assert "search: 100%" in out.err and "3/3" in out.err  # the progress bar, on stderr
    assert "(seed: the paper's EvoNormS0, not evolved)" in out.out
    with StoreLock(store):
        assert main(["resume", "--store", str(store)]) == 2
        assert "run.sqlite is in use by pid" in capsys.readouterr().err
        assert main(["top", "--store", str(store)]) == 0
    assert main(["export", "--store", str(store), "-k", "3", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seed_EvoNormS0.json", "seed_EvoNormS1.json", "seed_EvoNormS2.json"]


@pytest.mark.slow
def test_the_quickstart_runs_with_no_arguments(tmp_path, monkeypatch, capsys):
    """The README's first command: `evonorm-search run` alone, in an empty folder."""
    monkeypatch.chdir(tmp_path)
    assert main(["run"]) == 0
    out = capsys.readouterr().out
    assert "no --config given, so the quickstart search" in out and "results: runs/search.sqlite" in out
    assert SearchStore(tmp_path / "runs" / "search.sqlite", read_only=True).finished_count() == 6
