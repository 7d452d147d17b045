"""The lab DNS server answers from its zone over real UDP: records, NODATA, NXDOMAIN."""

from __future__ import annotations

import dns.resolver
import pytest

from postwarden.lab.dns import DnsServer, answer

ZONE = {"example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all", "x" * 300],
                        "A": ["192.0.2.1"], "MX": ["10 mx.example.org."]}}


def test_answers_over_udp() -> None:
    with DnsServer(ZONE) as server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port
        resolver.lifetime = 5
        txt = sorted(b"".join(r.strings).decode() for r in resolver.resolve("example.org", "TXT"))
        assert txt == ["v=spf1 ip4:192.0.2.0/24 -all", "x" * 300]
        assert [r.to_text() for r in resolver.resolve("EXAMPLE.org", "A")] == ["192.0.2.1"]
        with pytest.raises(dns.resolver.NoAnswer):
            resolver.resolve("example.org", "AAAA")
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("nope.example.org", "A")


def test_garbage_is_dropped() -> None:
    assert answer(ZONE, b"\x00\x01garbage") is None
