"""Multi-fidelity search: successive-halving promotions (rung r trains steps·eta^r; the top 1/eta of a
rung is promoted), ranking by the highest rung reached, and resume in the middle of a promotion."""
from collections import Counter

import pytest

from evonorm_search.config import SearchConfig
from evonorm_search.controller import Controller
from evonorm_search.evaluator import EvaluationConfig, Outcome
from evonorm_search.fidelity import FidelityConfig, SuccessiveHalving
from evonorm_search.proxy import ArchitectureConfig
from evonorm_search.space import SearchSpace
from evonorm_search.store import SearchStore

from search_tasks import fake_evaluate

STEPS = 10
EVALUATION = EvaluationConfig(architectures=(ArchitectureConfig("resnet50v2", steps=STEPS), ArchitectureConfig("efficientnet_b0", steps=STEPS)))


def config(budget=60, rungs=3):
    return SearchConfig(space=SearchSpace(batch_dependent=False, max_nodes=9), evaluation=EVALUATION, population_size=8,
                        tournament_size=3, budget=budget, seed=1, fidelity=FidelityConfig(rungs=rungs, eta=3))


def steps_of(cfg):
    return cfg.architectures[0].steps


def fidelity_evaluate(genome, cfg):
    """fake_evaluate's scores plus a bonus that grows with the training steps, and no gate above rung 0."""
    outcome = fake_evaluate(genome, cfg)
    if outcome.scores is None:
        return outcome if cfg.quality else Outcome((0.05, 0.05))
    return Outcome(tuple(s + steps_of(cfg) / 1000 for s in outcome.scores))


def test_successive_halving_promotes_the_top_third_of_each_rung_highest_rung_first():
    halving = SuccessiveHalving(FidelityConfig(rungs=3, eta=3))
    halving.record(1, 0, 0.5)
    halving.record(2, 0, 0.9)
    assert halving.next_promotion() is None  # ⌊2/3⌋ = 0 may go up
    halving.record(3, 0, 0.1)
    assert halving.next_promotion() == (2, 1)
    halving.mark_promoted(2, 1)
    assert halving.next_promotion() is None
    for candidate, score in [(4, 0.95), (5, 0.2), (6, 0.3)]:
        halving.record(candidate, 0, score)
    assert halving.next_promotion() == (4, 1)  # the top 2 of 6 are 4 and 2; 2 went up already
    halving.mark_promoted(4, 1)
    halving.record(2, 1, 0.7)
    halving.record(4, 1, 0.6)
    halving.record(7, 1, 0.1)  # (rung 1 results of three candidates)
    assert halving.next_promotion() == (2, 2)  # the higher rung first
    halving.mark_promoted(2, 2)
    assert halving.next_promotion() is None  # nothing promotes past the last rung
    with pytest.raises(ValueError, match=r"eta\n  Input should be greater than or equal to 2"):
        FidelityConfig(rungs=2, eta=1)


def test_a_multi_fidelity_search_trains_rung_r_for_steps_times_eta_to_the_r(tmp_path):
    steps = Counter()

    def counting(genome, cfg):
        steps[steps_of(cfg)] += 1
        return fidelity_evaluate(genome, cfg)

    store = Controller(tmp_path / "s.sqlite", config(), counting).run()
    assert store.finished_count() == 60 and set(steps) == {10, 30, 90}
    promotions = [p for p in store.promotions() if p.status == "done"]
    assert steps[30] == len([p for p in promotions if p.rung == 1]) > 0
    assert steps[90] == len([p for p in promotions if p.rung == 2]) > 0
    # at the end, the top third of every rung has been promoted (what ASHA converges to)
    trained = [c for c in store.finished() if c.status == "done" and c.protocol is None]
    rung0 = sorted(trained, key=lambda c: -sum(c.scores))[: len(trained) // 3]
    assert {c.id for c in rung0} <= {p.candidate_id for p in store.promotions() if p.rung == 1}
    assert len(promotions) < len(trained)  # longer trainings only for the few
    # the ranking: highest rung first, then the score there
    top = store.top(5)
    assert [c.rung for c in top] == sorted((c.rung for c in top), reverse=True) and top[0].rung == 2
    best_rung2 = max((p for p in promotions if p.rung == 2), key=lambda p: sum(p.scores))
    assert top[0].id == best_rung2.candidate_id and top[0].scores == best_rung2.scores
    assert "promoted r1 " in Controller(tmp_path / "s.sqlite", None, counting).status_line()


def test_resume_in_the_middle_of_a_promotion_repeats_nothing_finished(tmp_path):
    path = tmp_path / "s.sqlite"
    calls = []

    def crash_at_the_third_promotion(genome, cfg):
        calls.append((genome.hash(), steps_of(cfg)))
        if sum(1 for _, s in calls if s > STEPS) == 3:
            raise KeyboardInterrupt  # the controller dies with this promotion in flight
        return fidelity_evaluate(genome, cfg)

    with pytest.raises(KeyboardInterrupt):
        Controller(path, config(), crash_at_the_third_promotion).run()
    before = SearchStore(path)
    (interrupted,) = before.pending_promotions()
    finished_before = {(c.hash, STEPS) for c in before.finished() if c.protocol is None}
    finished_before |= {(before.get(p.candidate_id).hash, STEPS * 3 ** p.rung) for p in before.promotions() if p.status != "pending"}
    scores_before = {(p.candidate_id, p.rung): p.scores for p in before.promotions() if p.status == "done"}

    resumed = []

    def recording(genome, cfg):
        resumed.append((genome.hash(), steps_of(cfg)))
        return fidelity_evaluate(genome, cfg)

    store = Controller(path, None, recording).run()
    assert store.finished_count() == 60 and not store.pending_promotions()
    assert resumed[0] == (store.get(interrupted.candidate_id).hash, STEPS * 3 ** interrupted.rung)  # re-run first
    assert not finished_before & set(resumed)  # nothing that had finished ran again
    after = {(p.candidate_id, p.rung): p.scores for p in store.promotions() if p.status == "done"}
    assert all(after[key] == scores for key, scores in scores_before.items())
    assert len(after) > len(scores_before)


def test_one_rung_is_the_plain_search(tmp_path):
    store = Controller(tmp_path / "s.sqlite", config(budget=30, rungs=1), fidelity_evaluate).run()
    assert store.promotions() == [] and store.top(1)[0].rung == 0


def test_a_promoted_member_keeps_its_age_and_wins_tournaments_against_lower_rungs():
    from evonorm_plugins.registry import paper_genome
    from evonorm_search.evolution import RegularizedEvolution

    strategy = RegularizedEvolution(SearchSpace(batch_dependent=False), population_size=3, tournament_size=3, seed=0)
    for candidate, (name, score) in enumerate([("EvoNormS0", 0.9), ("EvoNormS1", 0.8), ("EvoNormS2", 0.7)], start=1):
        strategy.report(paper_genome(name), (score, score), candidate)
    strategy.promote(3, 1, (0.4, 0.4))  # lower accuracy after longer training, but the only rung-1 member
    assert [(m.candidate_id, m.rung) for m in strategy.population] == [(1, 0), (2, 0), (3, 1)]
    assert {strategy.propose().parent for _ in range(10)} == {3}
