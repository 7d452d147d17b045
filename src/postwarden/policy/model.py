"""The policy service's shared vocabulary: requests, verdicts, checks, clocks, resolvers.

Security: records and protocols only. A ``PolicyRequest`` holds attribute values exactly
as smtpd sent them (already bounded by the codec); the typed properties never raise on
odd input (a bad number reads as 0, a bad address as None).
Standards: SMTPD_POLICY_README (attribute names and meanings, Postfix 3.7); access(5)
(the actions a reply may carry).

Theory of operation
-------------------
Bytes become a ``PolicyRequest`` in ``protocol`` and nowhere else. The service runs the
enabled ``Check`` s in order (rate limits, SPF, greylisting); each returns a ``Verdict`` or
None ("nothing to say"). The first verdict whose action is final (anything but DUNNO and
PREPEND) is the answer; a PREPEND is kept and returned when nothing else decides, since a
reply carries one action only. Checks share what they learned through the ``Findings``
record of the request (the SPF result feeds greylisting). Clocks and DNS resolvers are
injected (``Clock``, ``Resolver``) so that every check runs in tests without waiting or a
network.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IPAddress | None:
    """An IP address, or None; cached, since smtpd asks once per RCPT of a client."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class PolicyRequest:
    """One ``request=smtpd_access_policy`` as smtpd sent it."""

    attributes: Mapping[str, str]

    def get(self, name: str) -> str:
        return self.attributes.get(name, "")

    @property
    def protocol_state(self) -> str:
        return self.get("protocol_state").upper()

    @property
    def client_address(self) -> str:
        return self.get("client_address")

    @property
    def client_ip(self) -> IPAddress | None:
        return parse_address(self.client_address)

    @property
    def client_name(self) -> str:
        return self.get("client_name")

    @property
    def helo_name(self) -> str:
        return self.get("helo_name")

    @property
    def sender(self) -> str:
        return self.get("sender")

    @property
    def recipient(self) -> str:
        return self.get("recipient")

    @property
    def recipient_count(self) -> int:
        text = self.get("recipient_count")
        return int(text) if text.isdigit() else 0

    @property
    def sasl_username(self) -> str:
        return self.get("sasl_username")

    @property
    def instance(self) -> str:
        return self.get("instance")

    @property
    def queue_id(self) -> str:
        return self.get("queue_id")


class SpfResult(enum.Enum):
    """RFC 7208 section 2.6 results."""

    PASS = "pass"  # noqa: S105 - an RFC 7208 result word, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class SpfOutcome:
    result: SpfResult
    identity: str        # "mailfrom" or "helo"
    domain: str          # the domain checked (sender domain, or the HELO name)
    explanation: str     # why, for people and for the header comment


@dataclass
class Findings:
    """What the checks of one request learned, for the checks after them."""

    spf: SpfOutcome | None = None


@dataclass(frozen=True)
class Verdict:
    """An access(5) action and which check gave it, with the reason for the log."""

    action: str          # "DUNNO", "DEFER_IF_PERMIT Greylisted ...", "PREPEND X-...: ..."
    check: str           # "greylist", "spf", "ratelimit", "failsafe", ...
    reason: str = ""

    @property
    def final(self) -> bool:
        """Whether this action decides the request (DUNNO and PREPEND leave it open)."""
        word = self.action.split(None, 1)[0].upper() if self.action.strip() else "DUNNO"
        return word not in ("DUNNO", "PREPEND")


class Check(Protocol):
    name: str

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        """A verdict, or None when this check has nothing to say about the request."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


@dataclass
class FixedClock:
    """A clock for tests: it moves only when told to."""

    time: float = 1_700_000_000.0

    def now(self) -> float:
        return self.time

    def advance(self, seconds: float) -> None:
        self.time += seconds


@dataclass(frozen=True)
class DnsAnswer:
    """The records of one name and type, or why there are none.

    ``rcode`` is "NOERROR" (records may still be empty: NODATA), "NXDOMAIN", or
    "SERVFAIL"/"TIMEOUT" for a failure (RFC 7208 temperror).
    """

    rcode: str
    records: tuple[str, ...] = field(default_factory=tuple)


class Resolver(Protocol):
    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        """TXT records come back as one string each (the strings of a record joined);
        A/AAAA as addresses; MX as "preference exchange"; PTR as names."""
        ...
