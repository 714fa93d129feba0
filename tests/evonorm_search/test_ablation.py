"""The ablation on a tiny fake setting: four arms × seeds at equal budget, held-out scores of each run's
top-k, candidates trained, the table and the plot, and resume."""
import pytest

pytest.importorskip("pytorch_lightning")

from evonorm_search.ablation import (  # noqa: E402
    ARMS,
    ablate,
    arm_config,
    format_ablation,
    plot_ablation,
)
from evonorm_search.config import SearchConfig  # noqa: E402
from evonorm_search.evaluator import EvaluationConfig, Outcome  # noqa: E402
from evonorm_search.space import SearchSpace  # noqa: E402
from evonorm_search.store import SearchStore  # noqa: E402

from search_tasks import fake_evaluate  # noqa: E402

CONFIG = SearchConfig(space=SearchSpace(batch_dependent=False, max_nodes=9), evaluation=EvaluationConfig(heldout_fraction=0.2),
                      population_size=6, tournament_size=2, budget=20, seed=0)


def gated_evaluate(genome, cfg):
    """fake_evaluate, whose 'quality' rejections become low scores when the gate is off."""
    outcome = fake_evaluate(genome, cfg)
    return outcome if outcome.scores is not None or cfg.quality else Outcome((0.1, 0.1))


def test_arms_differ_only_in_strategy_rejection_and_seed():
    config = arm_config(CONFIG, "random", 2)
    assert (config.strategy, config.seed, config.evaluation.stability, config.evaluation.quality) == ("random", 2, False, False)
    config = arm_config(CONFIG, "evolution+rejection", 0)
    assert (config.strategy, config.evaluation.stability, config.evaluation.quality, config.budget) == ("evolution", True, True, 20)


def test_ablation_runs_every_arm_and_seed_and_scores_the_held_out_part(tmp_path, monkeypatch):
    heldout = []

    def fake_train(genome, cfg):
        heldout.append(cfg.score_on)
        return Outcome(tuple(s * 0.9 for s in fake_evaluate(genome, cfg).scores or (0.0, 0.0)))

    monkeypatch.setattr("evonorm_search.trainings.train_layer", fake_train)
    results = ablate(CONFIG, seeds=2, folder=tmp_path, evaluate_fn=gated_evaluate, top=3)
    # seed-major: a run stopped part-way leaves every arm with the same seeds done
    assert [(r.arm, r.seed) for r in results] == [(arm, seed) for seed in range(2) for arm in ARMS]
    assert set(heldout) == {"heldout"} and len(heldout) == 8 * 3
    for result in results:
        store = SearchStore(tmp_path / f"{result.arm}-seed{result.seed}.sqlite")
        assert store.finished_count() == 20 and len(result.best_so_far) == 20  # equal budget
        best_search = store.top(1)[0]
        assert result.best == pytest.approx(0.9 * sum(best_search.scores) / 2)
        assert list(result.heldout) == sorted(result.heldout, reverse=True) and len(result.heldout) == 3
        # every candidate but duplicates reached training (the fake's quality rejections come after it)
        counts = store.counts()
        duplicates = counts.get("done:duplicate", 0) + counts.get("rejected:duplicate", 0)
        assert result.trained == 20 - duplicates and result.wall_time > 0
    table = format_ablation(results, top=3)
    assert table.count("\n") == 5 and "| random+rejection | 2 | " in table and "top-3 mean held-out" in table
    assert plot_ablation(results, tmp_path / "ablation.png").stat().st_size > 0

    heldout.clear()
    again = ablate(CONFIG, seeds=2, folder=tmp_path, evaluate_fn=gated_evaluate, top=3)
    assert heldout == [] and [r.heldout for r in again] == [r.heldout for r in results]  # resumed: nothing retrained


def test_unknown_arm(tmp_path):
    with pytest.raises(ValueError, match=r"unknown ablation arms \['annealing'\]"):
        ablate(CONFIG, 1, tmp_path, arms=("annealing",))
