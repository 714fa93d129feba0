"""Proxy calibration on tiny synthetic settings with a fake trainer: Kendall τ / Spearman ρ against the
reference, cost, the table and plot, resume, and the shipped calibration config."""
import pytest
import yaml

pytest.importorskip("pytorch_lightning")

from evonorm_search.calibration import (  # noqa: E402
    REGISTRY_PANEL,
    Setting,
    calibrate,
    calibration_panel,
    format_calibration,
    read_settings,
)
from evonorm_search.cli import main  # noqa: E402
from evonorm_search.evaluator import EvaluationConfig, Outcome  # noqa: E402
from evonorm_search.proxy import ArchitectureConfig  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402

from support import ROOT  # noqa: E402

PANEL = {name: name for name in ("A", "B", "C", "D", "E")}
QUALITY = {"A": 0.9, "B": 0.7, "C": 0.5, "D": 0.3, "E": 0.1}


def setting(name, steps, batch_size=16):
    return Setting(name, EvaluationConfig(architectures=(ArchitectureConfig("resnet50v2", steps=steps),), data_dir=None,
                                          data_limit=100, batch_size=batch_size, heldout_fraction=0.2))


def fake_train(layer, config):
    """Steps 100: the true order; steps 10: the reverse; steps 30: the true order but D and E swapped on seed 1."""
    steps = config.architectures[0].steps
    score = QUALITY[layer] if steps != 10 else 1 - QUALITY[layer]
    if steps == 30 and config.seed == 1 and layer in "DE":
        score = QUALITY["E" if layer == "D" else "D"]
    assert not config.quality and not config.stability and config.score_on == "search"
    return Outcome((score, score), wall_time=steps / 10)


@pytest.fixture
def trainer(monkeypatch):
    calls = []

    def recording(layer, config):
        calls.append((layer, config.architectures[0].steps, config.seed))
        return fake_train(layer, config)

    monkeypatch.setattr("evonorm_search.trainings.train_layer", recording)
    return calls


def test_rank_agreement_cost_and_resume(tmp_path, trainer):
    store = SearchStore(tmp_path / "cal.sqlite")
    reference = setting("reference", 100)
    candidates = [setting("reversed", 10), setting("noisy", 30)]
    ref_row, rows = calibrate(store, reference, candidates, PANEL, seeds=2)
    assert len(trainer) == 3 * 2 * 5
    reversed_row, noisy_row = rows
    assert reversed_row.kendall == pytest.approx((-1.0, 0.0)) and reversed_row.spearman == pytest.approx((-1.0, 0.0))
    assert noisy_row.kendall[0] == pytest.approx((1.0 + 0.8) / 2)  # seed 1: one discordant pair of 10
    assert noisy_row.spearman[0] == pytest.approx((1.0 + 0.9) / 2)  # seed 1: ρ = 1 - 6·2/(5·24)
    assert ref_row.kendall == pytest.approx((1.0, 0.0))  # the reference agrees with itself across seeds
    # over the reference's better half (A, B, C) only: D and E, swapped on seed 1, no longer count
    assert noisy_row.kendall_better_half == pytest.approx((1.0, 0.0)) and reversed_row.kendall_better_half == pytest.approx((-1.0, 0.0))
    assert (ref_row.seconds_per_candidate, reversed_row.seconds_per_candidate) == (10.0, 1.0)
    table = format_calibration(ref_row, rows)
    assert "| reversed | resnet50v2 w0.25 dfull 10 steps; batch 16 | 1.0 | -1.00 ± 0.00 | -1.00 ± 0.00 | -1.00 ± 0.00 | 2 |" in table
    assert "| A | 0.900 | 0.100 | 0.900 |" in table
    trainer.clear()
    calibrate(store, reference, candidates, PANEL, seeds=2)
    assert trainer == []  # every training was stored: nothing runs again
    calibrate(store, reference, [setting("noisy", 30, batch_size=8)], PANEL, seeds=2)
    assert len(trainer) == 2 * 5  # a changed setting retrains only itself


