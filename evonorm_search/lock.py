"""One writer per store: the exclusive lock a controller (``run``, ``resume``) or a training command
(``rerank``, ``calibrate``, ``ablate``) holds on a search store for its lifetime.

The lock is an OS file lock (``portalocker``: ``flock`` on POSIX) on ``<store>.lock``, which also says who
holds it (pid, host, command, since when), so a second writer is refused with the owner named. The OS
releases the lock when its holder exits, ``kill -9`` included, so a crash never leaves a stale lock;
the owner text of a dead holder is simply overwritten by the next one. File locks are not reliable on
every network file system: keep a store on a local disk, or give each machine its own.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Optional, Union

import portalocker


class StoreLockedError(RuntimeError):
    """Another process writes to the store."""


class StoreLock:
    """Held from :meth:`acquire` until :meth:`release` (or the process's end); a context manager."""

    def __init__(self, store_path: Union[str, Path]) -> None:
        self.path = Path(f"{store_path}.lock")
        self._lock = portalocker.Lock(str(self.path), mode="a+", timeout=0, fail_when_locked=True)
        self._file: Optional[IO] = None

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = self._lock.acquire()
        except portalocker.exceptions.LockException:
            raise StoreLockedError(f"{str(self.path)[:-5]} is in use by {self._owner()}; wait for it to finish or stop "
                                   f"it, then try again (or give another --store)") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}))
        self._file.flush()
        return self

    def _owner(self) -> str:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            owner = {}
        if not owner:
            return "another process"
        return f"pid {owner.get('pid')} on {owner.get('host')} (since {owner.get('since')}: {owner.get('command')})"

    def release(self) -> None:
        if self._file is not None:
            self._lock.release()
            self._file = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
