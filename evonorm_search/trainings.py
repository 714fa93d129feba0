"""Named layers trained under given proxy settings, each training stored: the shared runner behind
re-ranking, calibration and the ablation's held-out scores.

A training is keyed by (settings key, layer name, seed); one already in the store is never run again,
so any of these commands, interrupted, resumes where it stopped, and a finished one is only read back.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, Optional, Sequence, Tuple, Union

from evonorm_plugins.graph import Genome
from evonorm_plugins.registry import get_layer_class, make_layer_class

from .evaluator import EvaluationConfig, Outcome, evaluate_layer, prepare
from .execution import Executor, InlineExecutor
from .progress import Progress, no_progress
from .store import SearchStore

Layer = Union[str, Genome]  # a registry name or a genome


@dataclass(frozen=True)
class Training:
    """One training to run: stored under ``key`` (the settings), ``name`` (the layer's row) and ``seed``."""

    key: str
    name: str
    seed: int
    layer: Layer
    config: EvaluationConfig


def train_layer(layer: Layer, config: EvaluationConfig) -> Outcome:
    """A worker task: train a registry layer (by name) or a genome on the proxy architectures."""
    layer_class = get_layer_class(layer) if isinstance(layer, str) else make_layer_class("Candidate", layer)
    return evaluate_layer(layer_class, config)


def run_trainings(store: SearchStore, trainings: Sequence[Training], executor: Optional[Executor] = None,
                  in_flight: Optional[int] = None, progress: Progress = no_progress) -> int:
    """Run the trainings the store does not hold yet, recording each as it finishes; returns how many ran."""
    done = {(key, name, seed) for key in {t.key for t in trainings} for name, seed, *_ in store.trainings(key)}
    todo: Deque[Tuple[int, Training]] = deque(enumerate(t for t in trainings if (t.key, t.name, t.seed) not in done))
    total = len(todo)
    if todo:
        prepare(todo[0][1].config)  # a missing dataset stops here, before any worker starts
    executor = executor or InlineExecutor()
    in_flight = in_flight or executor.capacity
    running: Dict[int, Training] = {}
    finished = 0
    while todo or running:
        while todo and len(running) < in_flight:
            task_id, training = todo.popleft()
            running[task_id] = training
            executor.submit(task_id, train_layer, training.layer, training.config)
        for task_id, outcome in executor.wait(timeout=1.0):
            training = running.pop(task_id)
            store.record_training(training.key, training.name, training.seed, outcome.scores,
                                  None if outcome.scores else f"{outcome.protocol}: {outcome.reason}", outcome.wall_time)
            finished += 1
            failed = "" if outcome.scores else f" failed: {outcome.protocol}"
            progress(finished, total, f"last: {training.name}, seed {training.seed}{failed}")
    return total
