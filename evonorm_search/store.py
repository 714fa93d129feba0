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
from typing import Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

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
    finish_order INTEGER,
    seeded INTEGER NOT NULL DEFAULT 0,
    retries TEXT
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
    retries TEXT,
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
CANDIDATE_COLUMNS = ("id, genome, hash, functional_hash, parent, status, protocol, reason, scores, wall_time, finished, "
                     "seeded, retries")
INDEXES = """
CREATE INDEX IF NOT EXISTS by_hash ON candidates (hash);
CREATE INDEX IF NOT EXISTS by_functional_hash ON candidates (functional_hash);
CREATE INDEX IF NOT EXISTS by_finish_order ON candidates (finish_order);
CREATE INDEX IF NOT EXISTS by_mean_score ON candidates (status, mean_score);
CREATE INDEX IF NOT EXISTS promotions_by_finish_order ON promotions (finish_order);
"""


def _retries(causes: Sequence[str]) -> Optional[str]:
    return json.dumps(list(causes)) if causes else None


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
    seeded: bool = False  # one of the search's seeds (a paper layer), not found by the search
    retries: Tuple[str, ...] = ()  # why each earlier attempt at its evaluation produced nothing


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


class StoreError(ValueError):
    """A file that cannot be used as a search store, said in one line."""


