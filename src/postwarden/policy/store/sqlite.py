"""The SQLite state store: one file, WAL mode, group commits on the event loop's thread.

Security: the database file is created 0600 and a missing state directory 0700; keys and
values travel as SQL parameters only. A corrupt or newer-schema file raises ``StoreError``
(the service answers fail-safe) rather than being rewritten.
Standards: SQLite's WAL documentation (https://sqlite.org/wal.html): with
``synchronous=NORMAL`` a committed transaction survives a crash of the process (not
necessarily a power loss or a kernel crash), at the cost of one fsync per checkpoint
instead of per commit.

Theory of operation
-------------------
1. Group commit on the event loop's thread. A call queues its job and, if none is pending,
   schedules a flush with ``call_soon``; so every job queued while the loop runs one pass
   over its ready callbacks (under load, the requests of many connections) is flushed
   together in the next pass: ``BEGIN IMMEDIATE``, the jobs, ``COMMIT``, and only then do
   the callers get their results. Should a job raise (it does not in normal operation),
   the transaction is rolled back and the group runs again with each job in a savepoint
   of its own, so that the failing job fails alone.
   No answer ever rests on state that is not committed. This is cheap enough for the loop:
   a statement is microseconds of CPU and, with ``synchronous=NORMAL`` in WAL mode, a
   COMMIT is a ``write()`` into the WAL, never an fsync, so nothing here waits for a disk.
2. The write lock. The loop's connection has a busy timeout of 0, so ``BEGIN IMMEDIATE``
   fails at once when another connection holds the lock (the ``postwarden greylist`` CLI,
   another process on the same file); the flush is then tried again every ``LOCK_RETRY``
   seconds on the loop, with whatever jobs came meanwhile. After ``LOCK_PATIENCE`` seconds
   the jobs go to a worker thread with a connection of its own, which may block
   (``busy_timeout``) without stopping the loop and commits the jobs that queued up
   meanwhile in one transaction, each in a savepoint, answering after the COMMIT. Opening
   the file (which may wait for another process switching it to WAL) and the incremental
   expiry (bounded deletes) run on that thread too.
3. Checkpoints (copying the WAL into the database file, the one step that fsyncs) are
   kept off the loop: its connection has ``wal_autocheckpoint=0`` and, after every
   ``CHECKPOINT_JOBS`` jobs or ``CHECKPOINT_EVERY`` seconds of writing, has the worker run
   a passive checkpoint while group commits go on: it does the copying and the syncing.
   Under steady writes the WAL still never starts over that way (it is never all copied
   when the next transaction begins), so once it holds ``RESTART_FRAMES`` a second
   checkpoint (``RESTART``) runs while this process's group commits wait and another
   process's are kept out for at most ``CHECKPOINT_WAIT_MS``. It has only the frames
   written during the first to copy, and the next transaction writes the WAL from its
   beginning again: the file stays at most about 64 MB. That wait is mostly its fsync, 2
   to 5 ms on the test machine's disk, and the requests of those milliseconds wait too:
   at 18,000 requests a second with a restart every 4,096 frames (about 5,000 new
   triplets) they were 1% of all requests, the whole p99; every 16,384 frames it is a
   quarter of that.
   Checkpoints are small and frequent on purpose: one copying the frames of 2,000 jobs
   took 10 ms of a CPU that the loop and its clients were using, and the requests of
   those milliseconds waited (p99 6 to 25 ms at 10,000 requests a second over 50
   connections); with 500 jobs or a quarter second, p99 was 2 to 5 ms at the same CPU
   per request.
4. Expiry needs no index on the expiry times (an index on ``expires`` would cost every
   update another B-tree page in the WAL): each call walks at most ``SWEEP_ROWS`` rows of
   each table in key order from where the last one stopped, and deletes the due ones.
5. A store belongs to one event loop. The decisions are ``greylist_step``, ``awl_step``
   and ``rate_step`` from the package, called inside the transaction. ``PRAGMA
   user_version`` holds the schema version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from postwarden.policy.store import (
    Attempt,
    AwlEntry,
    GreylistOutcome,
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
from postwarden.sqlite_wal import use_wal

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5000
MAX_BATCH = 256  # jobs per group commit
LOCK_RETRY = 0.0002  # seconds between tries for the write lock on the loop
LOCK_PATIENCE = 0.05  # seconds of those tries before the worker thread waits instead
CHECKPOINT_EVERY = 0.25  # seconds: at most this long between checkpoints while writing
CHECKPOINT_JOBS = 500  # jobs: or after this many (small and often: see theory point 3)
RESTART_FRAMES = 16384  # WAL frames (64 MB of 4 KiB pages) after which the WAL starts over
CHECKPOINT_WAIT_MS = 20  # how long a checkpoint waits for another process's writes
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes: a WAL bigger than this is cut back when reset
# KiB of pages the loop's connection keeps (SQLite's default is 2 MiB, a tenth of a
# greylist of 100,000 triplets; each page it must read again is a pread() on the loop).
CACHE_KIB = 32 * 1024
T = TypeVar("T")
# What a job runs its statements on: the loop's jobs get one cursor kept for them (a new
# cursor per statement, as Connection.execute makes, was 1% of a request's instructions);
# on the worker thread, its connection.
Statements = sqlite3.Connection | sqlite3.Cursor

# No secondary indexes: each would cost every write another B-tree page in the WAL (an
# index on expires changes at every update). Expiry sweeps the tables in key order.
_SCHEMA = (
    "CREATE TABLE greylist (key TEXT PRIMARY KEY, client TEXT NOT NULL, sender TEXT NOT NULL,"
    " recipient TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,"
    " expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE awl (client TEXT PRIMARY KEY, count INTEGER NOT NULL, last INTEGER NOT NULL,"
    " expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE rate (key TEXT PRIMARY KEY, a REAL NOT NULL, b REAL NOT NULL,"
    " c REAL NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
)
# From each older version to the next.
_MIGRATIONS = {
    1: ("DROP INDEX IF EXISTS greylist_expires", "DROP INDEX IF EXISTS greylist_client",
        "DROP INDEX IF EXISTS awl_expires", "DROP INDEX IF EXISTS rate_expires"),
}
SWEEP_ROWS = 2000  # rows of each table that one expiry call looks at
_TABLES = ("greylist", "awl", "rate")
_KEYS = {"greylist": "key", "awl": "client", "rate": "key"}


class SqliteStore:
    """``Store`` on one SQLite file, for one event loop; opened lazily."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None        # the worker thread's
        self._loop_db: sqlite3.Connection | None = None   # the event loop's
        self._loop_cursor: sqlite3.Cursor | None = None   # the loop's jobs run on it
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._queued: list[tuple[Callable[[Statements], Any],
                                 asyncio.Future[Any]]] = []  # for the next group commit
        self._flush_handle: asyncio.Handle | None = None
        self._locked_since: float | None = None
        self._checkpoint_due = 0.0
        self._checkpointing = False
        self._paused = False  # group commits wait for the end of a checkpoint
        self._careful = False  # the next group commit gives each job a savepoint
        self._since_checkpoint = 0
        self._sweep_from: dict[str, str] = {}  # table -> the key the expiry stopped at
        self._tasks: set[asyncio.Task[None]] = set()
        self._opening: asyncio.Future[sqlite3.Connection] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the one _run last ran on

    def _run(self, work: Callable[[Statements], T]) -> Awaitable[T]:
        """Queue ``work`` for the loop's next group commit (on the worker when another
        process keeps the write lock); its result once it is committed. Once the loop's
        connection is open that is the job's future itself, with no coroutine around it
        (a request's greylist step awaits it directly: 1% of its instructions)."""
        if self._loop_db is None:
            return self._open_and_run(work)
        loop = self._loop  # (Python 3.11's get_running_loop() makes a getpid() call)
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queued.append((work, future))
        if self._flush_handle is None and not self._paused:
            self._flush_handle = loop.call_soon(self._flush)
        return future

    async def _open_and_run(self, work: Callable[[Statements], T]) -> T:
        await self._open()
        return await self._run(work)

    async def _open(self) -> sqlite3.Connection:
        """The loop's connection; concurrent first calls share one opening."""
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.ensure_future(
                self._in_thread(self._open_loop_connection, transaction=False))
        try:
            db = await asyncio.shield(opening)
        except BaseException:
            if self._opening is opening and opening.done():
                self._opening = None  # a failed opening is tried again by the next call
            raise
        if self._loop_db is None:
            self._loop_db, self._loop_cursor = db, db.cursor()
        return db

    def _flush(self) -> None:
        """One group commit: ``BEGIN IMMEDIATE``, every queued job in a savepoint of its
        own, ``COMMIT``; only then the callers get their results."""
        self._flush_handle = None
        db = self._loop_db
        jobs, self._queued = self._queued, []
        if not jobs:
            return
        if db is None:
            _settle_all([(f, False, StoreError(f"sqlite store {self.path}: closed"))
                         for _, f in jobs])
            return
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                _settle_all([(f, False, _store_error(self.path, exc)) for _, f in jobs])
            else:
                self._wait_for_lock(jobs)
            return
        self._locked_since = None
        jobs = [(work, future) for work, future in jobs if not future.cancelled()]
        # (a cancelled one gave up, its budget spent, before its turn)
        settled = self._run_jobs(db, jobs)
        if settled is None:  # one failed: none of it stands, each again on its own
            with contextlib.suppress(sqlite3.Error):  # (if even this fails, BEGIN will)
                db.execute("ROLLBACK")
            self._careful = True
            self._queued[:0] = jobs
            if self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
            return
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            error: object = _store_error(self.path, exc)
            if db.in_transaction:
                db.execute("ROLLBACK")
            settled = [(future, False, error) for future, _, _ in settled]
        _settle_all(settled)
        self._maybe_checkpoint(len(settled))

    def _run_jobs(self, db: sqlite3.Connection,
                  jobs: list[tuple[Callable[[Statements], Any],
                                   asyncio.Future[Any]]],
                  ) -> list[tuple[asyncio.Future[Any], bool, object]] | None:
        """Every job in the open transaction. Jobs do not fail in normal operation, so
        they run side by side with no savepoint each (two statements fewer per job);
        None if one raised. After that, the next group runs ``_careful``ly: each job in
        a savepoint of its own, so that a failing job fails alone."""
        settled: list[tuple[asyncio.Future[Any], bool, object]] = []
        cursor = self._loop_cursor
        assert cursor is not None  # made with the loop's connection
        if not self._careful:
            try:
                for work, future in jobs:
                    settled.append((future, True, work(cursor)))
            except Exception:
                return None
            return settled
        self._careful = False
        for work, future in jobs:
            try:
                with _transaction(db):  # a savepoint: a failing job leaves nothing behind
                    settled.append((future, True, work(cursor)))
            except Exception as exc:
                settled.append((future, False, _store_error(self.path, exc)))
        return settled

    def _wait_for_lock(self, jobs: list[tuple[Callable[[Statements], Any],
                                              asyncio.Future[Any]]]) -> None:
        """Another connection holds the write lock: try again shortly, on the loop, for
        ``LOCK_PATIENCE`` seconds; then the worker thread (which may block) takes them."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._locked_since is None:
            self._locked_since = now
        if now - self._locked_since >= LOCK_PATIENCE:
            for work, future in jobs:  # the same futures, answered from the worker
                if not future.cancelled():
                    self._to_worker(_Job(work, future, loop, True))
            self._locked_since = None
            return
        self._queued[:0] = jobs  # first in the next attempt, with whatever came meanwhile
        self._flush_handle = loop.call_later(LOCK_RETRY, self._flush)

    def _maybe_checkpoint(self, jobs: int) -> None:
        """After a COMMIT: a checkpoint when ``CHECKPOINT_JOBS`` jobs or
        ``CHECKPOINT_EVERY`` seconds have gone by since the last one started."""
        self._since_checkpoint += jobs
        now = time.monotonic()
        if self._checkpointing or self._since_checkpoint == 0 or (
                self._since_checkpoint < CHECKPOINT_JOBS and now < self._checkpoint_due):
            return
        self._checkpoint_due = now + CHECKPOINT_EVERY
        self._since_checkpoint = 0
        self._checkpointing = True
        task = asyncio.get_running_loop().create_task(self._checkpoint())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checkpoint(self) -> None:
        """A passive checkpoint while group commits go on (it copies the WAL and syncs,
        the slow part); then, once the WAL holds ``RESTART_FRAMES``, a second one while
        they wait, which has only the few frames written meanwhile to copy, so that the
        next transaction writes the WAL from its beginning again."""
        try:
            frames = await self._in_thread(_checkpoint_passive, transaction=False)
            if frames >= RESTART_FRAMES:
                self._paused = True
                await self._in_thread(_checkpoint_restart, transaction=False)
        except Exception:  # noqa: S110 - the next one tries again; SQLite stays consistent
            pass
        finally:
            self._checkpointing = False
            self._paused = False
            if self._queued and self._flush_handle is None and self._loop_db is not None:
                self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _open_loop_connection(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """The event loop's connection, made on the worker once the file is set up."""
        del db  # the worker's own connection: opening it set the file up
        loop_db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            loop_db.execute("PRAGMA synchronous=NORMAL")
            loop_db.execute("PRAGMA busy_timeout=0")
            loop_db.execute("PRAGMA wal_autocheckpoint=0")
            loop_db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            loop_db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        except BaseException:
            loop_db.close()
            raise
        return loop_db

    async def _in_thread(self, work: Callable[[sqlite3.Connection], T], *,
                         transaction: bool = True) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._to_worker(_Job(work, future, loop, transaction))
        return await future

    def _to_worker(self, job: _Job) -> None:
        """Hand a job to the worker thread (started on first use); it settles the job's
        future on the job's loop."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="pw-sqlite",
                                            daemon=True)
            self._thread.start()
        self._jobs.put(job)

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
            self._run_batch([job for job in batch if job.transaction], True)
            self._run_batch([job for job in batch if not job.transaction], False)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run_batch(self, batch: list[_Job], transaction: bool) -> None:
        if not batch:
            return
        outcomes: list[tuple[bool, object]] = []
        try:
            if self._db is None:
                self._db = self._connect()
            db = self._db
            with _transaction(db) if transaction else contextlib.nullcontext():
                for job in batch:
                    try:
                        with _transaction(db) if transaction else contextlib.nullcontext():
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
        use_wal(db, BUSY_TIMEOUT_MS / 1000)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        with _transaction(db):
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version in _MIGRATIONS:
                for old in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[old]:
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StoreError(f"sqlite store {self.path}: schema version {version}, "
                                 f"this postwarden knows {SCHEMA_VERSION}")

    async def greylist_attempt(self, triplet: Triplet, now: int,
                               timing: GreylistTiming) -> Attempt:
        return await self._run(lambda db: _greylist_attempt(db, triplet, now, timing))

    def greylist(self, triplet: Triplet, client: str, now: int, timing: GreylistTiming,
                 awl_clients: int) -> Awaitable[GreylistOutcome]:
        """``greylist_request``'s steps as one job of the group commit. Both records are
        read with one statement (one execute less per request than two lookups)."""
        def work(db: Statements) -> GreylistOutcome:
            if not awl_clients:
                attempt = _greylist_attempt(db, triplet, now, timing)
                return GreylistOutcome(attempt, False)
            count, last, first, seen = db.execute(_BOTH, (client, now, triplet.key,
                                                          now)).fetchone()
            awl = (int(count), int(last)) if count is not None else None
            if awl is not None and awl[0] >= awl_clients:
                _awl_bump(db, client, awl, now, timing.max_age)
                return GreylistOutcome(None, False)
            previous = (int(first), int(seen)) if first is not None else None
            attempt = _greylist_record(db, triplet, now, timing, previous)
            outcome = GreylistOutcome(attempt, False)
            if outcome.passed(now, timing) and not attempt.passed_before:
                bumped = _awl_bump(db, client, awl, now, timing.max_age)
                return GreylistOutcome(attempt, bumped == awl_clients)
            return outcome
        return self._run(work)

    async def awl_count(self, client: str, now: int) -> int:
        def work(db: Statements) -> int:
            row = db.execute("SELECT count FROM awl WHERE client=? AND expires>?",
                             (client, now)).fetchone()
            return int(row[0]) if row else 0
        return await self._run(work)

    async def awl_bump(self, client: str, now: int, max_age: int) -> int:
        def work(db: Statements) -> int:
            row = db.execute("SELECT count, last FROM awl WHERE client=? AND expires>?",
                             (client, now)).fetchone()
            previous = (int(row[0]), int(row[1])) if row else None
            return _awl_bump(db, client, previous, now, max_age)
        return await self._run(work)

    async def awl_set(self, client: str, now: int, count: int, max_age: int) -> int:
        def work(db: Statements) -> int:
            row = db.execute("SELECT count FROM awl WHERE client=? AND expires>?",
                             (client, now)).fetchone()
            new = max(count, int(row[0]) if row else 0)
            db.execute("INSERT OR REPLACE INTO awl VALUES (?,?,?,?)",
                       (client, new, now, float(now + max_age)))
            return new
        return await self._run(work)

    def rate_consume(self, charges: Sequence[RateCharge],
                     now: float) -> Awaitable[tuple[RateResult, ...]]:
        def work(db: Statements) -> tuple[RateResult, ...]:
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
        return self._run(work)

    async def list_triplets(self, now: int, limit: int = 10_000) -> list[TripletEntry]:
        def work(db: Statements) -> list[TripletEntry]:
            rows = db.execute("SELECT key, client, sender, recipient, first, last, expires "
                              "FROM greylist WHERE expires>? ORDER BY key LIMIT ?",
                              (now, limit)).fetchall()
            return [TripletEntry(*row) for row in rows]
        return await self._run(work)

    async def list_awl(self, now: int, limit: int = 10_000) -> list[AwlEntry]:
        def work(db: Statements) -> list[AwlEntry]:
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

        def work(db: Statements) -> int:
            return db.execute(sql, args).rowcount
        return await self._run(work)

    async def delete_awl(self, client: str) -> int:
        def work(db: Statements) -> int:
            return db.execute("DELETE FROM awl WHERE client=?", (client,)).rowcount
        return await self._run(work)

    async def expire(self, now: float, batch: int) -> int:
        return await self._in_thread(  # maintenance: never on the loop's thread
            lambda db: self._sweep(db, now, batch), transaction=False)

    def _sweep(self, db: sqlite3.Connection, now: float, batch: int) -> int:
        """Each table in key order, from where the last call stopped: at most
        ``SWEEP_ROWS`` rows looked at per table (an indexed range, never the whole table),
        the due ones among them deleted, at most ``batch`` in all; at a table's end the
        next call starts again from its beginning."""
        done = 0
        for table in _TABLES:
            if done >= batch:
                break
            key = _KEYS[table]
            start = self._sweep_from.get(table, "")
            with _transaction(db):
                row = db.execute(
                    f"SELECT {key} FROM {table} WHERE {key} > ? ORDER BY {key} "  # noqa: S608 - table and column names are constants
                    "LIMIT 1 OFFSET ?", (start, SWEEP_ROWS - 1)).fetchone()
                end: str | None = row[0] if row else None
                due = [name for (name,) in db.execute(
                    f"SELECT {key} FROM {table} WHERE {key} > ?1 AND "  # noqa: S608 - constants
                    f"(?2 IS NULL OR {key} <= ?2) AND expires <= ?3 ORDER BY {key} LIMIT ?4",
                    (start, end, now, batch - done))]
                db.executemany(f"DELETE FROM {table} WHERE {key} = ?",  # noqa: S608 - constants
                               [(name,) for name in due])
            full = len(due) == batch - done
            done += len(due)
            self._sweep_from[table] = due[-1] if full else (end or "")
        return done

    async def close(self) -> None:
        """Commit what is pending, wait for a running checkpoint, stop the worker (its
        connection, the last one, checkpoints the WAL into the file as it closes)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()  # what is queued is committed (or handed on) before closing
        if self._loop_db is not None:
            self._loop_db.close()
            self._loop_db = self._loop_cursor = None
        self._opening = None
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(thread.join)


