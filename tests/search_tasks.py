"""Tasks for the executor tests, in a module of their own so spawned and Ray workers can import them."""
import os
import time
from pathlib import Path

from evonorm_search.evaluator import Outcome


def fake_evaluate(genome, config):
    """Deterministic stand-in scores from the genome's hash: no training."""
    digest = int(genome.hash(), 16)
    if digest % 7 == 0:
        return Outcome(None, "quality", "quality: fake", 0.0)
    return Outcome(((digest % 1000) / 1000, (digest // 1000 % 1000) / 1000), wall_time=0.0)


def logged_evaluate(log: str, genome, config):
    """:func:`fake_evaluate`, appending the genome's hash to ``log`` (one line per evaluation)."""
    with open(log, "a") as f:
        f.write(genome.hash() + "\n")
    return fake_evaluate(genome, config)


def hang_on_first_attempt(folder: str) -> Outcome:
    """Writes ``attempt-N`` holding its PID; the first attempt hangs (to be killed), later ones succeed."""
    attempts = len(list(Path(folder).glob("attempt-*")))
    Path(folder, f"attempt-{attempts}").write_text(str(os.getpid()))
    if attempts == 0:
        time.sleep(120)
    return Outcome((float(attempts),))


def hang(seconds: float) -> Outcome:
    time.sleep(seconds)
    return Outcome((0.0,))


def raise_error(message: str) -> Outcome:
    raise RuntimeError(message)


def echo(value: float) -> Outcome:
    return Outcome((value,))


def visible_device(seconds: float) -> Outcome:
    """The accelerator device this worker was given (-1: none), after ``seconds`` (so tasks spread over workers)."""
    time.sleep(seconds)
    return Outcome((float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1")),))
