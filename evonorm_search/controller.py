"""The controller: propose, dedupe, dispatch, record, report — asynchronous and resumable from its store.

The controller owns the strategy (population) and the store; evaluation is a function of (genome,
config) run by an executor (in-process, local worker processes or Ray), so distributing it changes
only who calls it. Order of work for each candidate: canonical and functional hash → the store records
it as pending → duplicate check against every finished candidate (a duplicate of a done one reuses its
scores; of a rejected one is rejected) and against those in flight (it waits for its twin instead of
being evaluated twice) → dispatch → the store records the outcome → the strategy hears it. Up to
``in_flight`` evaluations run at once; each one that finishes frees its slot for a new child at once.

Multi-fidelity (``fidelity.rungs`` > 1, :mod:`.fidelity`): whenever a slot is free, a promotion that
successive halving says is due (a candidate in the top 1/eta of its rung trains eta times longer) is
recorded as pending in the store and dispatched before any new candidate; its result updates the
candidate's member in the population. After the budget of new candidates, the due promotions still run.

Resume: the finished candidates and finished promotions are replayed into a fresh strategy and a fresh
successive-halving state in the one order they finished (that rebuilds the population and the rungs),
and candidates and promotions left pending by a crash are dispatched first; nothing finished runs again.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple, Union

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import get_layer_class, paper_genome

from .config import SearchConfig
from .dedupe import functional_hash
from .errors import SearchError
from .evaluator import EvaluationConfig, Outcome, evaluate, evaluate_layer, prepare
from .evolution import RandomSearch, RegularizedEvolution
from .execution import Executor, InlineExecutor
from .fidelity import SuccessiveHalving
from .lock import StoreLock
from .progress import Progress, no_progress
from .store import Candidate, SearchStore

Evaluate = Callable[[Genome, EvaluationConfig], Outcome]
SYSTEMATIC_ERRORS = 5
PROGRESS_INTERVAL = 0.5  # seconds between progress lines


def _strategy(config: SearchConfig):
    if config.strategy == "random":
        return RandomSearch(config.space, config.seed)
    names = ("B0", "B1", "B2", "S0", "S1", "S2") if config.space.batch_dependent else ("S0", "S1", "S2")
    seeds = [paper_genome(f"EvoNorm{n}") for n in names] if config.seed_with_paper_layers else []
    return RegularizedEvolution(config.space, config.population_size, config.tournament_size, config.seed,
                                [g for g in seeds if config.space.contains(g)], config.random_while_filling)


class Controller:
    """Runs a search against its store, which it holds locked (:mod:`.lock`) until :meth:`close` or the
    end of its process; a context manager. :meth:`run` takes the executor.

    With a ``config``, a new store starts that search, a store holding the same config continues it,
    and a store whose run never started (it failed before any candidate) takes the new config; without
    one, the store's own config is resumed."""

    def __init__(self, store_path: Union[str, Path], config: Optional[SearchConfig] = None,
                 evaluate_fn: Evaluate = evaluate, progress: Progress = no_progress) -> None:
        self.lock = StoreLock(store_path).acquire()
        try:
            self.store = SearchStore(store_path)
            self.config = self._config(config)
        except BaseException:
            self.lock.release()
            raise
        self.evaluate_fn, self.progress = evaluate_fn, progress
        self.executor: Executor = InlineExecutor()
        self.in_flight = 1
        self.strategy = _strategy(self.config)
        self.halving = SuccessiveHalving(self.config.fidelity)
        self._replay()
        self._finished = self.store.finished_count()
        self._running: Dict[int, Tuple[Genome, Optional[str]]] = {}  # candidate id -> (genome, functional hash)
        self._promoting: Set[Tuple[int, int]] = set()  # (candidate id, rung) of the promotions in flight
        self._running_hashes: Dict[str, int] = {}  # canonical and functional hashes in flight -> candidate id
        self._waiting: Dict[int, List[Tuple[int, Genome]]] = {}  # in-flight id -> its duplicates, resolved with it
        self._error_streak: Tuple[Optional[str], int] = (None, 0)
        self._last_progress = 0.0

    def _config(self, config: Optional[SearchConfig]) -> SearchConfig:
        """The search to run: ``config`` checked against the stored one, or the stored one."""
        stored = self.store.get_meta("config")
        if config is None and stored is None:
            raise ValueError(f"{self.store.path} holds no search to resume; start one with `evonorm-search run --config ...`")
        if config is not None and stored is not None and self.store.started():
            differing = _differing_keys(json.loads(json.dumps(config.to_dict())), stored)  # tuples read back as lists
            if differing:
                raise ValueError(f"{self.store.path} holds a search with another config (differing: {', '.join(differing)}); "
                                 f"resume it without --config, or give a new --store")
        if config is None:
            return SearchConfig.from_dict(stored, f"the config stored in {self.store.path}")
        self.store.set_meta("config", config.to_dict())
        return config

    def close(self) -> None:
        """Close the store and let another controller have it."""
        self.store.close()
        self.lock.release()

    def __enter__(self) -> "Controller":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _replay(self) -> None:
        """Rebuild the population and the rungs from the store's events, in the order they finished."""
        for event in self.store.events():
            if isinstance(event, Candidate):
                self.strategy.report(event.genome, event.scores if event.status == "done" else None, event.id)
                if event.status == "done" and event.protocol is None:
                    self.halving.record(event.id, 0, _mean(event.scores))
            elif event.status == "done":
                self.strategy.promote(event.candidate_id, event.rung, event.scores)
                self.halving.record(event.candidate_id, event.rung, _mean(event.scores))
        for promotion in self.store.promotions():
            self.halving.mark_promoted(promotion.candidate_id, promotion.rung)
        self.strategy.skip_initial(self.store.seeded_hashes())

    # ------------------------------------------------------------------------------------ dispatch
    def step(self) -> None:
        """Propose one candidate, record it and dispatch it (or settle it as a duplicate)."""
        proposal = self.strategy.propose()
        fhash = functional_hash(proposal.genome) if self.config.dedupe else None
        candidate_id = self.store.add(proposal.genome, parent=proposal.parent, functional_hash=fhash, seeded=proposal.seeded)
        self._dispatch(candidate_id, proposal.genome, fhash)

    def _dispatch(self, candidate_id: int, genome: Genome, fhash: Optional[str]) -> None:
        if self.config.dedupe:
            original = self.store.seen(genome.hash(), fhash)
            if original is not None:
                self._settle_duplicate(candidate_id, genome, original)
                return
            twin = self._running_hashes.get(genome.hash()) or (self._running_hashes.get(fhash) if fhash else None)
            if twin is not None:
                self._waiting.setdefault(twin, []).append((candidate_id, genome))
                return
            self._running_hashes.update({h: candidate_id for h in (genome.hash(), fhash) if h})
        self._running[candidate_id] = (genome, fhash)
        self.executor.submit((candidate_id, 0), self.evaluate_fn, genome, self.config.evaluation)

    def _promote(self, candidate_id: int, rung: int, recorded: bool = False) -> None:
        """Train ``candidate_id`` at ``rung``: recorded as pending first, so a crash leaves it to resume."""
        if not recorded:
            self.store.add_promotion(candidate_id, rung)
            self.halving.mark_promoted(candidate_id, rung)
        self._promoting.add((candidate_id, rung))
        self.executor.submit((candidate_id, rung), self.evaluate_fn, self.store.get(candidate_id).genome,
                             self.config.fidelity.evaluation(self.config.evaluation, rung))

    def _settle_duplicate(self, candidate_id: int, genome: Genome, original: Candidate) -> None:
        if original.status == "done":
            self.store.complete_as_duplicate(candidate_id, original)
            self.strategy.report(genome, original.scores, candidate_id)
        else:
            self.store.reject(candidate_id, "duplicate", f"same function as rejected candidate {original.id}", 0.0)
            self.strategy.report(genome, None, candidate_id)
        self._finished += 1

    # -------------------------------------------------------------------------------------- record
    def _record(self, candidate_id: int, outcome: Outcome) -> None:
        genome, fhash = self._running.pop(candidate_id)
        for key in (genome.hash(), fhash):
            if key and self._running_hashes.get(key) == candidate_id:
                del self._running_hashes[key]
        if outcome.scores is None:
            self.store.reject(candidate_id, outcome.protocol or "error", outcome.reason, outcome.wall_time, outcome.retries)
        else:
            self.store.complete(candidate_id, outcome.scores, outcome.wall_time, outcome.retries)
            self.halving.record(candidate_id, 0, _mean(outcome.scores))
        self.strategy.report(genome, outcome.scores, candidate_id)
        self._finished += 1
        waiting = self._waiting.pop(candidate_id, [])
        if waiting:
            original = self.store.get(candidate_id)
            for twin_id, twin in waiting:
                self._settle_duplicate(twin_id, twin, original)
        self._check_systematic_errors(outcome)

    def _record_promotion(self, candidate_id: int, rung: int, outcome: Outcome) -> None:
        self._promoting.remove((candidate_id, rung))
        if outcome.scores is None:
            self.store.reject_promotion(candidate_id, rung, outcome.protocol or "error", outcome.reason, outcome.wall_time,
                                        outcome.retries)
        else:
            self.store.complete_promotion(candidate_id, rung, outcome.scores, outcome.wall_time, outcome.retries)
            self.strategy.promote(candidate_id, rung, outcome.scores)
            self.halving.record(candidate_id, rung, _mean(outcome.scores))
        self._check_systematic_errors(outcome)

    def _check_systematic_errors(self, outcome: Outcome) -> None:
        """Different candidates failing with the very same error in a row point at the run (config,
        environment), not at the candidates: stop instead of rejecting the whole budget."""
        if outcome.protocol != "error":
            self._error_streak = (None, 0)
            return
        reason, count = self._error_streak
        count = count + 1 if reason == outcome.reason else 1
        self._error_streak = (outcome.reason, count)
        if count >= SYSTEMATIC_ERRORS:
            hint = ("; workers killed on every candidate are often out of memory: fewer --workers or a smaller proxy"
                    if outcome.reason.startswith("worker died") else "")
            raise SearchError(
                f"{count} candidates in a row failed with the same error, so the run itself is broken: "
                f"{outcome.reason}{hint}. Fix it (the config, the data, the environment), then `evonorm-search resume`"
            )

    # ----------------------------------------------------------------------------------------- run
    def evaluate_baselines(self, names=("BatchNormReLU", "GroupNormReLU")) -> dict:
        """Train the baselines exactly as the candidates (stored once, as ``baselines`` in the store)."""
        results = self.store.get_meta("baselines") or {}
        self._record_split(prepare(self.config.evaluation))
        for name in names:
            if name not in results:
                outcome = evaluate_layer(get_layer_class(name), self.config.evaluation)
                results[name] = list(outcome.scores) if outcome.scores else f"rejected: {outcome.reason}"
                self.store.set_meta("baselines", results)
        return results

    def run(self, executor: Optional[Executor] = None, in_flight: Optional[int] = None) -> SearchStore:
        """Run until ``budget`` candidates have finished, ``executor`` (default: in this process) running
        the evaluations, at most ``in_flight`` (default: the executor's capacity) at once. Stopped early
        (an error, Ctrl-C), the finished evaluations are in the store and those in flight stay pending:
        resume re-runs them. The executor belongs to the caller, who shuts it down."""
        self.executor = executor or InlineExecutor()
        self.in_flight = in_flight or self.executor.capacity
        self._report_progress(force=True)  # the bar shows before the first candidate finishes
        if self.evaluate_fn is evaluate:
            self._record_split(prepare(self.config.evaluation))
        for candidate in self.store.pending():  # left by a crash: dispatched first
            self._dispatch(candidate.id, candidate.genome, candidate.functional_hash)
        for promotion in self.store.pending_promotions():
            self._promote(promotion.candidate_id, promotion.rung, recorded=True)
        while True:
            while len(self._running) + len(self._promoting) < self.in_flight:
                due = self.halving.next_promotion()
                if due is not None:
                    self._promote(*due)
                elif self._finished + self._unsettled() < self.config.budget:
                    self.step()
                else:
                    break
            if not self._running and not self._promoting:
                break
            for (candidate_id, rung), outcome in self.executor.wait(timeout=PROGRESS_INTERVAL):
                if rung == 0:
                    self._record(candidate_id, outcome)
                else:
                    self._record_promotion(candidate_id, rung, outcome)
            self._report_progress()
        self._report_progress(force=True)
        return self.store

    def _record_split(self, split: dict) -> None:
        """Keep the data split's record (seed, sizes, digest) with the search; a resumed search must
        split the data the same way, or its search-validation and held-out parts would mix."""
        recorded = self.store.get_meta("split")
        if recorded is None:
            self.store.set_meta("split", split)
        elif recorded != split:
            raise ValueError(f"{self.store.path} split its data as {recorded}, the data now splits as {split}: "
                             f"point evaluation.data_dir at the search's own data")

    def _unsettled(self) -> int:
        return len(self._running) + sum(len(waiting) for waiting in self._waiting.values())

    def _report_progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self.progress(self._finished, self.config.budget, self.status_line())

    def status_line(self) -> str:
        """Running, promoted, done and rejected (by protocol) candidates, and the best so far."""
        counts = self.store.counts()
        best = self.store.top(1)
        rejected = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(counts.items()) if k.startswith("rejected:"))
        best_text = f"best {_scores_text(best[0].scores)} {best[0].genome.formula()}" if best else "best -"
        promoted = ", ".join(f"r{k.split(':')[0][5:]} {v}" for k, v in sorted(counts.items()) if k.startswith("rung") and k.endswith(":done"))
        promoted_text = f"promoted {promoted}, " if promoted else ""
        return (f"{len(self._running) + len(self._promoting)} running, {promoted_text}"
                f"done {counts.get('done', 0)}, rejected {counts.get('rejected', 0)} ({rejected or 'none'}), {best_text}")


def _mean(scores) -> float:
    return sum(scores) / max(len(scores), 1)


def _scores_text(scores) -> str:
    return "(" + ", ".join(f"{s:.3f}" for s in scores or ()) + ")"


def _differing_keys(new: object, old: object, prefix: str = "") -> List[str]:
    """Dotted paths where two plain configs differ (``evaluation.train_steps``, ``budget``, ...)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return [path for key in sorted(set(new) | set(old), key=str)
                for path in _differing_keys(new.get(key), old.get(key), f"{prefix}{key}.")]
    return [] if new == old else [prefix.rstrip(".") or "(the whole config)"]
