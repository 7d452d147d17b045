"""Greylisting against a FixedClock, step by step, on a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postwarden import __version__
from postwarden.policy.greylist import (
    Greylist,
    GreylistSettings,
    client_network,
    normalize_sender,
)
from postwarden.policy.model import (
    Findings,
    FixedClock,
    PolicyRequest,
    SpfOutcome,
    SpfResult,
    Verdict,
)
from postwarden.policy.store import Store, open_store
from postwarden.policy.whitelist import parse_clients, parse_recipients

DEFER = "DEFER_IF_PERMIT 4.2.0 Greylisted, see https://postgrey.schweikert.ch/help/example.net.html"


def request(client: str = "192.0.2.10", sender: str = "alice@example.org",
            recipient: str = "bob@example.net", **extra: str) -> PolicyRequest:
    attributes = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
                  "client_address": client, "client_name": "mail.example.org",
                  "sender": sender, "recipient": recipient, "etrn_domain": "",
                  "instance": "1a2b.3c4d.0"}
    attributes.update(extra)
    return PolicyRequest(attributes)


Body = Callable[[Greylist, FixedClock, Store], Awaitable[None]]


def run(tmp_path: Path, body: Body, settings: GreylistSettings | None = None,
        **whitelists: str) -> None:
    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path}/state.db")
        clock = FixedClock()
        greylist = Greylist(
            settings or GreylistSettings(hostname="mx.example.net"), store, clock,
            clients=parse_clients(whitelists.get("clients", "")),
            recipients=parse_recipients(whitelists.get("recipients", "")))
        try:
            await body(greylist, clock, store)
        finally:
            await store.close()
    asyncio.run(main())


async def ask(greylist: Greylist, req: PolicyRequest | None = None,
              findings: Findings | None = None) -> Verdict | None:
    return await greylist.check(req or request(), findings or Findings())


def action(verdict: Verdict | None) -> str:
    return verdict.action if verdict is not None else "(none)"


def test_first_attempt_defers_then_retry_passes_with_one_header(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        assert action(await ask(greylist)) == DEFER
        clock.advance(120)
        early = await ask(greylist)
        assert action(early) == DEFER
        assert early is not None and "early-retry (180s missing)" in early.reason
        clock.advance(181)
        passed = await ask(greylist)
        assert action(passed) == (
            f"PREPEND X-Greylist: delayed 301 seconds by postwarden-{__version__} at "
            "mx.example.net; Tue, 14 Nov 2023 22:18:21 GMT")
        # A second recipient of the same message gets no second header.
        again = await ask(greylist, request(recipient="carol@example.net"))
        assert action(again).startswith("DEFER_IF_PERMIT")  # carol is a new triplet
        clock.advance(5)
        assert action(await ask(greylist)) == "DUNNO"
        assert action(await ask(greylist, request(instance="other"))) == "DUNNO"
    run(tmp_path, body)


def test_header_only_once_per_instance(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        for rcpt in ("a@example.net", "b@example.net"):
            await ask(greylist, request(recipient=rcpt))
        clock.advance(300)
        first = await ask(greylist, request(recipient="a@example.net"))
        second = await ask(greylist, request(recipient="b@example.net"))
        assert action(first).startswith("PREPEND X-Greylist: delayed 300 seconds")
        assert action(second) == "DUNNO"
    run(tmp_path, body)


def test_text_placeholders_and_etrn_quirk(tmp_path: Path) -> None:
    settings = GreylistSettings(text="Try again in %s seconds (%r)", header="")

    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        assert action(await ask(greylist)) == \
            "DEFER_IF_PERMIT 4.2.0 Try again in 300 seconds (example.net)"
        clock.advance(100)
        no_etrn = request()
        del_etrn = PolicyRequest({k: v for k, v in no_etrn.attributes.items()
                                  if k != "etrn_domain"})
        assert action(await ask(greylist, del_etrn)) == \
            "DEFER_IF_PERMIT Try again in 200 seconds (example.net)"
        clock.advance(200)
        assert action(await ask(greylist)) == "DUNNO"  # header="" adds none
    run(tmp_path, body, settings)


def test_retry_window_expiry_resets(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        await ask(greylist)
        clock.advance(2 * 86400 + 1)
        reset = await ask(greylist)
        assert reset is not None and "new" in reset.reason and reset.final
        clock.advance(300)
        assert action(await ask(greylist)).startswith("PREPEND")
    run(tmp_path, body)


def test_max_age_forgets_a_passed_triplet(tmp_path: Path) -> None:
    settings = GreylistSettings(auto_whitelist_clients=0, hostname="h")

    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        await ask(greylist)
        clock.advance(300)
        await ask(greylist)
        clock.advance(34 * 86400)
        assert action(await ask(greylist, request(instance="i2"))) == "DUNNO"
        clock.advance(35 * 86400 + 1)
        assert action(await ask(greylist)).startswith("DEFER_IF_PERMIT")
    run(tmp_path, body, settings)


def test_auto_whitelist_after_five_passes_counted_hourly(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        for n in range(5):
            rcpt = f"user{n}x@example.net"
            assert action(await ask(greylist, request(recipient=rcpt))).startswith("DEFER")
            clock.advance(300)
            assert action(await ask(greylist, request(recipient=rcpt,
                                                      instance=f"i{n}"))).startswith("PREPEND")
            # A second pass within the hour does not count.
            rcpt2 = f"other{n}x@example.net"
            await ask(greylist, request(recipient=rcpt2))
            clock.advance(300)
            await ask(greylist, request(recipient=rcpt2))
            assert await store.awl_count("192.0.2.10", int(clock.now())) == n + 1
            clock.advance(3600)
        fresh = await ask(greylist, request(recipient="new@example.net"))
        assert fresh is not None and fresh.reason == "client AWL"
        # The whitelist is per address: the neighbour in the same /24 still waits.
        assert action(await ask(greylist, request(client="192.0.2.11",
                                                  recipient="new@example.net"))) \
            .startswith("DEFER")
    run(tmp_path, body)


def test_a_24_shares_one_triplet(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        await ask(greylist, request(client="192.0.2.10"))
        clock.advance(300)
        assert action(await ask(greylist, request(client="192.0.2.200"))).startswith("PREPEND")
        assert action(await ask(greylist, request(client="192.0.3.10"))).startswith("DEFER")
        [entry, *_] = await store.list_triplets(int(clock.now()))
        assert entry.key == "192.0.2.0/alice@example.org/bob@example.net"
    run(tmp_path, body)


def test_spf_pass_keys_on_the_domain_across_networks(tmp_path: Path) -> None:
    spf = Findings(SpfOutcome(SpfResult.PASS, "mailfrom", "example.org", "ok"))

    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        assert action(await ask(greylist, request(client="192.0.2.10"), spf)).startswith(
            "DEFER")
        clock.advance(300)
        # The retry comes from another /24 of the sender's pool: it still passes.
        assert action(await ask(greylist, request(client="198.51.100.7"), spf)) \
            .startswith("PREPEND")
        keys = [e.key for e in await store.list_triplets(int(clock.now()))]
        assert keys == ["example.org/alice@example.org/bob@example.net"]
        # Without SPF (or SPF pass for another domain) the subnet is the key again.
        other = Findings(SpfOutcome(SpfResult.PASS, "mailfrom", "elsewhere.example", ""))
        assert action(await ask(greylist, request(client="198.51.100.7"), other)) \
            .startswith("DEFER")
        helo = Findings(SpfOutcome(SpfResult.PASS, "helo", "example.org", ""))
        assert action(await ask(greylist, request(client="203.0.113.1"), helo)) \
            .startswith("DEFER")
    run(tmp_path, body)


def test_spf_skip_and_off(tmp_path: Path) -> None:
    spf = Findings(SpfOutcome(SpfResult.PASS, "mailfrom", "example.org", "ok"))

    async def skip(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        verdict = await ask(greylist, findings=spf)
        assert verdict is not None and (verdict.action, verdict.reason) == ("DUNNO", "spf pass")
    run(tmp_path / "skip", skip, GreylistSettings(key_by_spf_domain="skip"))

    async def off(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        assert action(await ask(greylist, findings=spf)).startswith("DEFER")
        [entry] = await store.list_triplets(int(clock.now()))
        assert entry.client == "192.0.2.0"
    run(tmp_path / "off", off, GreylistSettings(key_by_spf_domain="off"))


def test_sasl_and_exempt_networks_bypass(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        sasl = await ask(greylist, request(sasl_username="alice"))
        assert sasl is not None and (sasl.action, sasl.reason) == \
            ("DUNNO", "sasl-authenticated")
        for client in ("127.0.0.1", "::1"):
            local = await ask(greylist, request(client=client))
            assert local is not None and local.reason == "exempt network"
        assert await store.list_triplets(int(clock.now())) == []
    run(tmp_path, body)


def test_whitelists(tmp_path: Path) -> None:
    clients = "/^mail\\d+\\.example\\.com$/\n198.51.100\nexample.org\n"
    recipients = "postmaster@\n"

    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        by_name = await ask(greylist, request(client_name="MAIL7.example.com"))
        by_domain = await ask(greylist)  # client_name mail.example.org
        by_net = await ask(greylist, request(client="198.51.100.99", client_name="unknown"))
        by_rcpt = await ask(greylist, request(client_name="x", recipient="postmaster@a.b"))
        assert [v.reason if v else None for v in (by_name, by_domain, by_net, by_rcpt)] == \
            ["client whitelist"] * 3 + ["recipient whitelist"]
        assert action(await ask(greylist, request(client_name="unknown"))).startswith("DEFER")
    run(tmp_path, body, clients=clients, recipients=recipients)


def test_only_rcpt_and_complete_requests(tmp_path: Path) -> None:
    async def body(greylist: Greylist, clock: FixedClock, store: Store) -> None:
        assert await ask(greylist, request(protocol_state="DATA")) is None
        partial = PolicyRequest({"protocol_state": "RCPT", "client_address": "192.0.2.1",
                                 "sender": "a@b", "recipient": "c@d"})
        assert await ask(greylist, partial) is None
        # The null sender is present (empty), so it is greylisted.
        assert action(await ask(greylist, request(sender=""))).startswith("DEFER")
    run(tmp_path, body)


@pytest.mark.parametrize(("sender", "normal"), [
    ("alice@example.org", "alice@example.org"),
    ("alice+list@example.org", "alice@example.org"),
    ("bounce-12345-67@lists.example", "bounce-#-#@lists.example"),
    ("user123@example.org", "user123@example.org"),
    ("prvs=1234abcdef=alice@example.org", "alice@example.org"),
    ("prvs=alice=1234abcdef@example.org", "alice@example.org"),
    ("", ""),
    ("no-at-sign", "no-at-sign"),
])
def test_sender_normalisation(sender: str, normal: str) -> None:
    assert normalize_sender(sender) == normal


def test_client_networks() -> None:
    import ipaddress
    settings = GreylistSettings()
    assert client_network(ipaddress.ip_address("192.0.2.77"), settings) == "192.0.2.0"
    assert client_network(ipaddress.ip_address("2001:db8:1:2:3::9"), settings) == \
        "2001:db8:1:2::"
