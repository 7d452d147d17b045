"""FakeResolver: a DNS zone in a dict, answering as a real recursive resolver would.

Security: test code; answers come from the dict the test built.
Standards: RFC 1034 3.6.2 (CNAME chains), RFC 2308 (NXDOMAIN vs NODATA: a name that exists
with no records of the asked type answers NOERROR with no records).

Theory of operation
-------------------
``zone`` maps a name (any case, trailing dot or not) to a list of ``(rdtype, value)``
records in the ``Resolver`` answer formats (TXT text, addresses, "pref exchange" for MX,
names for PTR and CNAME). A name present in the zone, even with no records, exists; any
other name is NXDOMAIN. A CNAME is followed (up to 8 links; a loop answers SERVFAIL) when
the asked type is not CNAME. ``fail(name, rdtype)`` makes that name (one type, or all)
answer "TIMEOUT" or "SERVFAIL" instead; ``delay`` makes every answer take that long (with
``asyncio.sleep``), for time budget tests. Every query is recorded in ``queries``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from postwarden.policy.model import DnsAnswer

MAX_CNAME = 8


def _key(name: str) -> str:
    return name.rstrip(".").lower() if name != "." else name


class FakeResolver:
    """An in-memory ``postwarden.policy.model.Resolver``."""

    def __init__(self, zone: Mapping[str, Iterable[tuple[str, str]]] | None = None,
                 *, delay: float = 0.0) -> None:
        self.zone: dict[str, list[tuple[str, str]]] = {}
        self.failures: dict[tuple[str, str], str] = {}
        self.queries: list[tuple[str, str]] = []
        self.delay = delay
        for name, records in (zone or {}).items():
            self.zone.setdefault(_key(name), [])
            for rdtype, value in records:
                self.add(name, rdtype, value)

    def add(self, name: str, rdtype: str, value: str) -> None:
        self.zone.setdefault(_key(name), []).append((rdtype.upper(), value))

    def exist(self, name: str) -> None:
        """Make ``name`` exist with no records (NODATA for every type)."""
        self.zone.setdefault(_key(name), [])

    def fail(self, name: str, rdtype: str = "*", rcode: str = "TIMEOUT") -> None:
        """Make queries for ``name`` (of ``rdtype``, or of any type) fail with ``rcode``."""
        if rcode not in ("TIMEOUT", "SERVFAIL"):
            raise ValueError(f"not a failure rcode: {rcode}")
        self.failures[(_key(name), rdtype.upper())] = rcode

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.queries.append((name, rdtype))
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.lookup(name, rdtype.upper())

    def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        """The answer, synchronously (for tests that need no event loop)."""
        seen: set[str] = set()
        key = _key(name)
        for _ in range(MAX_CNAME + 1):
            failure = (self.failures.get((key, rdtype)) or self.failures.get((key, "*")))
            if failure:
                return DnsAnswer(failure)
            if key not in self.zone:
                return DnsAnswer("NXDOMAIN")
            records = self.zone[key]
            found = tuple(value for kind, value in records if kind == rdtype)
            cname = next((value for kind, value in records if kind == "CNAME"), None)
            if found or cname is None or rdtype == "CNAME":
                return DnsAnswer("NOERROR", found)
            seen.add(key)
            key = _key(cname)
            if key in seen:
                return DnsAnswer("SERVFAIL")
        return DnsAnswer("SERVFAIL")
