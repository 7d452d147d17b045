"""postwarden probe against real Postfix instances, one weak and one hardened.

Every check's verdict on each is pinned in ``EXPECTED``. The weak instance trusts the whole
internet (mynetworks 0.0.0.0/0) and authorises XCLIENT for the prober, so the probe's
outside vantage is an RFC 5737 address announced with XCLIENT. The hardened one trusts
only its own address, so the probe finds 127.0.0.2 as an outside client by itself.

Security: instances on 127.0.0.x only; nothing is delivered (relay tests stop at RCPT).
Standards: see postwarden.probe.checks.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.lab.certs import self_signed
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.probe import runner
from postwarden.probe.model import Verdict

NewRoot = Callable[[], Path]
P, F, W, N = Verdict.PASS, Verdict.FAIL, Verdict.WARN, Verdict.NOT_TESTABLE

# Mail for other domains is "delivered" by discarding it, so that relaying shows as 250
# (the instance's default error transport would refuse it at RCPT) and nothing leaves.
NOWHERE = {"default_transport": "discard:probe test", "relay_transport": "discard:probe test"}
WEAK = {
    **NOWHERE,
    "mynetworks": "0.0.0.0/0",
    "smtpd_authorized_xclient_hosts": "127.0.0.1",
    "smtpd_tls_security_level": "none",
    "disable_vrfy_command": "no",
    "smtpd_banner": "$myhostname ESMTP $mail_name $mail_version",
    "local_recipient_maps": "",
}
HARDENED = {
    **NOWHERE,
    "smtpd_helo_required": "yes",
    "disable_vrfy_command": "yes",
    "smtpd_banner": "$myhostname ESMTP",
    "smtpd_tls_security_level": "may",
    "smtpd_forbid_unauth_pipelining": "yes",
    "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
    "smtpd_recipient_restrictions": "reject_non_fqdn_helo_hostname, "
                                    "reject_invalid_helo_hostname, reject_non_fqdn_sender",
    "smtpd_forbid_bare_newline": "yes",
    # The own domain refused as a sender from outside; "invalid" stands in for
    # reject_unknown_sender_domain, which needs DNS (these machines have none: it would
    # defer every foreign sender and hide what the other checks look at).
    "smtpd_sender_restrictions":
        "permit_mynetworks, check_sender_access inline:{ postwarden-test.localdomain=REJECT, "
        "invalid=REJECT }",
}
EXPECTED = {
    "PRB-RELAY": (F, P),
    "PRB-STARTTLS": (F, P),
    "PRB-VRFY": (F, P),
    "PRB-BANNER": (W, P),
    "PRB-HELO-REQUIRED": (F, P),
    "PRB-HELO-FQDN": (F, P),
    "PRB-SENDER-DOMAIN": (F, P),
    "PRB-SENDER-FQDN": (F, P),
    "PRB-RCPT-UNKNOWN": (F, P),
    "PRB-PIPELINING": (F, P),
    "PRB-STARTTLS-INJECTION": (N, P),
    "PRB-TLS-VERSIONS": (N, W),        # the hardened MX still takes TLS 1.0 (opportunistic)
    "PRB-CERT": (N, W),                # self-signed: a warning on an MX port
    "PRB-AUTH-PLAINTEXT": (P, P),      # no SASL on either
    "PRB-OWN-DOMAIN-SENDER": (W, P),
    "PRB-SMUGGLING": (F, P),
    "PRB-GREYLIST": (W, W),            # pinned with a simulated greylister in test_probe_abuse
    "PRB-RATE-MESSAGES": (W, W),       # rate limits: test_probe_abuse (they would stop the rest)
    "PRB-RATE-CONNECTIONS": (N, W),    # counted before XCLIENT: needs --source
}


@pytest.mark.postfix
def test_weak_and_hardened_verdicts(new_root: NewRoot) -> None:
    cert, key = self_signed(new_root(), TEST_HOSTNAME)
    weak = PostfixInstance(new_root(), address="127.0.0.1", main_cf=WEAK)
    hard = PostfixInstance(new_root(), address="127.0.0.1", main_cf={
        **HARDENED, "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key)})
    verdicts = {}
    with weak, hard:
        for name, pf in (("weak", weak), ("hardened", hard)):
            started = time.monotonic()
            report = asyncio.run(runner.run(pf.address, pf.port, timeout=10))
            assert time.monotonic() - started < 15, f"{name} probe took too long"
            verdicts[name] = {r.id: r.verdict for r in report.results}
            for r in report.results:
                assert r.evidence or r.verdict is N, (name, r)
    table = {check: (verdicts["weak"][check], verdicts["hardened"][check])
             for check in EXPECTED}
    assert table == EXPECTED


@pytest.mark.postfix
def test_trusted_vantage_is_not_testable(new_root: NewRoot) -> None:
    """Every address the probe can take is trusted and XCLIENT is not offered: the relay
    verdict must be not-testable, never a fail (nmap's 16/16 'open relay' from loopback)."""
    pf = PostfixInstance(new_root(), main_cf={**NOWHERE, "mynetworks": "127.0.0.0/8"})
    with pf:
        report = asyncio.run(runner.run(pf.address, pf.port, timeout=10,
                                        only=["PRB-RELAY"]))
    (relay,) = report.results
    assert relay.verdict is N and "relayed" in relay.summary


@pytest.mark.postfix
def test_command_json_and_exit_code(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root(), main_cf=WEAK)
    with pf:
        result = subprocess.run([sys.executable, "-m", "postwarden", "probe",
                                 f"{pf.address}:{pf.port}", "--format", "json",
                                 "--only", "PRB-RELAY", "--only", "PRB-VRFY"],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr   # an open relay is critical
    data = json.loads(result.stdout)
    assert [c["id"] for c in data["checks"]] == ["PRB-RELAY", "PRB-VRFY"]
    assert {"id", "title", "verdict", "severity", "evidence"} <= set(data["checks"][0])
    assert data["checks"][0]["verdict"] == "fail"


@pytest.mark.postfix
def test_harden_output_on_all_three_ports(new_root: NewRoot) -> None:
    """Debian's default hardened by ``postwarden harden`` for mx and submission, run as it
    is; relaying refused on 25 and 587, in clear and after STARTTLS, and on 465."""
    from postwarden.lab.dovecot import DovecotAuth
    from tests.integration.test_harden import harden_debian

    etc, _ = harden_debian(new_root(), "mx,submission")
    pf = PostfixInstance.adopt(new_root(), (etc / "main.cf").read_text(),
                               (etc / "master.cf").read_text(), extra_main_cf={
                                   **NOWHERE, "smtpd_authorized_xclient_hosts": "127.0.0.1"})
    also = [(pf.ports["submission"], "submission"), (pf.ports["submissions"], "submissions")]
    with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth", {"u": "p"}):
        started = time.monotonic()
        report = asyncio.run(runner.run(pf.address, pf.port, timeout=10, also=also))
        seconds = time.monotonic() - started
    verdicts = {r.id: r.verdict for r in report.results}
    relay = next(r for r in report.results if r.id == "PRB-RELAY")
    assert relay.verdict is P, relay
    for channel in (f"port {pf.port}", f"port {pf.port} (starttls)",
                    f"port {also[0][0]} (starttls)", f"port {also[1][0]} (implicit)"):
        assert channel in relay.summary, relay.summary
    assert seconds < 15
    assert verdicts == HARDEN_OUTPUT, verdicts


# Without DNS (these machines have none), reject_unknown_sender_domain answers 450 for the
# probe's foreign sender: a refusal, but no greylisting and no smuggling test to run.
HARDEN_OUTPUT: dict[str, Verdict] = {
    "PRB-RELAY": P, "PRB-STARTTLS": P, "PRB-VRFY": P, "PRB-BANNER": P,
    "PRB-HELO-REQUIRED": P, "PRB-HELO-FQDN": P, "PRB-SENDER-FQDN": P,
    "PRB-SENDER-DOMAIN": P,
    "PRB-RCPT-UNKNOWN": P, "PRB-PIPELINING": P, "PRB-STARTTLS-INJECTION": P,
    "PRB-OWN-DOMAIN-SENDER": W,   # harden leaves this to SPF/DMARC and the operator's maps
    "PRB-SMUGGLING": N,           # the transaction is deferred (no DNS) before DATA
    "PRB-GREYLIST": N,            # a 450 for DNS, not greylisting
    "PRB-TLS-VERSIONS": W,        # TLS 1.0/1.1 on the MX port: opportunistic TLS keeps them
    "PRB-CERT": W,                # the test certificate is self-signed
    "PRB-AUTH-PLAINTEXT": P,
    "PRB-RATE-MESSAGES": W,       # harden sets a connection rate, no message rate
    "PRB-RATE-CONNECTIONS": N,    # XCLIENT vantage: connections count as the prober's
}
