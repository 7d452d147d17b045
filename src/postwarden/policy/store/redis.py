"""The Redis state store: one greylist and one rate budget shared by several MX hosts.

Security: keys are ``<prefix><kind>:<data>`` with the data from SMTP clients as an opaque
suffix; the Lua scripts are constants and receive everything else as ARGV. Every call has
a socket timeout and no retries, so an outage becomes ``StoreError`` within about a second
(the service then answers fail-safe) instead of stalling smtpd.
Standards: Redis EVALSHA semantics (a script runs atomically; no other command runs while
it does).

Theory of operation
-------------------
Each read-modify-write is one Lua script, a transcription of ``greylist_step``,
``awl_step``, ``greylist_request`` (one script per greylist decision) or ``rate_step``
from the package (see its theory of operation), so two MX
hosts recording the same triplet or spending the same budget are serialised by Redis
itself. Records are hashes with an ``e`` (expires) field; a sorted set ``<prefix>expiry``
holds every record's key scored by that time, and ``expire(now, batch)`` deletes the
lowest at most ``batch`` whose time has come. The injected clock, not the Redis server's,
decides what is live, so results match the SQLite store exactly; each key also gets a
native TTL a day past its logical expiry as a safety net when no expiry task runs.
Numbers are written with ``%.17g`` so doubles survive the round trip exactly.
Durability is Redis's own: run it with ``appendonly yes`` to lose no state on a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from postwarden.policy.store import (
    Attempt,
    AwlEntry,
    GreylistOutcome,
    GreylistTiming,
    RateCharge,
    RateResult,
    StoreError,
    Triplet,
    TripletEntry,
)

DEFAULT_PREFIX = "postwarden:"
TIMEOUT = 1.0
SAFETY_TTL = 86400
T = TypeVar("T")

_F = "local function f(x) return string.format('%.17g', x) end\n"

# The greylist step on one triplet record (``greylist_step``): its first and last
# attempt and whether it had passed before; the record and its expiry are written.
_STEP = """
local function step(record, expiry, now, delay, rw, maxage, slack)
  local v = redis.call('HMGET', record, 'f', 'l', 'e')
  local first = now local last = '' local passed = 0
  if v[1] and tonumber(v[3]) > now then
    first = tonumber(v[1]) last = v[2]
    if tonumber(last) - first >= delay then passed = 1
    elseif now - first > rw then first = now end
    if first > now then first = now end
  end
  local e
  if now - first >= delay then e = now + maxage
  else e = math.min(first + rw + 1, now + maxage) end
  redis.call('HSET', record, 'f', f(first), 'l', f(now), 'e', f(e),
             'c', ARGV[6], 's', ARGV[7], 'r', ARGV[8])
  redis.call('EXPIRE', record, math.floor(e - now) + slack)
  redis.call('ZADD', expiry, f(e), record)
  return first, last, passed
end
"""

# KEYS: record, expiry set. ARGV: now, delay, retry_window, max_age, slack,
# client, sender, recipient. Mirrors greylist_step.
_GREYLIST = _F + _STEP + """
local now = tonumber(ARGV[1]) local delay = tonumber(ARGV[2])
local rw = tonumber(ARGV[3]) local maxage = tonumber(ARGV[4])
local first, last, passed = step(KEYS[1], KEYS[2], now, delay, rw, maxage,
                                 tonumber(ARGV[5]))
return {f(first), last, passed}
"""

# KEYS: triplet record, client's auto-whitelist record, expiry set. ARGV: now, delay,
# retry_window, max_age, slack, client, sender, recipient, awl_clients. Mirrors
# greylist_request: _AWL's bump and _GREYLIST's step in one script.
_GREYLIST_REQUEST = _F + _STEP + """
local now = tonumber(ARGV[1]) local delay = tonumber(ARGV[2])
local rw = tonumber(ARGV[3]) local maxage = tonumber(ARGV[4])
local slack = tonumber(ARGV[5]) local awl = tonumber(ARGV[9])
local count = 0 local alast = nil
if awl > 0 then
  local a = redis.call('HMGET', KEYS[2], 'n', 'l', 'e')
  if a[1] and tonumber(a[3]) > now then count = tonumber(a[1]) alast = tonumber(a[2]) end
end
local function bump()
  if alast ~= nil and alast <= now and now < alast + 3600 then return count end
  count = count + 1
  local ae = now + maxage
  redis.call('HSET', KEYS[2], 'n', f(count), 'l', f(now), 'e', f(ae))
  redis.call('EXPIRE', KEYS[2], maxage + slack)
  redis.call('ZADD', KEYS[3], f(ae), KEYS[2])
  return count
end
if awl > 0 and count >= awl then
  bump()
  return {'awl'}
