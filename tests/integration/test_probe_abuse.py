"""The abuse checks of postwarden probe against a weak and a hardened Postfix instance.

The weak instance keeps Postfix's defaults for what these checks look at
(``smtpd_forbid_bare_newline = no``, no anvil rate limits, no sender restrictions, no
greylisting). The hardened one sets each of them. Both trust only their own address, so
the probe's outside vantage is another 127.0.0.x source address.

anvil(8) counts connections and MAIL commands per client address for
``anvil_rate_time_unit``, so every check here runs in its own probe from its own source
address (probe-anchors 8.1: anvil state from one test broke the next). Otherwise the
hardened limits, which the rate checks are meant to find, would refuse the other checks'
connections too.

Security: instances on 127.0.0.1 only; the smuggling check's message, when one is queued,
is for the instance's own postmaster (delivered to a mailbox under the instance root).
Standards: see postwarden.probe.abuse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.probe import abuse, runner
from postwarden.probe.checks import CHECKS
from postwarden.probe.model import CheckResult, Verdict

NewRoot = Callable[[], Path]
P, F, W, N = Verdict.PASS, Verdict.FAIL, Verdict.WARN, Verdict.NOT_TESTABLE

NOWHERE = {"default_transport": "discard:probe test", "relay_transport": "discard:probe test"}
WEAK = {**NOWHERE}
HARDENED = {
    **NOWHERE,
    "smtpd_forbid_bare_newline": "yes",
    "smtpd_client_connection_rate_limit": "5",
    # 4, not 3: the smuggling check alone makes 4 MAILs from its address (the vantage test
    # and one a variant); at 3 its last variant would meet the limit instead of the test.
    "smtpd_client_message_rate_limit": "4",
    "anvil_rate_time_unit": "60s",
    # The own domain as sender is refused to everyone but the trusted network.
    "smtpd_sender_restrictions": "permit_mynetworks, "
                                 f"check_sender_access inline:{{ {TEST_HOSTNAME}=REJECT }}",
    # This simulates a greylister's reply to a new triplet (a policy service such as
    # `postwarden policyd` answers DEFER_IF_PERMIT): only the probe's fresh random sender
    # is "new"; the other checks' fixed triplets stand for ones seen before, so that they
    # still reach what they test.
    "smtpd_recipient_restrictions": "check_sender_access regexp:{ {/^probe-[0-9a-f]+@/ "
                                    "DEFER_IF_PERMIT Greylisted, try again later} }",
}
EXPECTED = {
    "PRB-OWN-DOMAIN-SENDER": (W, P),
    "PRB-SMUGGLING": (F, P),
    "PRB-GREYLIST": (W, P),
    "PRB-RATE-MESSAGES": (W, P),
    "PRB-RATE-CONNECTIONS": (W, P),
}
IDS = [c.id for c in CHECKS if c.run.__module__ == abuse.__name__]


def _probe(pf: PostfixInstance, check: str, source: str) -> CheckResult:
    report = asyncio.run(runner.run(pf.address, pf.port, source=source, timeout=10,
                                    only=[check]))
    (result,) = report.results
    return result


@pytest.mark.postfix
def test_abuse_checks_weak_and_hardened(new_root: NewRoot) -> None:
    assert sorted(IDS) == sorted(EXPECTED), "a check is missing from the registry"
    weak = PostfixInstance(new_root(), main_cf=WEAK)
    hard = PostfixInstance(new_root(), main_cf=HARDENED)
    results: dict[str, dict[str, CheckResult]] = {}
    started = time.monotonic()
    with weak, hard:
        for name, pf in (("weak", weak), ("hardened", hard)):
            results[name] = {check: _probe(pf, check, f"127.0.0.{n}")
                             for n, check in enumerate(IDS, start=2)}
    assert time.monotonic() - started < 15
    table = {check: (results["weak"][check].verdict, results["hardened"][check].verdict)
             for check in EXPECTED}
    assert table == EXPECTED, {c: (results["weak"][c].summary, results["hardened"][c].summary)
                               for c in EXPECTED}
    for per_instance in results.values():
        for result in per_instance.values():
            assert result.evidence, result
    # What a user reads: the smuggled end of data that did it, and the limits found.
    weak_smuggling = results["weak"]["PRB-SMUGGLING"]
    assert "<LF>.<LF> ended the data (250)" in weak_smuggling.summary
    assert "smuggled RSET was answered" in weak_smuggling.summary
    assert "<CR>.<CR>" not in weak_smuggling.summary      # Postfix never ends at bare CR
    assert "too much mail" in "\n".join(results["hardened"]["PRB-RATE-MESSAGES"].evidence)
    assert "too many connections" in "\n".join(
        results["hardened"]["PRB-RATE-CONNECTIONS"].evidence)
    hard_smuggling = results["hardened"]["PRB-SMUGGLING"].summary
    for variant in ("<LF>.<LF>", "<CR>.<CR>", "<CRLF>.<LF>"):
        assert f"{variant}: no reply within 1 s" in hard_smuggling   # all three tested


@pytest.mark.postfix
def test_rate_limits_through_xclient(new_root: NewRoot) -> None:
    """From an XCLIENT vantage the message rate limit is seen (anvil counts the announced
    address), but a connection rate cannot be: the probe must say not-testable there, never
    "no connection rate limit"."""
    pf = PostfixInstance(new_root(), main_cf={
        **HARDENED, "smtpd_authorized_xclient_hosts": "127.0.0.1"})
    with pf:
        report = asyncio.run(runner.run(pf.address, pf.port, timeout=10,
                                        only=["PRB-RATE-MESSAGES", "PRB-RATE-CONNECTIONS"]))
    assert "XCLIENT" in report.vantage
    verdicts = {r.id: r.verdict for r in report.results}
    assert verdicts == {"PRB-RATE-MESSAGES": P, "PRB-RATE-CONNECTIONS": N}
    (messages,) = (r for r in report.results if r.id == "PRB-RATE-MESSAGES")
    assert "too much mail from 192.0.2.1" in "\n".join(messages.evidence)
