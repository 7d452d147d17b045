"""The probe's TLS checks (versions, certificate, AUTH before TLS) against real Postfix.

A weak instance (Postfix's default TLS versions, a self-signed certificate for the wrong
name, SASL AUTH allowed before TLS) and a hardened one (TLS 1.2 and up, a certificate for
the greeting name, still self-signed, ``smtpd_tls_auth_only = yes``) are each judged twice:
as an MX and as a submission service. Test instances listen on random ports, so the role
is chosen by the context: ``RoleContext`` carries ``submission_ports`` and
``implicit_tls_ports``, the attributes ``tlschecks`` reads from the context when present.
The checks run directly, without ``runner.run``: none of them needs a vantage point.

Security: instances on 127.0.0.1 only; AUTH is tried with the probe's dummy credential;
nothing is delivered.
Standards: see postwarden.probe.tlschecks.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from postwarden.audit.model import Role, Severity
from postwarden.lab.certs import self_signed
from postwarden.lab.dovecot import DovecotAuth, dovecot_available
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.postfix.process import free_port
from postwarden.probe import tlschecks
from postwarden.probe.checks import CHECKS, ProbeContext
from postwarden.probe.model import CheckResult, Verdict
from postwarden.probe.vantage import VantageReport

NewRoot = Callable[[], Path]
P, F, W, N = Verdict.PASS, Verdict.FAIL, Verdict.WARN, Verdict.NOT_TESTABLE
LOW, MEDIUM, HIGH = Severity.LOW, Severity.MEDIUM, Severity.HIGH
IDS = ("PRB-TLS-VERSIONS", "PRB-CERT", "PRB-AUTH-PLAINTEXT")

SASL = {"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "dovecot",
        "smtpd_sasl_path": "private/auth"}
NOWHERE = {"default_transport": "discard:probe test", "relay_transport": "discard:probe test"}
# SASL is switched on by reload once Dovecot runs: smtpd exits at once ("no SASL
# authentication mechanisms") while the socket is missing, and Postfix makes the socket's
# directory (queue/private) only at its first start.
WEAK = {**NOWHERE, "smtpd_tls_security_level": "may", "smtpd_tls_auth_only": "no"}
HARDENED = {**NOWHERE, "smtpd_tls_security_level": "may",
            "smtpd_tls_protocols": ">=TLSv1.2", "smtpd_tls_mandatory_protocols": ">=TLSv1.2",
            "smtpd_tls_auth_only": "yes"}

# (instance, role) -> check -> (verdict, severity); a pass pins the verdict only.
EXPECTED: dict[tuple[str, Role], dict[str, tuple[Verdict, Severity | None]]] = {
    ("weak", Role.MX): {"PRB-TLS-VERSIONS": (W, LOW), "PRB-CERT": (W, LOW),
                        "PRB-AUTH-PLAINTEXT": (F, MEDIUM)},
    ("weak", Role.SUBMISSION): {"PRB-TLS-VERSIONS": (F, MEDIUM), "PRB-CERT": (F, MEDIUM),
                                "PRB-AUTH-PLAINTEXT": (F, HIGH)},
    ("hardened", Role.MX): {"PRB-TLS-VERSIONS": (P, None), "PRB-CERT": (W, LOW),
                            "PRB-AUTH-PLAINTEXT": (P, None)},
    ("hardened", Role.SUBMISSION): {"PRB-TLS-VERSIONS": (P, None), "PRB-CERT": (F, MEDIUM),
                                    "PRB-AUTH-PLAINTEXT": (P, None)},
}


@dataclass
class RoleContext(ProbeContext):
    """A ProbeContext that says which ports are submission and which implicit TLS."""

    submission_ports: frozenset[int] = frozenset()
    implicit_tls_ports: frozenset[int] = frozenset()


def context(pf: PostfixInstance, port: int, role: Role, implicit: bool = False,
            ) -> RoleContext:
    return RoleContext(pf.address, port, 10.0, VantageReport(None),
                       server_name=TEST_HOSTNAME,
                       submission_ports=frozenset({port} if role is Role.SUBMISSION else ()),
                       implicit_tls_ports=frozenset({port} if implicit else ()))


async def judge(ctx: ProbeContext) -> dict[str, CheckResult]:
    return {c.id: await c.run(ctx) for c in CHECKS if c.id in IDS}


def pinned(results: dict[str, CheckResult]) -> dict[str, tuple[Verdict, Severity | None]]:
    return {id: (r.verdict, r.severity if r.verdict is not P else None)
            for id, r in results.items()}


@pytest.mark.postfix
def test_weak_and_hardened_tls_verdicts(new_root: NewRoot) -> None:
    assert dovecot_available(), "run scripts/setup.sh as root: it installs dovecot-core"
    wrong_cert, wrong_key = self_signed(new_root(), "wrong-name.example.org")
    cert, key = self_signed(new_root(), TEST_HOSTNAME)
    smtps = free_port("127.0.0.1")
    weak = PostfixInstance(new_root(), main_cf={
        **WEAK, "smtpd_tls_cert_file": str(wrong_cert), "smtpd_tls_key_file": str(wrong_key)},
        services=[f"127.0.0.1:{smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"])
    hard = PostfixInstance(new_root(), main_cf={
        **HARDENED, "smtpd_tls_cert_file": str(cert), "smtpd_tls_key_file": str(key)})
    results: dict[tuple[str, Role], dict[str, CheckResult]] = {}
    with weak, hard, \
            DovecotAuth(new_root(), weak.queue_directory / "private" / "auth", {}), \
            DovecotAuth(new_root(), hard.queue_directory / "private" / "auth", {}):
        for pf in weak, hard:
            pf.configure(SASL)
            pf.reload()
        started = time.monotonic()
        for name, pf in (("weak", weak), ("hardened", hard)):
            for role in Role.MX, Role.SUBMISSION:
                results[name, role] = asyncio.run(judge(context(pf, pf.port, role)))
        implicit = asyncio.run(judge(context(weak, smtps, Role.SUBMISSION, implicit=True)))
        assert time.monotonic() - started < 15
    assert {key: pinned(found) for key, found in results.items()} == EXPECTED
    for found in [*results.values(), implicit]:
        assert all(r.evidence for r in found.values()), found

    weak_mx, hard_mx = results["weak", Role.MX], results["hardened", Role.MX]
    versions = weak_mx["PRB-TLS-VERSIONS"].evidence
    assert versions[0].startswith("TLSv1: accepted (cipher ")
    assert versions[3].startswith("TLSv1.3: accepted (cipher TLS_")
    assert [line.split(":")[1].split()[0] for line in hard_mx["PRB-TLS-VERSIONS"].evidence] \
        == ["refused", "refused", "accepted", "accepted"]
    assert "refused (TLSV1_ALERT_PROTOCOL_VERSION" in hard_mx["PRB-TLS-VERSIONS"].evidence[0]
    assert weak_mx["PRB-CERT"].summary == "certificate problems: name, issuer"
    assert hard_mx["PRB-CERT"].summary == "certificate problems: issuer"
    assert any("self-signed" in line for line in hard_mx["PRB-CERT"].evidence)
    assert "(LOGIN, PLAIN send the password in clear)" in weak_mx["PRB-AUTH-PLAINTEXT"].summary
    assert "taken up (535)" in weak_mx["PRB-AUTH-PLAINTEXT"].summary
    assert hard_mx["PRB-AUTH-PLAINTEXT"].summary.startswith("AUTH before TLS refused (503)")
    assert "after STARTTLS AUTH PLAIN LOGIN is offered" in hard_mx["PRB-AUTH-PLAINTEXT"].summary
    assert not any("not-a-real-password" in line or "cG9zdHdhcmRlbi" in line
                   for line in weak_mx["PRB-AUTH-PLAINTEXT"].evidence)

    # Port 465 style (smtpd_tls_wrappermode): the same weak TLS, seen without STARTTLS.
    assert implicit["PRB-TLS-VERSIONS"].verdict is F
    assert implicit["PRB-CERT"].verdict is F
    assert implicit["PRB-AUTH-PLAINTEXT"].verdict is P


@pytest.mark.postfix
def test_no_starttls_is_not_testable(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root(), main_cf={**NOWHERE, "smtpd_tls_security_level": "none"})
    with pf:
        found = asyncio.run(judge(context(pf, pf.port, Role.SUBMISSION)))
    assert found["PRB-TLS-VERSIONS"].verdict is N
    assert found["PRB-CERT"].verdict is N
    assert found["PRB-AUTH-PLAINTEXT"].verdict is P   # no AUTH at all, before TLS or after


# -- judge_chain without a server ------------------------------------------------------------

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def certificate(name: str, *, days_left: int = 200, rsa_bits: int | None = None,
                issuer: str | None = None) -> x509.Certificate:
    key = (rsa.generate_private_key(65537, rsa_bits) if rsa_bits
           else ec.generate_private_key(ec.SECP256R1()))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(signer)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=30))
            .not_valid_after(NOW + datetime.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize(("cert", "wanted", "role", "expected"), [
    (certificate("*.example.org"), "mx.example.org", Role.MX, (W, LOW, "issuer")),
    (certificate("mx.example.org", days_left=-1), "mx.example.org", Role.MX,
     (F, HIGH, "expiry")),
    (certificate("mx.example.org", days_left=5), "mx.example.org", Role.SUBMISSION,
     (F, MEDIUM, "issuer")),
    (certificate("mx.example.org", rsa_bits=1024, issuer="Some CA"), "mx.example.org",
     Role.MX, (F, MEDIUM, "key")),
    (certificate("a.b.example.org"), "b.example.org", Role.SUBMISSION, (F, MEDIUM, "name")),
])
def test_judge_chain(cert: x509.Certificate, wanted: str, role: Role,
                     expected: tuple[Verdict, Severity, str]) -> None:
    findings = tlschecks.judge_chain([cert], [wanted], role, NOW, None)
    decisive = tlschecks.worst(findings)
    assert (decisive.verdict, decisive.severity) == expected[:2]
    assert expected[2] in [f.text.partition(":")[0] for f in findings
                           if f.verdict is decisive.verdict]


def test_expiry_soon_is_a_warning_and_name_rules_follow_rfc6125() -> None:
    soon = tlschecks.judge_chain([certificate("*.example.org", days_left=5)],
                                 ["mx.example.org"], Role.MX, NOW, None)
    assert soon[0].verdict is W and "expires in 5 days" in soon[0].text
    assert soon[1].verdict is P        # one wildcard label covers mx
    deep = tlschecks.judge_chain([certificate("*.example.org")], ["a.mx.example.org"],
                                 Role.MX, NOW, None)
    assert deep[1].verdict is W        # but not two


def test_role_of() -> None:
    assert tlschecks.role_of(25) is Role.MX
    assert tlschecks.role_of(587) is tlschecks.role_of(465) is Role.SUBMISSION
    assert tlschecks.role_of(2525, frozenset({2525})) is Role.SUBMISSION
