"""What a person watching a command sees: one line saying what runs where, then a progress bar (tqdm)
of finished work against the total, with an ETA and the command's own status (rejections by protocol,
best score so far). The commands report through a :data:`Progress` callable, so they know nothing of
terminals; tests pass a plain function."""
from __future__ import annotations

import sys
from typing import Callable, Optional

from tqdm import tqdm

Progress = Callable[[int, int, str], None]  # (finished, total, status)


def no_progress(finished: int, total: int, status: str) -> None:
    """A :data:`Progress` that shows nothing."""


class ProgressBar:
    """A :data:`Progress` drawn as a tqdm bar on stderr; the ETA counts only work finished while it is
    shown (a resumed search's earlier candidates do not make it look faster)."""

    def __init__(self, description: str, unit: str) -> None:
        self.description, self.unit = description, unit
        self._bar: Optional[tqdm] = None

    def __call__(self, finished: int, total: int, status: str) -> None:
        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, initial=finished, desc=self.description, unit=self.unit, file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
        self._bar.update(finished - self._bar.n)
        self._bar.set_postfix_str(status, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
