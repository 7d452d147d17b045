"""Rate limits: keys, stages, recipient counting, windows and actions."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postwarden.policy.model import Findings, FixedClock, PolicyRequest, Verdict
from postwarden.policy.ratelimit import (
    DEFAULT_ACTION,
    DEFAULT_RULES,
    RateLimit,
    RateLimitSettings,
    RateRule,
)
from postwarden.policy.store import SLIDING_WINDOW, open_store


def request(state: str = "DATA", count: int = 1, **extra: str) -> PolicyRequest:
    attributes = {"protocol_state": state, "client_address": "192.0.2.10",
                  "sender": "alice@example.org", "sasl_username": "alice",
                  "recipient_count": str(count)}
    attributes.update(extra)
    return PolicyRequest(attributes)


Body = Callable[[RateLimit, FixedClock], Awaitable[None]]


def run(tmp_path: Path, settings: RateLimitSettings, body: Body) -> None:
    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path}/state.db")
        try:
            clock = FixedClock()
            await body(RateLimit(settings, store, clock), clock)
        finally:
            await store.close()
    asyncio.run(main())


async def ask(limit: RateLimit, req: PolicyRequest) -> Verdict | None:
    return await limit.check(req, Findings())


def test_defaults_stop_a_stolen_account_at_500_recipients_an_hour(tmp_path: Path) -> None:
    async def body(limit: RateLimit, clock: FixedClock) -> None:
        for _ in range(5):
            assert await ask(limit, request(count=100)) is None
        stopped = await ask(limit, request(count=1))
        assert stopped is not None and stopped.action == DEFAULT_ACTION and stopped.final
        assert "rule=sasl-hour key=sasl-hour:alice cost=1" in stopped.reason
        # Another user from the same client is not affected by alice's budget.
        assert await ask(limit, request(count=50, sasl_username="bob")) is None
    run(tmp_path, RateLimitSettings(), body)


def test_day_window_and_refill(tmp_path: Path) -> None:
    async def body(limit: RateLimit, clock: FixedClock) -> None:
        clock.time = clock.time // 86400 * 86400  # inside one fixed day window
        sent = 0
        for _hour in range(6):
            while await ask(limit, request(count=100)) is None:
                sent += 100
            clock.advance(3600)
        assert sent == 2000  # 500 an hour, but the day stops at 2000
        verdict = await ask(limit, request(count=100))
        assert verdict is not None and "rule=sasl-day" in verdict.reason
    run(tmp_path, RateLimitSettings(rules=DEFAULT_RULES[:2]), body)


def test_messages_at_rcpt_and_client_keys(tmp_path: Path) -> None:
    rules = (RateRule("per-client", "client_address", 3, 60, count="messages", stage="RCPT",
                      action="DEFER_IF_PERMIT 4.7.1 slow down"),)

    async def body(limit: RateLimit, clock: FixedClock) -> None:
        rcpt = request("RCPT", sasl_username="")
        assert [await ask(limit, rcpt) for _ in range(3)] == [None] * 3
        verdict = await ask(limit, rcpt)
        assert verdict is not None and verdict.action == "DEFER_IF_PERMIT 4.7.1 slow down"
        assert await ask(limit, request("DATA")) is None  # the rule counts only at RCPT
        # IPv6 clients count per /64.
        v6 = [request("RCPT", client_address=f"2001:db8:1:2::{n}") for n in range(1, 5)]
        results = [await ask(limit, r) for r in v6]
        assert results[:3] == [None] * 3 and results[3] is not None
        assert "key=per-client:2001:db8:1:2::/64" in results[3].reason
    run(tmp_path, RateLimitSettings(rules=rules), body)


def test_sender_rule_and_missing_keys(tmp_path: Path) -> None:
    rules = (RateRule("sender-hour", "sender", 10, 3600, algorithm=SLIDING_WINDOW),)

    async def body(limit: RateLimit, clock: FixedClock) -> None:
        assert await ask(limit, request(count=10, sender="Alice@Example.org")) is None
        assert await ask(limit, request(count=1, sender="alice@example.org")) is not None
        assert await ask(limit, request(count=5, sender="")) is None   # null sender: no key
        assert await ask(limit, request(count=0)) is None              # nothing to count
    run(tmp_path, RateLimitSettings(rules=rules), body)


def test_exempt_networks(tmp_path: Path) -> None:
    rules = (RateRule("c", "client_address", 1, 60, count="messages"),)

    async def body(limit: RateLimit, clock: FixedClock) -> None:
        local = request(client_address="127.0.0.1")
        assert [await ask(limit, local) for _ in range(3)] == [None] * 3
    run(tmp_path, RateLimitSettings(rules=rules, exempt_networks=("127.0.0.0/8",)), body)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"key": "helo_name"}, "key must be one of"),
    ({"count": "recipients", "stage": "RCPT"}, "only known at DATA"),
    ({"limit": 0}, "must be positive"),
    ({"algorithm": "leaky"}, "algorithm must be one of"),
    ({"name": "a:b"}, "may not contain"),
])
def test_bad_rules(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"name": "r", "key": "sender", "limit": 1, "window": 60}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RateRule(**base)  # type: ignore[arg-type]