end
local first, last, passed = step(KEYS[1], KEYS[3], now, delay, rw, maxage, slack)
local newly = 0
if awl > 0 and now - first >= delay and passed == 0 and bump() == awl then newly = 1 end
return {f(first), last, passed, newly}
"""

# KEYS: record, expiry set. ARGV: now, max_age, slack, mode (bump|set), count.
# Mirrors awl_step (bump) and awl_set.
_AWL = _F + """
local now = tonumber(ARGV[1]) local maxage = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'n', 'l', 'e')
local count = 0 local last = nil
if v[1] and tonumber(v[3]) > now then count = tonumber(v[1]) last = tonumber(v[2]) end
if ARGV[4] == 'bump' then
  if last ~= nil and last <= now and now < last + 3600 then return f(count) end
  count = count + 1
else
  count = math.max(count, tonumber(ARGV[5]))
end
local e = now + maxage
redis.call('HSET', KEYS[1], 'n', f(count), 'l', f(now), 'e', f(e))
redis.call('EXPIRE', KEYS[1], maxage + tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], f(e), KEYS[1])
return f(count)
"""

# KEYS: n buckets then the expiry set. ARGV: now, slack, then per bucket: algorithm, limit,
# window, cost. Mirrors rate_step; writes every bucket or none.
_RATE = _F + """
local now = tonumber(ARGV[1]) local n = #KEYS - 1
local out = {} local new = {} local ok = true
for i = 1, n do
  local j = 3 + (i - 1) * 4
  local algo = ARGV[j] local limit = tonumber(ARGV[j + 1])
  local window = tonumber(ARGV[j + 2]) local cost = tonumber(ARGV[j + 3])
  local s = new[KEYS[i]]
  if s == nil then
    local v = redis.call('HMGET', KEYS[i], 'a', 'b', 'c', 'e')
    if v[1] and tonumber(v[4]) > now then
      s = {tonumber(v[1]), tonumber(v[2]), tonumber(v[3])}
    end
  end
  local allowed local remaining local retry local st
  if algo == 'token_bucket' then
    local rate = limit / window local tokens
    if s == nil then tokens = limit
    else tokens = math.min(limit, s[1] + math.max(0.0, now - s[2]) * rate) end
    if cost <= tokens then
      tokens = tokens - cost allowed = 1 remaining = tokens retry = 0.0
    elseif cost > limit then allowed = 0 remaining = tokens retry = window
    else allowed = 0 remaining = tokens retry = (cost - tokens) / rate end
    st = {tokens, now, 0.0, now + (limit - tokens) / rate}
  else
    local start = math.floor(now / window) * window
    local prev = 0.0 local cur = 0.0
    if s ~= nil then
      if s[1] == start then prev = s[2] cur = s[3]
      elseif s[1] == start - window then prev = s[3] end
    end
    local est = prev * (1.0 - (now - start) / window) + cur
    if est + cost <= limit then
      cur = cur + cost allowed = 1 remaining = limit - est - cost retry = 0.0
    else
      allowed = 0 remaining = math.max(0.0, limit - est) retry = start + window - now
    end
    st = {start, prev, cur, start + 2.0 * window}
  end
  if allowed == 0 then ok = false end
  new[KEYS[i]] = st
  out[#out + 1] = tostring(allowed) out[#out + 1] = f(remaining) out[#out + 1] = f(retry)
end
if ok then
  for key, st in pairs(new) do
    redis.call('HSET', key, 'a', f(st[1]), 'b', f(st[2]), 'c', f(st[3]), 'e', f(st[4]))
    redis.call('EXPIRE', key, math.max(1, math.floor(st[4] - now)) + tonumber(ARGV[2]))
    redis.call('ZADD', KEYS[n + 1], f(st[4]), key)
  end
end
return out
"""

# KEYS: expiry set. ARGV: now, batch. Deletes the due records, at most batch of them.
_EXPIRE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, key in ipairs(due) do
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], key)
end
return #due
"""


def split_url(url: str) -> tuple[str, str]:
    """The URL for redis-py (``redis+unix`` spelled ``unix``) and the key prefix."""
    parts = urlsplit(url)
    scheme = "unix" if parts.scheme == "redis+unix" else parts.scheme
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    kept = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            kept.append((name, value))
    if any(ch in prefix for ch in "*?[]\\"):
        raise StoreError(f"store url: prefix {prefix!r} may not contain glob characters")
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), "")), prefix


