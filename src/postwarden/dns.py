"""DNS for postwarden: dnspython's asyncio resolver behind ``policy.model.Resolver``.

Security: answers come from the network and are untrusted; they are turned into plain
strings here (TXT decoded as UTF-8 with replacement, so nothing undecodable travels on)
and every query has a timeout (``timeout`` seconds for the query, retries included), so
one slow server cannot stall a caller for longer. The nameserver override accepts only
an IP address and a port number.
Standards: RFC 1035 (message and record formats), RFC 2308 (NXDOMAIN vs NODATA), RFC
7208 4.4 (how TXT strings of one record are joined: without separators).

Theory of operation
-------------------
``DnsResolver.query`` never raises for DNS outcomes: NXDOMAIN, NODATA (NOERROR with no
records), a server failure and a timeout all come back as a ``DnsAnswer`` whose
``rcode`` says which, so the SPF evaluator (and any other caller) maps them to results
in one place. CNAME chains are followed by dnspython; the records are those of the end of
the chain. A name that cannot be encoded (a label over 63 octets, bad IDNA) cannot exist
and answers "NXDOMAIN" without a query.
"""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from postwarden.errors import UsageError
from postwarden.policy.model import DnsAnswer

DEFAULT_TIMEOUT = 5.0
CACHE_SIZE = 10_000


def parse_nameserver(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (an IPv4 or IPv6 address; ``[V6]:PORT`` for a port with IPv6)."""
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"--nameserver {text!r}: expected HOST[:PORT]")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"--nameserver {text!r}: not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--nameserver {text!r}: bad port {port!r}")
    return str(address), int(port)


def _text(rdata: object, rdtype: str) -> str:
    if rdtype == "TXT":
        strings: tuple[bytes, ...] = rdata.strings  # type: ignore[attr-defined]
        return b"".join(strings).decode("utf-8", "replace")
    if rdtype in ("A", "AAAA"):
        return str(rdata.address)  # type: ignore[attr-defined]
    if rdtype == "MX":
        exchange: dns.name.Name = rdata.exchange  # type: ignore[attr-defined]
        return f"{rdata.preference} {exchange.to_text(omit_final_dot=True)}"  # type: ignore[attr-defined]
    if rdtype in ("PTR", "CNAME"):
        target: dns.name.Name = rdata.target  # type: ignore[attr-defined]
        return target.to_text(omit_final_dot=True)
    return str(rdata)


class DnsResolver:
    """``policy.model.Resolver`` on ``dns.asyncresolver``, with a cache and a timeout."""

    def __init__(self, *, nameserver: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        except dns.resolver.NoResolverConfiguration:
            raise UsageError("no DNS resolver configured in /etc/resolv.conf; "
                             "give --nameserver") from None
        if nameserver is not None:
            host, port = parse_nameserver(nameserver)
            resolver.nameservers = [host]
            resolver.port = port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self._resolver = resolver

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return DnsAnswer("NXDOMAIN")  # no such name can exist
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN:
            return DnsAnswer("NXDOMAIN")
        except dns.exception.Timeout:
            return DnsAnswer("TIMEOUT")
        except dns.exception.DNSException:
            # NoNameservers (SERVFAIL/REFUSED everywhere), bad names, malformed answers
            return DnsAnswer("SERVFAIL")
        if answer.rrset is None:
            return DnsAnswer("NOERROR")
        return DnsAnswer("NOERROR", tuple(_text(r, rdtype.upper()) for r in answer.rrset))
