"""Switching an SQLite file to WAL mode, shared by the stores that keep state in SQLite.

Security: none of its own; the callers create their files with tight modes first.
Standards: SQLite's WAL documentation (https://sqlite.org/wal.html): changing the journal
mode of a new file takes an exclusive lock, and SQLite does not wait for that lock with
its busy handler.
"""

from __future__ import annotations

import sqlite3
import time

RETRY = 0.02  # seconds between tries


def use_wal(db: sqlite3.Connection, patience: float) -> None:
    """``PRAGMA journal_mode=WAL`` on ``db``. When two processes open a new file at once,
    the one that loses the race for the exclusive lock tries again, for at most
    ``patience`` seconds, then raises SQLite's error."""
    deadline = time.monotonic() + patience
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(RETRY)
