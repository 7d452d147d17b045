"""Where the milter records DMARC evaluations for aggregate reports: SQLite or Redis.

Security: an evaluation holds domains remote senders chose (bounded by
``Evaluation.from_result``); it is stored as JSON text, as an SQL parameter or a Redis
sorted-set member, and read back with ``Evaluation.from_json``, which accepts nothing but
that shape: never pickle, never SQL or Lua built from data. A row that does not decode is
skipped with a warning, so one corrupt entry cannot stop a report. The SQLite file is
created 0600 in a directory made 0700; Redis calls have timeouts and no retries, so an
outage becomes ``StoreError`` instead of a stalled milter.
Standards: SQLite WAL (https://sqlite.org/wal.html); Redis sorted sets (ZADD,
ZRANGEBYSCORE).

Theory of operation
-------------------
Both stores keep evaluations ordered by time, so that ``between(start, end)`` (a reporting
period, ``[start, end)``) and ``expire(before, batch)`` (old rows, at most ``batch`` per
call) are index ranges, never a walk of everything.

* SQLite: the table ``dmarc_evaluation`` (id, time, data) with an index on time. It may
  live in the same file as the policy store (``[store] url``): the two share no table and
  this one is created with ``IF NOT EXISTS``, independent of the policy store's schema
  version. One worker thread owns the connection; every call is one statement in its own
  transaction (WAL with ``synchronous=NORMAL``: no fsync per commit).
* Redis: one sorted set ``<prefix>dmarc:evaluations`` scored by time, each member a
  random 16-hex-digit tag and the JSON (the tag keeps two identical evaluations apart).
  Several MX hosts pointed at one Redis record into one set; run ``postwarden dmarc
  report`` on one of them only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from postwarden.errors import clip
from postwarden.milter.reports import Evaluation, EvaluationStore
from postwarden.policy.store import StoreError, sqlite_path
from postwarden.sqlite_wal import use_wal

log = logging.getLogger(__name__)

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
PAGE = 5000          # rows per read from Redis
REDIS_TIMEOUT = 5.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dmarc_evaluation (id INTEGER PRIMARY KEY,"
    " time REAL NOT NULL, data TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS dmarc_evaluation_time ON dmarc_evaluation (time)",
)


async def open_evaluation_store(url: str) -> EvaluationStore:
    """A store for ``sqlite:///abs/path.db`` or ``redis://host:port/db`` (also
    ``rediss://``, ``unix:///path?db=N``, ``redis+unix://``; ``?prefix=`` as for the
    policy store)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SqliteEvaluationStore(sqlite_path(url))
    if scheme in ("redis", "rediss", "unix", "redis+unix"):
        return RedisEvaluationStore(url)
    raise StoreError(f"store url: unknown scheme {clip(scheme)!r} "
                     "(use sqlite:// or redis://)")


def _decode(rows: list[str], where: str) -> list[Evaluation]:
    found = []
    for data in rows:
        try:
            found.append(Evaluation.from_json(data))
        except ValueError as exc:
            log.warning("dmarc store %s: skipped a stored evaluation: %s", where, exc)
    return found


class SqliteEvaluationStore:
    """``EvaluationStore`` on one SQLite file, WAL mode, one worker thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pw-dmarc")
        self._db: sqlite3.Connection | None = None

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def job() -> T:
            try:
                if self._db is None:
                    self._db = self._connect()
                return work(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite store {self.path}: {exc}") from None
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    def _connect(self) -> sqlite3.Connection:
        parent = self.path.parent
        try:
            parent.mkdir(mode=0o700, parents=True)
            parent.chmod(0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"sqlite store {parent}: {exc.strerror}") from None
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StoreError(f"sqlite store {self.path}: {exc.strerror}") from None
        db = sqlite3.connect(self.path, isolation_level=None,
                             timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        try:
            _set_up(db)
        except BaseException:
            db.close()
            raise
        return db

    async def add(self, evaluation: Evaluation) -> None:
        data = evaluation.to_json()

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO dmarc_evaluation (time, data) VALUES (?, ?)",
                       (evaluation.time, data))
        await self._run(work)

    async def between(self, start: float, end: float) -> list[Evaluation]:
        def work(db: sqlite3.Connection) -> list[str]:
            rows = db.execute("SELECT data FROM dmarc_evaluation WHERE time >= ? AND time < ?"
                              " ORDER BY time, id", (start, end)).fetchall()
            return [str(row[0]) for row in rows]
        return _decode(await self._run(work), str(self.path))

    async def expire(self, before: float, batch: int = 1000) -> int:
        def work(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM dmarc_evaluation WHERE id IN (SELECT id FROM dmarc_evaluation"
                " WHERE time < ? ORDER BY time LIMIT ?)", (before, batch)).rowcount
        return await self._run(work)

    async def close(self) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.close()
            self._db = None
        if self._db is not None:
            await self._run(work)
        self._executor.shutdown(wait=True)


def _set_up(db: sqlite3.Connection) -> None:
    """WAL and the table. Switching a new file to WAL needs an exclusive lock that SQLite
    does not wait for, so a process that loses that race tries again for a while."""
    use_wal(db, BUSY_TIMEOUT_MS / 1000)
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    for statement in _SCHEMA:
        db.execute(statement)


# KEYS: the set. ARGV: before, batch. Deletes the oldest due members, at most batch.
_EXPIRE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
"""


class RedisEvaluationStore:
    """``EvaluationStore`` on one Redis sorted set, shared by every MX host using it."""

    def __init__(self, url: str, *, timeout: float = REDIS_TIMEOUT) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        from postwarden.policy.store.redis import split_url

        target, prefix = split_url(url)
        self.timeout = timeout
        self.key = f"{prefix}dmarc:evaluations"
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        try:
            self._redis = aioredis.Redis.from_url(
                target, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), decode_responses=True)
        except (ValueError, RedisError) as exc:
            raise StoreError(f"store url: {exc}") from None
        self._expire = self._redis.register_script(_EXPIRE)

    async def _do(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout * 2):
                return await call
        except self._errors as exc:
            raise StoreError(f"redis store: {type(exc).__name__}: {exc}") from None

    async def add(self, evaluation: Evaluation) -> None:
        member = f"{secrets.token_hex(8)} {evaluation.to_json()}"
        await self._do(self._redis.zadd(self.key, {member: evaluation.time}))

    async def between(self, start: float, end: float) -> list[Evaluation]:
        members: list[str] = []
        while True:
            raw = await self._do(self._redis.zrangebyscore(
                self.key, repr(float(start)), f"({float(end)!r}", start=len(members),
                num=PAGE))
            page = [str(member) for member in raw]
            members += page
            if len(page) < PAGE:
                break
        return _decode([member.partition(" ")[2] for member in members], self.key)

    async def expire(self, before: float, batch: int = 1000) -> int:
        return int(await self._do(self._expire(keys=[self.key],
                                               args=[repr(float(before)), batch])))

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()
