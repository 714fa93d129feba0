"""The persistent record of a search in SQLite: every candidate, its hashes, scores or rejection; its
promotions to higher fidelities (multi-fidelity search); the record of the data split; and named
trainings (re-ranking, calibration, the ablation's held-out scores).

Each state change is its own committed transaction in SQLite's write-ahead log, so a controller
killed at any moment, ``kill -9`` included, leaves every finished evaluation on disk and at most some
candidates or promotions ``pending``; a resumed run evaluates those again and replays the finished
ones, candidates and promotions in the one order they finished, to rebuild the population. (``synchronous=NORMAL``: a process kill loses nothing; a power
cut may lose the last commits, never the file's consistency. Syncing every commit would cap a search
at the disk's fsync rate.)

Queries the controller makes per candidate (duplicates, the next finish order, the best so far) are
indexed, so the store's cost per candidate does not grow with the run.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from evonorm_plugins.graph import Genome

SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    genome TEXT NOT NULL,
    hash TEXT NOT NULL,
    functional_hash TEXT,
    parent INTEGER REFERENCES candidates(id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'rejected')),
    protocol TEXT,
    reason TEXT,
    scores TEXT,
    mean_score REAL,
    wall_time REAL,
    created REAL NOT NULL,
    finished REAL,
    finish_order INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS promotions (
    candidate INTEGER NOT NULL REFERENCES candidates(id),
    rung INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'rejected')),
    protocol TEXT,
    reason TEXT,
    scores TEXT,
    mean_score REAL,
    wall_time REAL,
    created REAL NOT NULL,
    finished REAL,
    finish_order INTEGER,
    PRIMARY KEY (candidate, rung)
);
CREATE TABLE IF NOT EXISTS rerank (
    settings TEXT NOT NULL,
    layer TEXT NOT NULL,
    seed INTEGER NOT NULL,
    scores TEXT,
    reason TEXT,
    wall_time REAL,
    PRIMARY KEY (settings, layer, seed)
);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS by_hash ON candidates (hash);
CREATE INDEX IF NOT EXISTS by_functional_hash ON candidates (functional_hash);
CREATE INDEX IF NOT EXISTS by_finish_order ON candidates (finish_order);
CREATE INDEX IF NOT EXISTS by_mean_score ON candidates (status, mean_score);
CREATE INDEX IF NOT EXISTS promotions_by_finish_order ON promotions (finish_order);
"""


def _mean(scores: Sequence[float]) -> float:
    return sum(float(s) for s in scores) / max(len(scores), 1)


@dataclass(frozen=True)
class Candidate:
    id: int
    genome: Genome
    hash: str
    functional_hash: Optional[str]
    parent: Optional[int]
    status: str
    protocol: Optional[str]
    reason: Optional[str]
    scores: Optional[Tuple[float, ...]]
    wall_time: Optional[float]
    finished: Optional[float] = None  # unix time
    rung: int = 0  # highest fidelity reached (``top``: ``scores`` are that rung's); 0 elsewhere


@dataclass(frozen=True)
class Promotion:
    """A candidate's training at a higher fidelity ``rung`` (multi-fidelity search): pending, done with
    scores, or rejected with the protocol and reason."""

    candidate_id: int
    rung: int
    status: str
    protocol: Optional[str]
    reason: Optional[str]
    scores: Optional[Tuple[float, ...]]
    wall_time: Optional[float]


class TrainingRecord(NamedTuple):
    """One stored training of a named layer: scores per architecture, or None and the reason it failed."""

    layer: str
    seed: int
    scores: Optional[Tuple[float, ...]]
    reason: Optional[str]
    wall_time: Optional[float]


