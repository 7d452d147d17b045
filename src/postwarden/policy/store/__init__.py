"""Greylist and rate-limit state: the ``Store`` protocol, its records and its arithmetic.

Security: keys hold data that SMTP clients chose (sender and recipient addresses, names),
bounded by the policy codec; the stores use them only as opaque strings (SQL parameters,
Redis key suffixes), never as SQL text, globs or script source. A store outage raises
``StoreError`` quickly so that the service can give its fail-safe answer.
Standards: none (postgrey 1.37's triplet and auto-whitelist records; token bucket and
sliding-window-counter rate limiting).

Theory of operation
-------------------
1. Every operation that reads and then writes is one atomic step in the backend: one
   ``BEGIN IMMEDIATE`` transaction in SQLite, one Lua script in Redis. Two requests for
   the same triplet, or two MX hosts spending one rate budget, can therefore never both
   read the old value.
2. The decisions themselves are pure functions (``greylist_step``, ``awl_step``,
   ``rate_step``, in ``postwarden.policy.state`` with the records, re-exported here).
   SQLite calls them in its transaction; the Redis Lua scripts are line-for-line
   transcriptions of them, with every number stored as ``%.17g`` so that doubles round-trip
   exactly. The shared test suite runs the same assertions on both, which is what keeps the
   transcription honest.
3. Every record carries its own ``expires`` time, computed when it is written, after which
   it means exactly what an absent record means. Reads ignore expired records, so when the
   incremental ``expire(now, batch)`` gets round to deleting one changes no answer. Expiry
   deletes at most ``batch`` records per call (an indexed range in both backends), so a
   background task can call it often without ever walking the whole database.
4. Time is always passed in (``now``); stores never read a clock. Greylist times are whole
   seconds, as in postgrey; rate-limit times are floats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from postwarden.errors import PostwardenError
from postwarden.policy.model import Clock
from postwarden.policy.state import (
    ALGORITHMS,
    AWL_INTERVAL,
    SLIDING_WINDOW,
    TOKEN_BUCKET,
    Attempt,
    AwlEntry,
    GreylistOutcome,
    GreylistTiming,
    RateCharge,
    RateResult,
    RateState,
    Triplet,
    TripletEntry,
    awl_step,
    greylist_step,
    rate_step,
)

log = logging.getLogger(__name__)

__all__ = [  # the records and steps, from postwarden.policy.state, and this module's own
    "ALGORITHMS",
    "AWL_INTERVAL",
    "SLIDING_WINDOW",
    "TOKEN_BUCKET",
    "Attempt",
    "AwlEntry",
    "GreylistOutcome",
    "GreylistTiming",
    "RateCharge",
    "RateResult",
    "RateState",
    "Store",
    "StoreError",
    "Triplet",
    "TripletEntry",
    "awl_step",
    "expire_forever",
    "greylist_request",
    "greylist_step",
    "open_store",
    "rate_step",
    "sqlite_path",
]



class StoreError(PostwardenError):
    """The state store cannot be reached or used; the service answers fail-safe."""

    failure_kind = "store"  # how the service counts it (policy.service)


class Store(Protocol):
    """The state the policy checks share, possibly with other MX hosts."""

    async def greylist_attempt(self, triplet: Triplet, now: int,
                               timing: GreylistTiming) -> Attempt:
        """Record an attempt atomically (``greylist_step``) and say what was there."""
        ...

    def greylist(self, triplet: Triplet, client: str, now: int, timing: GreylistTiming,
                 awl_clients: int) -> Awaitable[GreylistOutcome]:
        """One greylist request in one step (``greylist_request``): the client's
        auto-whitelist (``awl_clients`` passes, 0 for none), else the triplet's attempt,
        and the client's first pass counted. (This and ``rate_consume``, the calls of
        every request, may return a future rather than be coroutines.)"""
        ...

    async def awl_count(self, client: str, now: int) -> int:
        """How many passes the auto-whitelist holds for this client address (0: none)."""
        ...

    async def awl_bump(self, client: str, now: int, max_age: int) -> int:
        """Count one pass for the client, at most once an hour; the new count."""
        ...

    async def awl_set(self, client: str, now: int, count: int, max_age: int) -> int:
        """Raise the client's count to at least ``count`` (the CLI's ``whitelist``)."""
        ...

    def rate_consume(self, charges: Sequence[RateCharge],
                     now: float) -> Awaitable[tuple[RateResult, ...]]:
        """Spend every charge, or none of them when any one does not fit."""
        ...

    async def list_triplets(self, now: int, limit: int = 10_000) -> list[TripletEntry]:
        ...

    async def list_awl(self, now: int, limit: int = 10_000) -> list[AwlEntry]:
        ...

    async def delete_triplets(self, *, key: str | None = None, client: str | None = None,
                              sender: str | None = None) -> int:
        """Delete the triplets matching every given filter; how many went."""
        ...

    async def delete_awl(self, client: str) -> int:
        ...

    async def expire(self, now: float, batch: int) -> int:
        """Delete at most ``batch`` expired records; how many went."""
        ...

    async def close(self) -> None:
        ...


async def greylist_request(store: Store, triplet: Triplet, client: str, now: int,
                           timing: GreylistTiming, awl_clients: int) -> GreylistOutcome:
    """``Store.greylist`` from the store's single steps, each atomic on its own.

    postgrey's order: a client with ``awl_clients`` passes is let through (its counter
    moved at most once an hour); otherwise the triplet's attempt is recorded, and a
    triplet passing the delay for the first time counts one pass for the client.
    """
    if awl_clients and await store.awl_count(client, now) >= awl_clients:
        await store.awl_bump(client, now, timing.max_age)
        return GreylistOutcome(None, False)
    attempt = await store.greylist_attempt(triplet, now, timing)
    outcome = GreylistOutcome(attempt, False)
    if awl_clients and outcome.passed(now, timing) and not attempt.passed_before:
        count = await store.awl_bump(client, now, timing.max_age)
        return GreylistOutcome(attempt, count == awl_clients)
    return outcome


def open_store(url: str) -> Store:
    """A store for ``sqlite:///abs/path.db``, ``redis://host:port/db`` or a unix socket.

    Sockets: ``unix:///run/redis.sock?db=0`` or ``redis+unix:///run/redis.sock``. A
    ``prefix=`` query argument sets the Redis key prefix (default ``postwarden:``).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        from postwarden.policy.store.sqlite import SqliteStore
        return SqliteStore(sqlite_path(url))
    if scheme in ("redis", "rediss", "unix", "redis+unix"):
        from postwarden.policy.store.redis import RedisStore
        return RedisStore(url)
    raise StoreError(f"store url: unknown scheme {scheme!r} (use sqlite:// or redis://)")


def sqlite_path(url: str) -> str:
    """The absolute path of ``sqlite:///abs/path.db`` (file-URL style)."""
    parts = urlsplit(url)
    if parts.netloc or not parts.path.startswith("/") or parts.query:
        raise StoreError(f"store url {url!r}: want sqlite:///absolute/path.db")
    return parts.path


async def expire_forever(store: Store, clock: Clock, *, every: float = 1.0,
                         batch: int = 500) -> None:
    """The background expiry task: small batches, straight on while a backlog lasts.

    Each call deletes at most ``batch`` records, so requests waiting for the store wait
    for one small batch at most. A store error is logged and retried after ``every``.
    Runs until cancelled.
    """
    while True:
        try:
            done = await store.expire(clock.now(), batch)
        except StoreError as exc:
            log.warning("store: expiry failed: %s", exc)
            done = 0
        await asyncio.sleep(0 if done >= batch else every)
