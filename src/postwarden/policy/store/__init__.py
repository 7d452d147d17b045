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
2. The decisions themselves are the pure functions of this module (``greylist_step``,
   ``awl_step``, ``rate_step``). SQLite calls them in its transaction; the Redis Lua
   scripts are line-for-line transcriptions of them, with every number stored as
   ``%.17g`` so that doubles round-trip exactly. The shared test suite runs the same
   assertions on both, which is what keeps the transcription honest.
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
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from postwarden.errors import PostwardenError
from postwarden.policy.model import Clock

log = logging.getLogger(__name__)

TOKEN_BUCKET = "token_bucket"  # noqa: S105 - an algorithm name, not a password
SLIDING_WINDOW = "sliding_window"
ALGORITHMS = (TOKEN_BUCKET, SLIDING_WINDOW)
AWL_INTERVAL = 3600  # postgrey: an auto-whitelist counter moves at most once an hour


class StoreError(PostwardenError):
    """The state store cannot be reached or used; the service answers fail-safe."""

    failure_kind = "store"  # how the service counts it (policy.service)


@dataclass(frozen=True)
class GreylistTiming:
    """The three durations a greylist attempt needs (whole seconds)."""

    delay: int = 300
    retry_window: int = 2 * 86400
    max_age: int = 35 * 86400


@dataclass(frozen=True)
class Triplet:
    """What a greylist request is keyed on, already normalised and lower-cased."""

    client: str      # the client network ("192.0.2.0"), or the SPF-validated domain
    sender: str
    recipient: str

    @property
    def key(self) -> str:
        return f"{self.client}/{self.sender}/{self.recipient}"


@dataclass(frozen=True)
class Attempt:
    """The outcome of recording one delivery attempt of a triplet."""

    first: int                 # first seen (after a retry-window reset: now)
    previous_last: int | None  # last seen before this attempt; None for a new triplet
    passed_before: bool        # whether the triplet had already passed the delay


@dataclass(frozen=True)
class GreylistOutcome:
    """What one greylist request found and recorded (``Store.greylist``)."""

    attempt: Attempt | None    # None: the client is auto-whitelisted, no triplet touched
    whitelisted_now: bool      # this pass brought the client to the auto-whitelist count

    def passed(self, now: int, timing: GreylistTiming) -> bool:
        return self.attempt is None or now - self.attempt.first >= timing.delay


@dataclass(frozen=True)
class TripletEntry:
    """A stored triplet, for listing."""

    key: str
    client: str
    sender: str
    recipient: str
    first: int
    last: int
    expires: float

    def passed(self, delay: int) -> bool:
        return self.last - self.first >= delay


@dataclass(frozen=True)
class AwlEntry:
    client: str
    count: int
    last: int
    expires: float


@dataclass(frozen=True)
class RateCharge:
    """Spend ``cost`` from the budget ``limit`` per ``window`` seconds kept under ``key``."""

    key: str
    algorithm: str
    limit: int
    window: float
    cost: int


@dataclass(frozen=True)
class RateResult:
    allowed: bool
    remaining: float     # what is left of the budget after this request
    retry_after: float   # seconds until this cost would fit (0 when allowed)


@dataclass(frozen=True)
class RateState:
    """A stored bucket: token bucket (tokens, updated, 0); window counter (start, prev, cur)."""

    a: float
    b: float
    c: float
    expires: float


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


def greylist_step(previous: tuple[int, int] | None, now: int,
                  timing: GreylistTiming) -> tuple[Attempt, int, float]:
    """postgrey 1.37's update of a triplet: the attempt, the new first seen, and expiry.

    ``previous`` is (first, last) of a live record. A record that never passed the delay
    and whose first attempt is older than the retry window starts again; a first-seen in
    the future (clock stepped back) is corrected to now.
    """
    if previous is None:
        first, passed_before, last = now, False, None
    else:
        first, last = previous
        passed_before = last - first >= timing.delay
        if not passed_before and now - first > timing.retry_window:
            first = now
        first = min(first, now)
    if now - first >= timing.delay:
        expires = float(now + timing.max_age)
    else:
        # Never passed: dead once the retry window has run out (then it would be reset).
        expires = float(min(first + timing.retry_window + 1, now + timing.max_age))
    return Attempt(first, last, passed_before), first, expires


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


def awl_step(previous: tuple[int, int] | None, now: int,
             max_age: int) -> tuple[int, int, float] | None:
    """The new (count, last, expires) after a pass, or None when the hour is not up."""
    count, last = previous if previous is not None else (0, None)
    if last is not None and last <= now < last + AWL_INTERVAL:
        return None
    return count + 1, now, float(now + max_age)


def rate_step(state: RateState | None, charge: RateCharge,
              now: float) -> tuple[RateResult, RateState]:
    """One bucket's answer and its new state (to be written only if all charges fit).

    Token bucket: ``limit`` tokens, refilled continuously at ``limit/window`` a second.
    Sliding window: the two-counter estimate, the previous fixed window weighted by how
    much of it still overlaps the sliding one. Requests that do not fit are not counted.
    """
    limit = float(charge.limit)
    cost = float(charge.cost)
    window = float(charge.window)
    if charge.algorithm == TOKEN_BUCKET:
        rate = limit / window
        tokens = limit if state is None else \
            min(limit, state.a + max(0.0, now - state.b) * rate)
        if cost <= tokens:
            tokens = tokens - cost
            result = RateResult(True, tokens, 0.0)
        elif cost > limit:
            result = RateResult(False, tokens, window)
        else:
            result = RateResult(False, tokens, (cost - tokens) / rate)
        return result, RateState(tokens, now, 0.0, now + (limit - tokens) / rate)
    start = float(math.floor(now / window)) * window
    prev = 0.0
    cur = 0.0
    if state is not None:
        if state.a == start:
            prev, cur = state.b, state.c
        elif state.a == start - window:
            prev = state.c
    estimate = prev * (1.0 - (now - start) / window) + cur
    if estimate + cost <= limit:
        cur = cur + cost
        result = RateResult(True, limit - estimate - cost, 0.0)
    else:
        result = RateResult(False, max(0.0, limit - estimate), start + window - now)
    return result, RateState(start, prev, cur, start + 2.0 * window)


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
