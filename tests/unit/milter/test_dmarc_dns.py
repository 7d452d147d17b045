"""DMARC over real DNS traffic: the docs/dmarc.md example table, answered by the lab DNS
server on loopback through postwarden's dnspython resolver."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from postwarden.dns import DnsResolver
from postwarden.lab.dns import DnsServer
from postwarden.milter.dmarc import AuthOutcome, DmarcResult, DmarcSettings, evaluate

LONG_RUA = ",".join(f"mailto:agg{i}@reports.example.com" for i in range(12))   # > 255 bytes
ZONE = {
    "_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; np=reject; "
                                   "rua=mailto:agg@example.com"]},
    "_dmarc.sub.example.com": {"TXT": ["v=DMARC1; p=none; psd=n"]},
    "sub.example.com": {"A": ["192.0.2.11"]},
    "_dmarc.bank": {"TXT": ["v=DMARC1; p=reject; psd=y"]},
    "www.example.com": {"A": ["192.0.2.10"]},
    "_dmarc.long.example": {"TXT": [f"v=DMARC1; p=quarantine; rua={LONG_RUA}"]},
}


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer(ZONE) as dns:
        yield dns


def evaluate_with(server: DnsServer, from_domain: str, spf: AuthOutcome | None,
                  dkim: list[AuthOutcome]) -> DmarcResult:
    resolver = DnsResolver(nameserver=server.address, timeout=2.0)
    return asyncio.run(evaluate(from_domain, spf, dkim, resolver, DmarcSettings()))


def mfrom(domain: str, scope: str = "mfrom") -> AuthOutcome:
    return AuthOutcome(domain, "pass", scope=scope)


def sig(domain: str) -> AuthOutcome:
    return AuthOutcome(domain, "pass", "s1")


# The table of docs/dmarc.md ("Examples"), row by row.
DOC_TABLE = [
    ("example.com", mfrom("bounce.example.com"), [], "pass", "reject", "none"),
    ("example.com", None, [sig("esp.example.net"), sig("example.com")], "pass", "reject",
     "none"),
    ("example.com", mfrom("example.com", "helo"), [], "fail", "reject", "reject"),
    ("www.example.com", None, [], "fail", "quarantine", "quarantine"),
    ("nosuch.example.com", None, [], "fail", "reject", "reject"),
    ("a.sub.example.com", None, [sig("example.com")], "fail", "none", "none"),
    ("login.brand.bank", None, [], "fail", "reject", "reject"),
    ("example.org", None, [sig("example.org")], "none", "", "none"),
]


@pytest.mark.parametrize(("author", "spf", "dkim", "result", "policy", "disposition"),
                         DOC_TABLE)
def test_documented_examples(server: DnsServer, author: str, spf: AuthOutcome | None,
                             dkim: list[AuthOutcome], result: str, policy: str,
                             disposition: str) -> None:
    r = evaluate_with(server, author, spf, dkim)
    assert (r.result, r.policy, r.disposition) == (result, policy, disposition), r.reason


def test_org_domains_over_dns(server: DnsServer) -> None:
    assert evaluate_with(server, "a.sub.example.com", None, []).org_domain == "sub.example.com"
    assert evaluate_with(server, "login.brand.bank", None, []).org_domain == "brand.bank"


def test_long_record_in_several_strings(server: DnsServer) -> None:
    r = evaluate_with(server, "long.example", None, [])
    assert r.record is not None and len(r.record.rua) == 12
    assert r.disposition == "quarantine"


def test_unreachable_server_is_temperror() -> None:
    with DnsServer({}) as dns:
        address = dns.address
    resolver = DnsResolver(nameserver=address, timeout=0.3)
    r = asyncio.run(evaluate("example.com", None, [], resolver, DmarcSettings(budget=1.0)))
    assert r.result == "temperror"