@dataclass(frozen=True)
class _Job:
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    transaction: bool = True  # run inside the worker's transaction (not a checkpoint)


def _checkpoint_passive(db: sqlite3.Connection) -> int:
    """Copy what the WAL holds into the database file, without taking the write lock;
    how many frames the WAL holds."""
    row = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(row[1]) if row else 0


def _checkpoint_restart(db: sqlite3.Connection) -> None:
    """Copy the whole WAL into the database file, so that the next write starts it again
    from the beginning. ``RESTART`` waits for other writers (another process on the same
    file) and keeps them out meanwhile, but only ``CHECKPOINT_WAIT_MS``: when one holds
    on longer, the checkpoint is partial and a later one tries again."""
    db.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
    try:
        db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
    finally:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


# A client's live auto-whitelist record and a triplet's live record, in one row of
# (count, last, first, last seen), NULL where there is none.
_BOTH = ("SELECT a.count, a.last, g.first, g.last FROM (SELECT 1)"
         " LEFT JOIN awl a ON a.client=? AND a.expires>?"
         " LEFT JOIN greylist g ON g.key=? AND g.expires>?")


def _greylist_attempt(db: Statements, triplet: Triplet, now: int,
                      timing: GreylistTiming) -> Attempt:
    row = db.execute("SELECT first, last FROM greylist WHERE key=? AND expires>?",
                     (triplet.key, now)).fetchone()
    previous = (int(row[0]), int(row[1])) if row else None
    return _greylist_record(db, triplet, now, timing, previous)


def _greylist_record(db: Statements, triplet: Triplet, now: int,
                     timing: GreylistTiming, previous: tuple[int, int] | None) -> Attempt:
    """``greylist_step`` on the live record ``previous`` (first, last), written back."""
    attempt, first, expires = greylist_step(previous, now, timing)
    db.execute("INSERT OR REPLACE INTO greylist VALUES (?,?,?,?,?,?,?)",
               (triplet.key, triplet.client, triplet.sender, triplet.recipient,
                first, now, expires))
    return attempt


def _awl_bump(db: Statements, client: str, previous: tuple[int, int] | None,
              now: int, max_age: int) -> int:
    """``awl_step`` on the live record ``previous`` (count, last); the count after it."""
    step = awl_step(previous, now, max_age)
    if step is None:
        return previous[0] if previous else 0
    db.execute("INSERT OR REPLACE INTO awl VALUES (?,?,?,?)", (client, *step))
    return step[0]


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
