"""Where bans live between restarts, and how several MX hosts share them: SQLite or Redis.

Security: a ban record holds a network in canonical CIDR text (made by ``ipaddress``, never
taken from a log line as is), the detector's name and a reason that quotes log text; the
stores use them only as SQL parameters or as opaque Redis key suffixes and values. Redis
calls have a socket timeout, so an outage becomes ``StoreError`` quickly and the watcher
keeps its bans in memory (and in the firewall) until the store is back.
Standards: none (fail2ban's ban database and ``bantime.increment`` history, reduced to one
record per network).

Theory of operation
-------------------
One record per banned network: when it started, when it ends (``expires``), its offence
number (``count``), who made it (``origin``, a host name) and until when it is remembered
for escalation (``forget``, after ``expires``). A record is active while ``expires`` is
in the future; it stays in the store until ``forget`` so that a repeat offender gets a
longer ban. Time is always passed in.

``lift`` (a ban lifted by ``logs bans unban``, or replaced by a network ban) sets
``expires`` to now, so the record stops being active but still counts for escalation;
``forget`` drops the record. ``listing`` is the read-only view for ``logs bans list``:
``active`` also deletes forgotten records, ``listing`` never writes.

With Redis, ``put`` also publishes the network on the channel ``<prefix>bans``; every
watcher subscribed to it learns of the ban (``lift`` and ``forget`` publish too) at its
next ``changed()`` call, and every watcher also re-reads the active set every
``sync_interval`` seconds, so a ban made (or lifted) on one MX host is applied (or
lifted) on all of them even if a message on the channel was missed.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from postwarden.policy.store import StoreError, sqlite_path
from postwarden.sqlite_wal import use_wal

TIMEOUT = 2.0


@dataclass(frozen=True)
class Ban:
    """One banned network (a single address is a /32 or /128)."""

    network: str
    since: float
    expires: float
    count: int = 1
    detector: str = ""
    reason: str = ""
    origin: str = ""

    def remaining(self, now: float) -> float:
        return self.expires - now


class BanStore(Protocol):
    def put(self, ban: Ban, forget: float) -> None:
        """Record or replace the ban of ``ban.network``, remembered until ``forget``."""
    def get(self, network: str, now: float) -> Ban | None:
        """The remembered record of a network (active or not), None when forgotten."""
    def active(self, now: float) -> list[Ban]:
        """Every ban whose ``expires`` is after ``now``."""
    def lift(self, network: str, now: float) -> None:
        """End a ban now (it stays remembered for escalation)."""
    def forget(self, network: str) -> None:
        """Drop a network's record: its next offence counts as the first."""
    def listing(self, now: float, *, ended: bool = False) -> list[Ban]:
        """The active bans, and with ``ended`` the remembered ones that ended, by network;
        reads only (``active`` also purges forgotten records)."""
    def changed(self) -> bool:
        """Whether another watcher changed the bans since the last call (cheap)."""
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS watch_bans (
    network TEXT PRIMARY KEY, since REAL NOT NULL, expires REAL NOT NULL,
    count INTEGER NOT NULL, detector TEXT NOT NULL, reason TEXT NOT NULL,
    origin TEXT NOT NULL, forget REAL NOT NULL);
