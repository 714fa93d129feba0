"""Tasks for the executor tests, in a module of their own so spawned and Ray workers can import them."""
import os
import signal
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


def deadly_evaluate(folder: str, genome, config):
    """:func:`fake_evaluate`, whose first evaluation of about one genome in four SIGKILLs its worker
    (a marker per genome in ``folder`` remembers it across workers)."""
    marker = Path(folder, genome.hash())
    if int(genome.hash(), 16) % 4 == 0 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_evaluate(genome, config)


def _attempt(folder: str) -> int:
    """Counts this call's attempt in ``folder`` (``attempt-N`` holding the worker's PID): 0 for the first."""
    attempts = len(list(Path(folder).glob("attempt-*")))
    Path(folder, f"attempt-{attempts}").write_text(str(os.getpid()))
    return attempts


def hang_on_first_attempt(folder: str) -> Outcome:
    """Writes ``attempt-N`` holding its PID; the first attempt hangs (to be killed), later ones succeed."""
    attempts = _attempt(folder)
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


def die_first(folder: str, deaths: int, then: float = 0.0) -> Outcome:
    """SIGKILLs its own worker while evaluating on the first ``deaths`` attempts; later attempts sleep
    ``then`` seconds and return their attempt number."""
    attempts = _attempt(folder)
    if attempts < deaths:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(then)
    return Outcome((float(attempts),))


class _KillWhenSent:
    """Kills the process that pickles it: a worker sending it back dies while returning its result."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)


def die_returning_first(folder: str) -> Outcome:
    """The first attempt's worker dies while sending its outcome back; later attempts return their number."""
    attempts = _attempt(folder)
    return Outcome((float(attempts),), reason=_KillWhenSent() if attempts == 0 else "")


def pid_after(seconds: float) -> Outcome:
    """The worker's PID, after ``seconds`` (so that tasks submitted together spread over the workers)."""
    time.sleep(seconds)
    return Outcome((float(os.getpid()),))