class SearchStore:
    """One search's SQLite file. ``meta`` holds the run's configuration, so resume needs only the file.

    ``read_only`` opens an existing store without writing anything (``top``, ``export``, ``plot``);
    otherwise the file is created if missing. Either way a file that is not a search store (another
    application's database, a damaged or truncated file) is refused with a :class:`StoreError`. Who may
    write is the controller's business (:mod:`.lock`)."""

    def __init__(self, path: Union[str, Path], read_only: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise StoreError(f"{self.path} is a folder; give the search store's file, e.g. runs/search.sqlite")
        if read_only and not self.path.is_file():
            raise StoreError(f"no search store at {str(self.path)!r}; start a search with `evonorm-search run`")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if read_only:
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            else:
                self._db = sqlite3.connect(str(self.path), isolation_level=None)  # autocommit; explicit transactions
            self._check_is_store(read_only)
            if not read_only:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
                self._add_columns()
                self._db.executescript(INDEXES)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path} is not a search store or is damaged ({error}); give the store a search "
                             f"wrote, or a new path") from None

    def _check_is_store(self, read_only: bool) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not {"candidates", "meta"} <= tables:
            others = ", ".join(sorted(t for t in tables if not t.startswith("sqlite_")))
            raise StoreError(f"{self.path} is not a search store (it holds the tables {others}); give a new path")
        if read_only and not tables:
            raise StoreError(f"{self.path} is not a search store (it is empty); start a search with `evonorm-search run`")
        if read_only and "seeded" not in {row[1] for row in self._db.execute("PRAGMA table_info(candidates)")}:
            raise StoreError(f"{self.path} was written by an older version; run `evonorm-search resume --store "
                             f"{self.path}` once to bring it up to date")

    def _add_columns(self) -> None:
        """Stores written by earlier versions get the columns added since (``mean_score`` filled from ``scores``)."""
        columns = {table: {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                   for table in ("candidates", "promotions")}
        added = [("candidates", "seeded", "INTEGER NOT NULL DEFAULT 0"), ("candidates", "retries", "TEXT"),
                 ("promotions", "retries", "TEXT")]
        with self._transaction():
            for table, column, kind in added:
                if column not in columns[table]:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if "mean_score" not in columns["candidates"]:
                self._db.execute("ALTER TABLE candidates ADD COLUMN mean_score REAL")
                for candidate_id, scores in self._db.execute("SELECT id, scores FROM candidates WHERE scores IS NOT NULL").fetchall():
                    self._db.execute("UPDATE candidates SET mean_score = ? WHERE id = ?", (_mean(json.loads(scores)), candidate_id))

    def started(self) -> bool:
        """Whether anything ran on this store (a candidate, a promotion, a training or a baseline): a
        store whose run failed before that may take another config."""
        queries = ("SELECT 1 FROM candidates LIMIT 1", "SELECT 1 FROM promotions LIMIT 1", "SELECT 1 FROM rerank LIMIT 1",
                   "SELECT 1 FROM meta WHERE key = 'baselines'")
        return any(self._db.execute(query).fetchone() for query in queries)

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
    def add(self, genome: Genome, parent: Optional[int] = None, functional_hash: Optional[str] = None,
            seeded: bool = False) -> int:
        """Record a proposed candidate as ``pending``; returns its id."""
        cursor = self._db.execute(
            "INSERT INTO candidates (genome, hash, functional_hash, parent, status, created, seeded) "
            "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            (genome.to_json(indent=None), genome.hash(), functional_hash, parent, time.time(), int(seeded)),
        )
        return int(cursor.lastrowid)

    def seeded_hashes(self) -> Set[str]:
        """The hashes of the seeds proposed so far, finished or pending (resume must not propose them again)."""
        return {row[0] for row in self._db.execute("SELECT hash FROM candidates WHERE seeded")}

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

    def complete_promotion(self, candidate_id: int, rung: int, scores: Sequence[float], wall_time: float,
                           retries: Sequence[str] = ()) -> None:
        self._finish_row("promotions", "candidate = ? AND rung = ?", (candidate_id, rung),
                         f"promotion of candidate {candidate_id} to rung {rung}", "done",
                         {"scores": json.dumps([float(s) for s in scores]), "mean_score": _mean(scores), "wall_time": wall_time,
                          "retries": _retries(retries)})

    def reject_promotion(self, candidate_id: int, rung: int, protocol: str, reason: str, wall_time: float,
                         retries: Sequence[str] = ()) -> None:
        self._finish_row("promotions", "candidate = ? AND rung = ?", (candidate_id, rung),
                         f"promotion of candidate {candidate_id} to rung {rung}", "rejected",
                         {"protocol": protocol, "reason": reason, "wall_time": wall_time, "retries": _retries(retries)})

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

    def complete(self, candidate_id: int, scores: Sequence[float], wall_time: float, retries: Sequence[str] = ()) -> None:
        """A trained candidate; ``retries``: why each earlier attempt at it produced nothing (a dead worker)."""
        self._finish(candidate_id, "done", scores=json.dumps([float(s) for s in scores]),
                     mean_score=_mean(scores), wall_time=wall_time, retries=_retries(retries))

    def complete_as_duplicate(self, candidate_id: int, original: "Candidate") -> None:
        """A candidate that computes the same function as a done one: its scores are reused, not
        re-measured, and it still joins the population (AutoML-Zero's functional equivalence cache)."""
        self._finish(
            candidate_id, "done", protocol="duplicate", reason=f"same function as candidate {original.id}",
            scores=json.dumps(list(original.scores or ())), mean_score=_mean(original.scores or ()), wall_time=0.0,
        )

    def reject(self, candidate_id: int, protocol: str, reason: str, wall_time: float, retries: Sequence[str] = ()) -> None:
        self._finish(candidate_id, "rejected", protocol=protocol, reason=reason, wall_time=wall_time, retries=_retries(retries))

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
            f"SELECT {CANDIDATE_COLUMNS} FROM candidates WHERE {where} ORDER BY {order} LIMIT ?"
        )
        for row in self._db.execute(query, (*args, limit)):
            yield self._candidate(row)

    def _candidate(self, row: tuple, rung: int = 0) -> Candidate:
        return Candidate(
            row[0], Genome.from_json(row[1], source=f"{self.path} candidate {row[0]}"), row[2], row[3], row[4],
            row[5], row[6], row[7], tuple(json.loads(row[8])) if row[8] else None, row[9], row[10], rung,
            bool(row[11]), tuple(json.loads(row[12])) if row[12] else (),
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
            "COALESCE(p.scores, c.scores), c.wall_time, c.finished, c.seeded, c.retries, COALESCE(p.rung, 0) AS reached, "
            "COALESCE(p.mean_score, c.mean_score) AS score "
            "FROM candidates c LEFT JOIN promotions p ON p.candidate = c.id AND p.status = 'done' AND p.rung = "
            "(SELECT MAX(rung) FROM promotions q WHERE q.candidate = c.id AND q.status = 'done') "
            "WHERE c.status = 'done' AND c.protocol IS NULL ORDER BY reached DESC, score DESC, c.id LIMIT ?"
        )
        return [self._candidate(row[:13], rung=row[13]) for row in self._db.execute(query, (k,))]

    def get(self, candidate_id: int) -> Candidate:
        found = next(self._rows("id = ?", (candidate_id,)), None)
        if found is None:
            raise KeyError(f"no candidate {candidate_id} in {self.path}")
        return found
