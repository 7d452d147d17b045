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
closure to a worker thread that owns the connection. The worker commits in groups: the
jobs that queued up while it was busy run in one transaction (each in a savepoint, so a
failing job fails alone), and their callers learn their results only after the COMMIT, so
no answer ever rests on state that is not yet durable; under load one commit serves many
requests. One thread means the requests of this process are serialised without locks;
``BEGIN IMMEDIATE`` takes SQLite's write lock up front, so another process (the
``postwarden greylist`` CLI while the daemon runs) waits for it (``busy_timeout``)
instead of failing half-way through. The decisions
are ``greylist_step``, ``awl_step`` and ``rate_step`` from the package, called inside the
transaction. ``PRAGMA user_version`` holds the schema version.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
MAX_BATCH = 256  # jobs per group commit
SETUP_RETRY = 0.02  # seconds
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
        self._db: sqlite3.Connection | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="pw-sqlite",
                                            daemon=True)
            self._thread.start()
        self._jobs.put(_Job(work, future, loop))
        return await future

    def _worker(self) -> None:
        """Group commit: every job waiting when the thread wakes runs in one transaction,
        each in a savepoint of its own; answers go out only after the COMMIT."""
        while True:
            job = self._jobs.get()
            if job is None:
                break
            batch = [job]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._run_batch(batch)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run_batch(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[bool, object]] = []
        try:
            if self._db is None:
                self._db = self._connect()
            db = self._db
            with _transaction(db):
                for job in batch:
                    try:
                        with _transaction(db):
                            outcomes.append((True, job.work(db)))
                    except Exception as exc:  # the job's caller gets it; the thread goes on
                        outcomes.append((False, _store_error(self.path, exc)))
        except Exception as exc:
            outcomes = [(False, _store_error(self.path, exc))] * len(batch)
        # One wake-up of each event loop per batch, not one per job.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool,
                                                            object]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

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
            self._set_up(db)
        except BaseException:
            db.close()
            raise
        return db

    def _set_up(self, db: sqlite3.Connection) -> None:
        """WAL mode and the schema. Switching a new file to WAL takes an exclusive lock and
        SQLite does not wait for it (no busy handler), so when two processes open a new
        file at once the loser tries again, for at most the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(SETUP_RETRY)
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
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)


@dataclass(frozen=True)
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, object]]) -> None:
    for future, ok, value in settled:
        if future.cancelled():
            continue  # the request gave up (its budget ran out); the write stands
        if ok:
            future.set_result(value)
        else:
            assert isinstance(value, BaseException)
            future.set_exception(value)


def _store_error(path: Path, exc: Exception) -> Exception:
    """sqlite3's errors as StoreError; anything else (a bug) as it is."""
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"sqlite store {path}: {exc}")
    return exc


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception); inside an open
    transaction a savepoint instead, so one job of a batch fails alone."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.db.in_transaction
        self.db.execute("SAVEPOINT job" if self.nested else "BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if not self.nested:
            self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
            return
        if kind is not None:
            self.db.execute("ROLLBACK TO job")
        self.db.execute("RELEASE job")