class RedisStore:
    """``Store`` on a Redis server, shared by every MX host pointed at it."""

    def __init__(self, url: str, *, timeout: float = TIMEOUT) -> None:
        target, self.prefix = split_url(url)
        self.timeout = timeout
        try:
            self._redis = aioredis.Redis.from_url(
                target, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0), decode_responses=True)
        except (ValueError, RedisError) as exc:
            raise StoreError(f"store url: {exc}") from None
        self._expiry = self.prefix + "expiry"
        self._greylist = self._redis.register_script(_GREYLIST)
        self._greylist_request = self._redis.register_script(_GREYLIST_REQUEST)
        self._awl = self._redis.register_script(_AWL)
        self._rate = self._redis.register_script(_RATE)
        self._expire = self._redis.register_script(_EXPIRE)

    async def _do(self, call: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout * 2):
                return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"redis store: {type(exc).__name__}: {exc}") from None

    def _g(self, key: str) -> str:
        return f"{self.prefix}g:{key}"

    def _a(self, client: str) -> str:
        return f"{self.prefix}a:{client}"

    async def greylist_attempt(self, triplet: Triplet, now: int,
                               timing: GreylistTiming) -> Attempt:
        first, last, passed = await self._do(self._greylist(
            keys=[self._g(triplet.key), self._expiry],
            args=[now, timing.delay, timing.retry_window, timing.max_age, SAFETY_TTL,
                  triplet.client, triplet.sender, triplet.recipient]))
        return Attempt(int(float(first)), int(float(last)) if last else None, bool(passed))

    async def greylist(self, triplet: Triplet, client: str, now: int,
                       timing: GreylistTiming, awl_clients: int) -> GreylistOutcome:
        """``greylist_request`` as one script: one round trip, atomic."""
        found = await self._do(self._greylist_request(
            keys=[self._g(triplet.key), self._a(client), self._expiry],
            args=[now, timing.delay, timing.retry_window, timing.max_age, SAFETY_TTL,
                  triplet.client, triplet.sender, triplet.recipient, awl_clients]))
        if found == ["awl"]:
            return GreylistOutcome(None, False)
        first, last, passed, newly = found
        return GreylistOutcome(
            Attempt(int(float(first)), int(float(last)) if last else None, bool(passed)),
            bool(newly))

    async def awl_count(self, client: str, now: int) -> int:
        count, expires = await self._do(self._redis.hmget(self._a(client), ["n", "e"]))
        if count is None or expires is None or float(expires) <= now:
            return 0
        return int(float(count))

    async def awl_bump(self, client: str, now: int, max_age: int) -> int:
        count = await self._do(self._awl(keys=[self._a(client), self._expiry],
                                         args=[now, max_age, SAFETY_TTL, "bump", 0]))
        return int(float(count))

    async def awl_set(self, client: str, now: int, count: int, max_age: int) -> int:
        new = await self._do(self._awl(keys=[self._a(client), self._expiry],
                                       args=[now, max_age, SAFETY_TTL, "set", count]))
        return int(float(new))

    async def rate_consume(self, charges: Sequence[RateCharge],
                           now: float) -> tuple[RateResult, ...]:
        if not charges:
            return ()
        args: list[Any] = [repr(float(now)), SAFETY_TTL]
        for charge in charges:
            args += [charge.algorithm, charge.limit, repr(float(charge.window)), charge.cost]
        keys = [f"{self.prefix}r:{charge.key}" for charge in charges] + [self._expiry]
        flat = await self._do(self._rate(keys=keys, args=args))
        return tuple(RateResult(flat[i] == "1", float(flat[i + 1]), float(flat[i + 2]))
                     for i in range(0, len(flat), 3))

    async def _scan(self, kind: str, fields: list[str]) -> list[tuple[str, list[str | None]]]:
        keys: list[str] = [key async for key in self._redis.scan_iter(
            match=f"{self.prefix}{kind}:*", count=1000)]
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, fields)
        values = await pipe.execute()
        return list(zip(keys, values, strict=True))

    async def list_triplets(self, now: int, limit: int = 10_000) -> list[TripletEntry]:
        found = await self._do(self._scan("g", ["c", "s", "r", "f", "l", "e"]))
        skip = len(self.prefix) + 2
        entries = [TripletEntry(key[skip:], c, s, r, int(float(f)), int(float(last)), float(e))
                   for key, (c, s, r, f, last, e) in found
                   if c is not None and s is not None and r is not None and f is not None
                   and last is not None and e is not None and float(e) > now]
        return sorted(entries, key=lambda entry: entry.key)[:limit]

    async def list_awl(self, now: int, limit: int = 10_000) -> list[AwlEntry]:
        found = await self._do(self._scan("a", ["n", "l", "e"]))
        skip = len(self.prefix) + 2
        entries = [AwlEntry(key[skip:], int(float(n)), int(float(last)), float(e))
                   for key, (n, last, e) in found
                   if n is not None and last is not None and e is not None and float(e) > now]
        return sorted(entries, key=lambda entry: entry.client)[:limit]

    async def delete_triplets(self, *, key: str | None = None, client: str | None = None,
                              sender: str | None = None) -> int:
        if key is None and client is None and sender is None:
            raise StoreError("delete_triplets: give a key, a client or a sender")
        found = await self._do(self._scan("g", ["c", "s"]))
        skip = len(self.prefix) + 2
        doomed = [name for name, (c, s) in found
                  if (key is None or name[skip:] == key) and (client is None or c == client)
                  and (sender is None or s == sender)]
        if not doomed:
            return 0
        await self._do(self._redis.zrem(self._expiry, *doomed))
        return int(await self._do(self._redis.delete(*doomed)))

    async def delete_awl(self, client: str) -> int:
        await self._do(self._redis.zrem(self._expiry, self._a(client)))
        return int(await self._do(self._redis.delete(self._a(client))))

    async def expire(self, now: float, batch: int) -> int:
        return int(await self._do(self._expire(keys=[self._expiry],
                                               args=[repr(float(now)), batch])))

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
