"""The SQLite state store: one file, WAL mode, every call on one worker thread.

Security: the database file is created 0600 and a missing state directory 0700; keys and
values travel as SQL parameters only. A corrupt or newer-schema file raises ``StoreError``
(the service answers fail-safe) rather than being rewritten.
Standards: SQLite's WAL documentation (https://sqlite.org/wal.html): with
``synchronous=NORMAL`` a committed transaction survives a crash of the process (not
necessarily a power loss), at the cost of one fsync per checkpoint instead of per commit.

Theory of operation
-------------------
sqlite3 calls block, so the event loop never makes them: each public method hands one
closure to a single-thread executor that owns the connection. One thread means the
requests of this process are serialised without locks; ``BEGIN IMMEDIATE`` takes SQLite's
write lock up front, so another process (the ``postwarden greylist`` CLI while the daemon
runs) waits for it (``busy_timeout``) instead of failing half-way through. The decisions
are ``greylist_step``, ``awl_step`` and ``rate_step`` from the package, called inside the
transaction. ``PRAGMA user_version`` holds the schema version.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from postwarden.policy.store import (
    Attempt,
    AwlEntry,
    GreylistTiming,
    RateCharge,
    RateResult,
    RateState,
    StoreError,
    Triplet,
    TripletEntry,
    awl_step,
    greylist_step,
    rate_step,
)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE greylist (key TEXT PRIMARY KEY, client TEXT NOT NULL, sender TEXT NOT NULL,"
    " recipient TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,"
    " expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX greylist_expires ON greylist (expires)",
    "CREATE INDEX greylist_client ON greylist (client)",
    "CREATE TABLE awl (client TEXT PRIMARY KEY, count INTEGER NOT NULL, last INTEGER NOT NULL,"
    " expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX awl_expires ON awl (expires)",
    "CREATE TABLE rate (key TEXT PRIMARY KEY, a REAL NOT NULL, b REAL NOT NULL,"
    " c REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX rate_expires ON rate (expires)",
)
_TABLES = ("greylist", "awl", "rate")
_KEYS = {"greylist": "key", "awl": "client", "rate": "key"}


class SqliteStore:
    """``Store`` on one SQLite file; opened lazily on the worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pw-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._db is None:
                self._db = self._connect()
            return work(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite store {self.path}: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o700, parents=True)
            parent.chmod(0o700)  # whatever the umask; an existing directory is left alone
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"sqlite store {parent}: {exc.strerror}") from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"sqlite store {self.path}: {exc.strerror}") from None
        os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            with _transaction(db):
                version = int(db.execute("PRAGMA user_version").fetchone()[0])
                if version == 0:
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                elif version != SCHEMA_VERSION:
                    raise StoreError(f"sqlite store {self.path}: schema version {version}, "
                                     f"this postwarden knows {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    async def greylist_attempt(self, triplet: Triplet, now: int,
                               timing: GreylistTiming) -> Attempt:
        def work(db: sqlite3.Connection) -> Attempt:
            with _transaction(db):
                row = db.execute("SELECT first, last FROM greylist WHERE key=? AND expires>?",
                                 (triplet.key, now)).fetchone()
                previous = (int(row[0]), int(row[1])) if row else None
                attempt, first, expires = greylist_step(previous, now, timing)
                db.execute("INSERT OR REPLACE INTO greylist VALUES (?,?,?,?,?,?,?)",
                           (triplet.key, triplet.client, triplet.sender, triplet.recipient,
                            first, now, expires))
            return attempt
        return await self._run(work)

    async def awl_count(self, client: str, now: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT count FROM awl WHERE client=? AND expires>?",
                             (client, now)).fetchone()
            return int(row[0]) if row else 0
        return await self._run(work)

    async def awl_bump(self, client: str, now: int, max_age: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                row = db.execute("SELECT count, last FROM awl WHERE client=? AND expires>?",
                                 (client, now)).fetchone()
                previous = (int(row[0]), int(row[1])) if row else None
                step = awl_step(previous, now, max_age)
                if step is None:
                    return previous[0] if previous else 0
                db.execute("INSERT OR REPLACE INTO awl VALUES (?,?,?,?)", (client, *step))
                return step[0]
        return await self._run(work)

    async def awl_set(self, client: str, now: int, count: int, max_age: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                row = db.execute("SELECT count FROM awl WHERE client=? AND expires>?",
                                 (client, now)).fetchone()
                new = max(count, int(row[0]) if row else 0)
                db.execute("INSERT OR REPLACE INTO awl VALUES (?,?,?,?)",
                           (client, new, now, float(now + max_age)))
                return new
        return await self._run(work)

    async def rate_consume(self, charges: Sequence[RateCharge],
                           now: float) -> tuple[RateResult, ...]:
        def work(db: sqlite3.Connection) -> tuple[RateResult, ...]:
            with _transaction(db):
                results: list[RateResult] = []
                states: dict[str, RateState] = {}
                for charge in charges:
                    state = states.get(charge.key)
                    if state is None:
                        row = db.execute("SELECT a, b, c, expires FROM rate WHERE key=? "
                                         "AND expires>?", (charge.key, now)).fetchone()
                        state = RateState(*row) if row else None
                    result, new = rate_step(state, charge, now)
                    results.append(result)
                    states[charge.key] = new
                if all(result.allowed for result in results):
                    db.executemany("INSERT OR REPLACE INTO rate VALUES (?,?,?,?,?)",
                                   [(key, s.a, s.b, s.c, s.expires)
                                    for key, s in states.items()])
                return tuple(results)
        return await self._run(work)

    async def list_triplets(self, now: int, limit: int = 10_000) -> list[TripletEntry]:
        def work(db: sqlite3.Connection) -> list[TripletEntry]:
            rows = db.execute("SELECT key, client, sender, recipient, first, last, expires "
                              "FROM greylist WHERE expires>? ORDER BY key LIMIT ?",
                              (now, limit)).fetchall()
            return [TripletEntry(*row) for row in rows]
        return await self._run(work)

    async def list_awl(self, now: int, limit: int = 10_000) -> list[AwlEntry]:
        def work(db: sqlite3.Connection) -> list[AwlEntry]:
            rows = db.execute("SELECT client, count, last, expires FROM awl WHERE expires>? "
                              "ORDER BY client LIMIT ?", (now, limit)).fetchall()
            return [AwlEntry(*row) for row in rows]
        return await self._run(work)

    async def delete_triplets(self, *, key: str | None = None, client: str | None = None,
                              sender: str | None = None) -> int:
        if key is None and client is None and sender is None:
            raise StoreError("delete_triplets: give a key, a client or a sender")
        sql = ("DELETE FROM greylist WHERE (?1 IS NULL OR key=?1) AND "
               "(?2 IS NULL OR client=?2) AND (?3 IS NULL OR sender=?3)")
        args = (key, client, sender)

        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute(sql, args).rowcount
        return await self._run(work)

    async def delete_awl(self, client: str) -> int:
        def work(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute("DELETE FROM awl WHERE client=?", (client,)).rowcount
        return await self._run(work)

    async def expire(self, now: float, batch: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            done = 0
            with _transaction(db):
                for table in _TABLES:
                    if done >= batch:
                        break
                    key = _KEYS[table]
                    # Indexed range, bounded: never a walk of the whole table.
                    done += db.execute(
                        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "  # noqa: S608 - table names are constants
                        "WHERE expires<=? ORDER BY expires LIMIT ?)",
                        (now, batch - done)).rowcount
            return done
        return await self._run(work)

    async def close(self) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.close()
        if self._db is not None:
            await self._run(work)
            self._db = None
        self._executor.shutdown(wait=True)


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
