"""The search's user-facing run failures (besides configs, :class:`~evonorm_search.config.ConfigError`,
and stores, :class:`~evonorm_search.store.StoreError`)."""
from __future__ import annotations


class SearchError(RuntimeError):
    """The run itself cannot go on (the same error on every candidate, every worker failing at start):
    said in one line with the cause, and resumable once the cause is fixed."""
