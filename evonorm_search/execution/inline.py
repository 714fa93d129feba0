"""The in-process backend: each task runs in the calling process when its result is waited for."""
from __future__ import annotations

from collections import deque
from typing import Any, Deque, List, Optional, Tuple

from ..evaluator import Outcome
from .policy import Key, Task


class InlineExecutor:
    """Runs each task in the calling process when its result is waited for (no time limit)."""

    capacity = 1

    def __init__(self) -> None:
        self._queue: Deque[Tuple[int, Task, tuple]] = deque()

    def submit(self, key: Key, fn: Task, *args: Any) -> None:
        self._queue.append((key, fn, args))

    def wait(self, timeout: Optional[float] = None) -> List[Tuple[Key, Outcome]]:
        if not self._queue:
            return []
        key, fn, args = self._queue.popleft()
        return [(key, fn(*args))]

    def shutdown(self) -> None:
        self._queue.clear()