CREATE INDEX IF NOT EXISTS watch_bans_expires ON watch_bans (expires);
CREATE INDEX IF NOT EXISTS watch_bans_forget ON watch_bans (forget);
"""


class SqliteBanStore:
    """Bans in a SQLite file (WAL): one host, or several watchers on one file.
    ``readonly``: open an existing file for reading only (``logs bans list``)."""

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        try:
            if readonly:
                if not Path(path).is_file():
                    raise StoreError(f"ban store {path}: no such file (no ban was ever "
                                     "recorded here)")
                self._db = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro",
                                           uri=True, timeout=TIMEOUT,
                                           check_same_thread=False, isolation_level=None)
                self._db.execute("SELECT 1 FROM watch_bans LIMIT 1")
            else:
                Path(path).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, timeout=TIMEOUT, check_same_thread=False,
                                           isolation_level=None)
                use_wal(self._db, TIMEOUT)
                self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"ban store {path}: {exc}") from None
        self._lock = threading.Lock()
        self._version = self._data_version()

    def _data_version(self) -> int:
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"ban store: {exc}") from None

    def put(self, ban: Ban, forget: float) -> None:
        self._run("INSERT OR REPLACE INTO watch_bans (network, since, expires, count, "
                  "detector, reason, origin, forget) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (ban.network, ban.since, ban.expires, ban.count, ban.detector, ban.reason,
                   ban.origin, forget))

    def get(self, network: str, now: float) -> Ban | None:
        rows = self._run("SELECT network, since, expires, count, detector, reason, origin "
                         "FROM watch_bans WHERE network = ? AND forget > ?",
                         (network, now))
        return Ban(*rows[0]) if rows else None

    def active(self, now: float) -> list[Ban]:
        self._run("DELETE FROM watch_bans WHERE forget <= ?", (now,))
        rows = self._run("SELECT network, since, expires, count, detector, reason, origin "
                         "FROM watch_bans WHERE expires > ? ORDER BY network", (now,))
        return [Ban(*row) for row in rows]

    def lift(self, network: str, now: float) -> None:
        self._run("UPDATE watch_bans SET expires = ? WHERE network = ? AND expires > ?",
                  (now, network, now))

    def forget(self, network: str) -> None:
        self._run("DELETE FROM watch_bans WHERE network = ?", (network,))

    def listing(self, now: float, *, ended: bool = False) -> list[Ban]:
        # A record ended when it is still remembered (forget) but no longer active.
        rows = self._run("SELECT network, since, expires, count, detector, reason, origin "
                         "FROM watch_bans WHERE expires > ? OR (? AND forget > ?) "
                         "ORDER BY network", (now, ended, now))
        return [Ban(*row) for row in rows]

    def changed(self) -> bool:
        """True when another connection wrote the file (SQLite's ``data_version``)."""
        try:
            with self._lock:
                version = self._data_version()
        except sqlite3.Error:
            return False
        changed, self._version = version != self._version, version
        return changed

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


class RedisBanStore:
    """Bans on a Redis server shared by every MX host; changes announced by pub/sub."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT) -> None:
        try:
            import redis

            from postwarden.policy.store.redis import split_url
        except ImportError:
            raise StoreError("a redis:// ban store needs the redis package "
                             "(pip install 'postwarden[redis]')") from None

        target, self.prefix = split_url(url)
        self._redis = redis.Redis.from_url(target, socket_timeout=timeout,
                                           socket_connect_timeout=timeout,
                                           decode_responses=True)
        self._index = f"{self.prefix}bans"
        self.channel = f"{self.prefix}bans"
        self._pubsub: Any = None
        self._error = redis.RedisError

    def _key(self, network: str) -> str:
        return f"{self.prefix}ban:{network}"

    def _do(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except self._error as exc:
            raise StoreError(f"ban store: redis: {exc}") from None

    def put(self, ban: Ban, forget: float) -> None:
        key = self._key(ban.network)
        ttl = max(1, int(forget - ban.since) + 1)

        def write() -> None:
            pipe = self._redis.pipeline()
            pipe.hset(key, mapping={"since": repr(ban.since), "expires": repr(ban.expires),
                                    "count": ban.count, "detector": ban.detector,
                                    "reason": ban.reason, "origin": ban.origin,
                                    "forget": repr(forget)})
            pipe.expire(key, ttl)
            pipe.zadd(self._index, {ban.network: ban.expires})
            pipe.publish(self.channel, ban.network)
            pipe.execute()
        self._do(write)

    def _ban(self, network: str, data: dict[str, str], now: float) -> Ban | None:
        try:
            if float(data["forget"]) <= now:
                return None
            return Ban(network, float(data["since"]), float(data["expires"]),
                       int(data["count"]), data["detector"], data["reason"], data["origin"])
        except (KeyError, ValueError):
            return None

    def get(self, network: str, now: float) -> Ban | None:
        data = self._do(self._redis.hgetall, self._key(network))
        return self._ban(network, data, now) if data else None

    def active(self, now: float) -> list[Ban]:
        def read() -> list[Ban]:
            self._redis.zremrangebyscore(self._index, "-inf", now)
            return self._read(now, ended=False)
        result: list[Ban] = self._do(read)
        return result

    def lift(self, network: str, now: float) -> None:
        def write() -> None:
            if self._redis.exists(self._key(network)):
                self._redis.hset(self._key(network), "expires", repr(now))
            self._redis.zrem(self._index, network)
            self._redis.publish(self.channel, network)
        self._do(write)

    def forget(self, network: str) -> None:
        def write() -> None:
            pipe = self._redis.pipeline()
            pipe.delete(self._key(network))
            pipe.zrem(self._index, network)
            pipe.publish(self.channel, network)
            pipe.execute()
        self._do(write)

    def _networks(self, now: float, ended: bool) -> list[str]:
        if not ended:
            return [str(n) for n in self._redis.zrangebyscore(self._index, f"({now!r}", "+inf")]
        # Every remembered record, active or not; the prefix is escaped for the glob.
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._key("")) + "*"
        found = self._redis.scan_iter(match=pattern, count=1000)
        return [str(k)[len(self._key("")):] for k in found]

    def _read(self, now: float, *, ended: bool) -> list[Ban]:
        """The records of the networks ``_networks`` names, in network order."""
        networks = self._networks(now, ended)
        pipe = self._redis.pipeline()
        for network in networks:
            pipe.hgetall(self._key(network))
        found = []
        for network, data in zip(networks, pipe.execute(), strict=True):
            ban = self._ban(network, data, now) if data else None
            if ban is not None and (ended or ban.expires > now):
                found.append(ban)
        return sorted(found, key=lambda b: b.network)

    def listing(self, now: float, *, ended: bool = False) -> list[Ban]:
        result: list[Ban] = self._do(lambda: self._read(now, ended=ended))
        return result

    def changed(self) -> bool:
        """Drain the channel without waiting; true when any message arrived."""
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub(  # type: ignore[no-untyped-call]
                    ignore_subscribe_messages=True)
                self._pubsub.subscribe(self.channel)
            seen = False
            for _ in range(10_000):
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
                seen = True
            return seen
        except self._error:
            self._pubsub = None
            return True   # reconnecting: re-read everything to be safe

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                self._pubsub.close()
        with contextlib.suppress(Exception):
            self._redis.close()


class MemoryBanStore:
    """Bans in memory only: dry runs, and the fallback a test can inspect."""

    def __init__(self) -> None:
        self._bans: dict[str, tuple[Ban, float]] = {}

    def put(self, ban: Ban, forget: float) -> None:
        self._bans[ban.network] = (ban, forget)

    def get(self, network: str, now: float) -> Ban | None:
        entry = self._bans.get(network)
        return entry[0] if entry and entry[1] > now else None

    def active(self, now: float) -> list[Ban]:
        return self.listing(now)

    def listing(self, now: float, *, ended: bool = False) -> list[Ban]:
        return sorted((b for b, forget in self._bans.values()
                       if b.expires > now or (ended and forget > now)),
                      key=lambda b: b.network)

    def forget(self, network: str) -> None:
        self._bans.pop(network, None)

    def lift(self, network: str, now: float) -> None:
        entry = self._bans.get(network)
        if entry and entry[0].expires > now:
            old = entry[0]
            self._bans[network] = (Ban(old.network, old.since, now, old.count, old.detector,
                                       old.reason, old.origin), entry[1])

    def changed(self) -> bool:
        return False

    def close(self) -> None:
        pass


def open_ban_store(url: str, *, readonly: bool = False) -> BanStore:
    """``sqlite:///abs/path.db``, ``redis://host:port/db[?prefix=p]`` or ``memory:``.
    ``readonly``: only ``get``, ``listing`` and ``changed`` will be called (a SQLite file
    must then exist already and is opened read-only; Redis is not written anyway)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        return SqliteBanStore(sqlite_path(url), readonly=readonly)
    if scheme in ("redis", "rediss", "unix", "redis+unix"):
        return RedisBanStore(url)
    if scheme == "memory":
        return MemoryBanStore()
    raise StoreError(f"ban store url: unknown scheme {scheme!r} (use sqlite:// or redis://)")
