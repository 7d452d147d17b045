"""The records and the arithmetic of greylist and rate-limit state, which every store
shares: a stored triplet's update (postgrey's), the auto-whitelist's count, the rate
buckets.

Security: pure functions of their arguments and plain records; the values come from SMTP
clients (addresses) and are bounded by the policy codec; nothing here does I/O.
Standards: none (postgrey 1.37's triplet and auto-whitelist records; token bucket and
sliding-window-counter rate limiting).

Theory of operation: see ``postwarden.policy.store``, whose backends call these functions
inside their atomic steps (the Redis Lua scripts transcribe them). A module of its own so
that it is compiled with the rest of the policy service's hot path
(``postwarden.compiled.PACKAGES``); the store package re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TOKEN_BUCKET = "token_bucket"  # noqa: S105 - an algorithm name, not a password
SLIDING_WINDOW = "sliding_window"
ALGORITHMS = (TOKEN_BUCKET, SLIDING_WINDOW)
AWL_INTERVAL = 3600  # postgrey: an auto-whitelist counter moves at most once an hour


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