class SearchStore:
    """One search's SQLite file. ``meta`` holds the run's configuration, so resume needs only the file."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)  # autocommit; explicit transactions
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._add_mean_scores()
        self._db.executescript(INDEXES)

    def _add_mean_scores(self) -> None:
        """Stores written before ``mean_score`` existed get the column, filled from ``scores``."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(candidates)")}
        if "mean_score" in columns:
            return
        with self._transaction():
            self._db.execute("ALTER TABLE candidates ADD COLUMN mean_score REAL")
            for candidate_id, scores in self._db.execute("SELECT id, scores FROM candidates WHERE scores IS NOT NULL").fetchall():
                self._db.execute("UPDATE candidates SET mean_score = ? WHERE id = ?", (_mean(json.loads(scores)), candidate_id))

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------------------------- config
    def set_meta(self, key: str, value: object) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str) -> Optional[object]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def architecture_names(self) -> List[str]:
        """The proxy architectures of the stored config, in score order (empty before a config is stored)."""
        config = self.get_meta("config") or {}
        return [a["name"] for a in config.get("evaluation", {}).get("architectures", [])]

    # ------------------------------------------------------------------------------- transitions
    def add(self, genome: Genome, parent: Optional[int] = None, functional_hash: Optional[str] = None) -> int:
        """Record a proposed candidate as ``pending``; returns its id."""
        cursor = self._db.execute(
            "INSERT INTO candidates (genome, hash, functional_hash, parent, status, created) VALUES (?, ?, ?, ?, 'pending', ?)",
            (genome.to_json(indent=None), genome.hash(), functional_hash, parent, time.time()),
        )
        return int(cursor.lastrowid)

    def _finish(self, candidate_id: int, status: str, **columns: object) -> None:
        self._finish_row("candidates", "id = ?", (candidate_id,), f"candidate {candidate_id}", status, columns)

    def _finish_row(self, table: str, where: str, key: tuple, what: str, status: str, columns: dict) -> None:
        """Mark a pending row finished, numbered in the one finish order that candidates and promotions
        share (resume replays both in that order)."""
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self._transaction():
            (order,) = self._db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(finish_order) FROM candidates), 0), "
                "COALESCE((SELECT MAX(finish_order) FROM promotions), 0)) + 1").fetchone()
            updated = self._db.execute(
                f"UPDATE {table} SET status = ?, finished = ?, finish_order = ?, {assignments} "
                f"WHERE {where} AND status = 'pending'",
                (status, time.time(), order, *columns.values(), *key),
            ).rowcount
        if updated != 1:
            raise ValueError(f"{what} is not pending in {self.path}; it was finished already or never added")

    # ---------------------------------------------------------------------------------- promotions
    def add_promotion(self, candidate_id: int, rung: int) -> None:
        """Record that ``candidate_id`` is being trained at ``rung`` (pending until it finishes)."""
        self._db.execute("INSERT INTO promotions (candidate, rung, status, created) VALUES (?, ?, 'pending', ?)",
                         (candidate_id, rung, time.time()))

    def complete_promotion(self, candidate_id: int, rung: int, scores: Sequence[float], wall_time: float) -> None:
        self._finish_row("promotions", "candidate = ? AND rung = ?", (candidate_id, rung),
                         f"promotion of candidate {candidate_id} to rung {rung}", "done",
                         {"scores": json.dumps([float(s) for s in scores]), "mean_score": _mean(scores), "wall_time": wall_time})

    def reject_promotion(self, candidate_id: int, rung: int, protocol: str, reason: str, wall_time: float) -> None:
        self._finish_row("promotions", "candidate = ? AND rung = ?", (candidate_id, rung),
                         f"promotion of candidate {candidate_id} to rung {rung}", "rejected",
                         {"protocol": protocol, "reason": reason, "wall_time": wall_time})

    def _promotions(self, where: str, order: str) -> List[Promotion]:
        rows = self._db.execute(f"SELECT candidate, rung, status, protocol, reason, scores, wall_time FROM promotions "
                                f"WHERE {where} ORDER BY {order}")
        return [Promotion(c, r, st, p, re, tuple(json.loads(sc)) if sc else None, w) for c, r, st, p, re, sc, w in rows]

    def pending_promotions(self) -> List[Promotion]:
        return self._promotions("status = 'pending'", "created, candidate")

    def promotions(self) -> List[Promotion]:
        """Every promotion, pending ones included, by candidate and rung."""
        return self._promotions("1", "candidate, rung")

    def events(self) -> List[Union[Candidate, Promotion]]:
        """Finished candidates and finished promotions in the one order they finished: what resume replays."""
        candidates = [(o, c) for o, c in zip(self._finish_orders("candidates"), self.finished())]
        promotions = [(o, p) for o, p in zip(self._finish_orders("promotions"), self._promotions("status != 'pending'", "finish_order"))]
        return [event for _, event in sorted(candidates + promotions, key=lambda pair: pair[0])]

    def _finish_orders(self, table: str) -> List[int]:
        return [row[0] for row in self._db.execute(f"SELECT finish_order FROM {table} WHERE status != 'pending' ORDER BY finish_order")]

    def complete(self, candidate_id: int, scores: Sequence[float], wall_time: float) -> None:
        self._finish(candidate_id, "done", scores=json.dumps([float(s) for s in scores]),
                     mean_score=_mean(scores), wall_time=wall_time)

    def complete_as_duplicate(self, candidate_id: int, original: "Candidate") -> None:
        """A candidate that computes the same function as a done one: its scores are reused, not
        re-measured, and it still joins the population (AutoML-Zero's functional equivalence cache)."""
        self._finish(
            candidate_id, "done", protocol="duplicate", reason=f"same function as candidate {original.id}",
            scores=json.dumps(list(original.scores or ())), mean_score=_mean(original.scores or ()), wall_time=0.0,
        )

    def reject(self, candidate_id: int, protocol: str, reason: str, wall_time: float) -> None:
        self._finish(candidate_id, "rejected", protocol=protocol, reason=reason, wall_time=wall_time)

    def _transaction(self):
        db = self._db

        class _Transaction:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, traceback) -> None:
                db.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Transaction()

    # -------------------------------------------------------------------------------- re-ranking
    def record_training(self, settings: str, layer: str, seed: int, scores: Optional[Sequence[float]],
                        reason: Optional[str], wall_time: float) -> None:
        """One finished re-ranking training (``settings``: the re-ranking's key; ``scores`` None when
        it failed, with the ``reason``)."""
        self._db.execute(
            "INSERT OR REPLACE INTO rerank VALUES (?, ?, ?, ?, ?, ?)",
            (settings, layer, seed, json.dumps([float(s) for s in scores]) if scores else None, reason, wall_time),
        )

    def trainings(self, settings: str) -> List["TrainingRecord"]:
        """The stored trainings with these settings (re-ranking, calibration...), by layer and seed."""
        rows = self._db.execute(
            "SELECT layer, seed, scores, reason, wall_time FROM rerank WHERE settings = ? ORDER BY layer, seed", (settings,))
        return [TrainingRecord(layer, seed, tuple(json.loads(scores)) if scores else None, reason, wall_time)
                for layer, seed, scores, reason, wall_time in rows]

    # ------------------------------------------------------------------------------------ queries
    def _rows(self, where: str, args: tuple = (), order: str = "id", limit: int = -1) -> Iterator[Candidate]:
        query = (
            "SELECT id, genome, hash, functional_hash, parent, status, protocol, reason, scores, wall_time, finished "
            f"FROM candidates WHERE {where} ORDER BY {order} LIMIT ?"
        )
        for row in self._db.execute(query, (*args, limit)):
            yield self._candidate(row)

    def _candidate(self, row: tuple, rung: int = 0) -> Candidate:
        return Candidate(
            row[0], Genome.from_json(row[1], source=f"{self.path} candidate {row[0]}"), row[2], row[3], row[4],
            row[5], row[6], row[7], tuple(json.loads(row[8])) if row[8] else None, row[9], row[10], rung,
        )

    def pending(self) -> List[Candidate]:
        return list(self._rows("status = 'pending'"))

    def finished_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM candidates WHERE status != 'pending'").fetchone()[0])

    def finished(self) -> List[Candidate]:
        """Done and rejected candidates in the order they finished (the order to replay)."""
        return list(self._rows("status != 'pending'", order="finish_order"))

    def seen(self, genome_hash: str, functional: Optional[str]) -> Optional[Candidate]:
        """The first finished candidate with the same canonical or functional hash, if any."""
        found = self._rows(
            "status != 'pending' AND (hash = ? OR (functional_hash IS NOT NULL AND functional_hash = ?))",
            (genome_hash, functional),
        )
        return next(found, None)

    def counts(self) -> dict:
        """Candidates by status and rejections by protocol."""
        result = dict(self._db.execute("SELECT status, COUNT(*) FROM candidates GROUP BY status").fetchall())
        for status, protocol, count in self._db.execute(
            "SELECT status, protocol, COUNT(*) FROM candidates WHERE protocol IS NOT NULL GROUP BY status, protocol"
        ):
            result[f"{status}:{protocol}"] = count
        for rung, status, count in self._db.execute("SELECT rung, status, COUNT(*) FROM promotions GROUP BY rung, status"):
            result[f"rung {rung}:{status}"] = count
        return result

    def top(self, k: int) -> List[Candidate]:
        """The k best distinct layers (duplicates, which copy scores, left out), by the highest fidelity
        they reached, then by their mean score there (:mod:`evonorm_search.fidelity`); each with that
        rung's scores and ``rung`` set."""
        query = (
            "SELECT c.id, c.genome, c.hash, c.functional_hash, c.parent, c.status, c.protocol, c.reason, "
            "COALESCE(p.scores, c.scores), c.wall_time, c.finished, COALESCE(p.rung, 0) AS reached, "
            "COALESCE(p.mean_score, c.mean_score) AS score "
            "FROM candidates c LEFT JOIN promotions p ON p.candidate = c.id AND p.status = 'done' AND p.rung = "
            "(SELECT MAX(rung) FROM promotions q WHERE q.candidate = c.id AND q.status = 'done') "
            "WHERE c.status = 'done' AND c.protocol IS NULL ORDER BY reached DESC, score DESC, c.id LIMIT ?"
        )
        return [self._candidate(row[:11], rung=row[11]) for row in self._db.execute(query, (k,))]

    def get(self, candidate_id: int) -> Candidate:
        found = next(self._rows("id = ?", (candidate_id,)), None)
        if found is None:
            raise KeyError(f"no candidate {candidate_id} in {self.path}")
        return found
