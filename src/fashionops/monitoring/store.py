"""The observation log: one SQLite table, one row per image a model saw (``monitor.store``).

Safe for many writers at once, threads and processes alike: WAL journal (readers never block the
writer), a busy timeout (a writer waits for the lock instead of failing) and one ``BEGIN
IMMEDIATE`` transaction per append (a batch lands whole or not at all). Each call opens its own
connection, so nothing is shared between threads. Rows are only ever inserted.

Columns: ``id`` (insertion order), ``ts`` (UTC, ISO 8601), ``source`` (``serve``, ``score``,
...), ``model_version``, ``item_id``, ``predicted``, ``confidence``, the image facts
(:mod:`fashionops.monitoring.facts`) and ``projection`` (float32 bytes,
:mod:`fashionops.monitoring.projection`; NULL when the caller had no embedding).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fashionops.errors import FashionOpsError

BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    source TEXT NOT NULL,
    model_version TEXT,
    item_id TEXT,
    predicted TEXT,
    confidence REAL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    brightness REAL NOT NULL,
    contrast REAL NOT NULL,
    colourfulness REAL NOT NULL,
    projection BLOB
);
CREATE INDEX IF NOT EXISTS observations_ts ON observations (ts);
"""
COLUMNS = (
    "ts",
    "source",
    "model_version",
    "item_id",
    "predicted",
    "confidence",
    "height",
    "width",
    "brightness",
    "contrast",
    "colourfulness",
    "projection",
)


@contextmanager
def connect(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection to the store at ``path`` (created with its table if missing), closed afterwards."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves (the write lock up front, so two
    # writers never deadlock upgrading a read lock).
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        conn.executescript(_SCHEMA)
        yield conn
    finally:
        conn.close()


def append_rows(path: str | Path, rows: Iterable[tuple[Any, ...]]) -> int:
    """Insert ``rows`` (tuples in :data:`COLUMNS` order) in one transaction; returns how many."""
    batch = list(rows)
    if not batch:
        return 0
    placeholders = ", ".join("?" for _ in COLUMNS)
    with connect(path) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT INTO observations ({', '.join(COLUMNS)}) VALUES ({placeholders})", batch)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return len(batch)


def load_window(
    path: str | Path, *, last: int | None = None, since: str | None = None, source: str | None = None
) -> pd.DataFrame:
    """The observations of a window, oldest first: those of ``source`` (any when None) at or after
    ``since`` (an ISO time, UTC when it names no zone), the latest ``last`` of them (all when None).
    ``projection`` comes back as a float32 array per row (None where there was none)."""
    path = Path(path)
    if not path.exists():
        raise FashionOpsError(f"{path}: no observation log yet (monitor.store); record some first")
    where: list[str] = []
    args: list[str] = []
    if source:
        where.append("source = ?")
        args.append(source)
    if since:
        where.append("ts >= ?")
        args.append(parse_since(since))
    query = "SELECT id, " + ", ".join(COLUMNS) + " FROM observations"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY id DESC"
    if last:
        query += f" LIMIT {int(last)}"
    with connect(path) as conn:
        frame = pd.read_sql_query(query, conn, params=args)
    frame = frame.iloc[::-1].reset_index(drop=True)
    frame["projection"] = [None if b is None else np.frombuffer(b, dtype=np.float32) for b in frame["projection"]]
    return frame


def parse_since(text: str) -> str:
    """``text`` (ISO 8601; no zone = UTC) as the store's UTC timestamp text, or a FashionOpsError."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FashionOpsError(f"--since {text!r}: not an ISO time (e.g. 2026-12-01T06:00)") from None
    if when.tzinfo is None:
        return when.isoformat(timespec="microseconds") + "+00:00"
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")