def test_the_panel_has_normalizing_non_normalizing_and_random_stable_layers():
    panel = calibration_panel(random_genomes=1, seed=0, stability_steps=3)
    assert list(panel)[: len(REGISTRY_PANEL)] == list(REGISTRY_PANEL)
    assert {"tanh(x)", "max(x, 0)", "x * v1 (identity-like)"} <= set(panel)
    randoms = [name for name in panel if name.startswith("random ")]
    assert len(randoms) == 1 and calibration_panel(random_genomes=1, seed=0, stability_steps=3).keys() == panel.keys()


def test_the_shipped_calibration_config_and_the_command(tmp_path, trainer, monkeypatch, capsys):
    data = yaml.safe_load((ROOT / "configs" / "search" / "calibration.yaml").read_text())
    settings = read_settings(data, "calibration.yaml")
    assert settings[0].name == "reference"
    assert settings[0].evaluation.architectures[0].depth == (3, 4, 6, 3)  # the paper's shape: full depth
    assert all(s.evaluation.heldout_fraction > 0 for s in settings)
    tiny = {"seeds": 2, "panel": {"random_genomes": 0}, "common": {"data_dir": None, "data_limit": 100, "heldout_fraction": 0.2},
            "settings": {"reference": {"architectures": [{"name": "resnet50v2", "steps": 100}]},
                         "short": {"architectures": [{"name": "resnet50v2", "steps": 10}]}}}
    config = tmp_path / "cal.yaml"
    config.write_text(yaml.safe_dump(tiny))
    monkeypatch.setattr("evonorm_search.calibration.calibration_panel", lambda random_genomes, seed: PANEL)
    out = tmp_path / "out"
    args = ["calibrate", "--config", str(config), "--store", str(tmp_path / "c.sqlite"), "--out", str(out), "--workers", "0"]
    assert main(args + ["--reference", "long"]) == 2
    assert "has no setting 'long' to use as the reference; its settings: reference, short" in capsys.readouterr().err
    assert main(args) == 0
    assert "| short |" in (out / "calibration.md").read_text() and (out / "calibration.png").stat().st_size > 0


def test_the_cpu_setting_is_full_depth_at_small_batch_with_promotions():
    from evonorm_search.cli import load_config

    config = load_config(ROOT / "configs" / "search" / "cpu.yaml")
    assert not config.space.batch_dependent and config.evaluation.batch_size <= 16
    assert all(a.depth == (3, 4, 6, 3) for a in config.evaluation.architectures if a.name == "resnet50v2")
    assert config.fidelity.rungs >= 2 and config.evaluation.heldout_fraction > 0


def test_the_cpu_calibration_trains_the_cpu_search_own_rungs_and_a_ten_times_longer_reference():
    from evonorm_search.cli import load_config

    search = load_config(ROOT / "configs" / "search" / "cpu.yaml")
    data = yaml.safe_load((ROOT / "configs" / "search" / "calibration_cpu.yaml").read_text())
    settings = {s.name: s.evaluation for s in read_settings(data, "calibration_cpu.yaml")}

    def shape(evaluation):
        archs = [(a.name, a.width, a.depth, a.steps, a.lr) for a in evaluation.architectures]
        return archs, evaluation.batch_size, evaluation.val_fraction, evaluation.heldout_fraction, evaluation.split_seed

    for rung in range(search.fidelity.rungs):
        assert shape(settings[f"cpu_rung{rung}"]) == shape(search.fidelity.evaluation(search.evaluation, rung))
    reference, = settings["reference_cpu"].architectures
    rung0, = search.evaluation.architectures
    assert (reference.name, reference.width, reference.depth, reference.steps) == (rung0.name, rung0.width, rung0.depth, 10 * rung0.steps)
