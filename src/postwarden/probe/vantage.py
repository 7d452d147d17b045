"""Where the probe stands: find a vantage point the server treats as an outside client.

Security: connects only to the target given; the relay test stops at RCPT (no DATA), on
one connection per candidate, with at most ``MAX_CANDIDATES`` candidates.
Standards: Postfix XCLIENT_README (XCLIENT is "for access control tests": after
``XCLIENT ADDR=...`` smtpd applies its restrictions as for that client); RFC 5737
(192.0.2.0/24, documentation addresses: never a real client); RFC 6761 (``.invalid``).

Theory of operation
-------------------
A probe from a trusted client (mynetworks, or a host allowed to relay) sees an open relay
where there is none: nmap's relay script reports 16/16 from loopback for that reason. So
before judging relaying, the probe looks for a vantage the server does not trust, by
trying one plain foreign-to-foreign RCPT from each candidate in turn:

1. ``--source ADDR`` when given, and nothing else;
2. otherwise, when the server offers XCLIENT to the default source, that source
   announcing itself as ``OUTSIDE`` (an RFC 5737 address);
3. the default source address;
4. for a loopback target, other addresses of 127.0.0.0/8 (Linux routes them all to lo).

The first candidate whose RCPT is refused is outside; the relay checks then run from it.
An XCLIENT candidate is outside whatever it gets, since the server itself took the outside
identity (an RFC 5737 address no real network trusts): if it relays, that is an open
relay. When every other candidate's RCPT is accepted, the probe cannot tell a trusted
vantage from an open relay, and the checks that need an outsider are ``not-testable``, with
the candidates tried.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from postwarden.errors import PostwardenError
from postwarden.probe.client import SmtpClient

OUTSIDE = "192.0.2.1"
LOOPBACK_CANDIDATES = tuple(f"127.0.0.{n}" for n in range(2, 8))
MAX_CANDIDATES = 8
PROBE_HELO = "probe.postwarden.invalid"
FOREIGN_SENDER = "postwarden-probe@example.com"
FOREIGN_RECIPIENT = "relaytest@example.net"


@dataclass(frozen=True)
class Vantage:
    source: str | None            # local address the connection is bound to
    xclient: str | None = None    # the client address announced with XCLIENT

    def __str__(self) -> str:
        base = self.source or "default source"
        return f"{base} as {self.xclient} (XCLIENT)" if self.xclient else base


@dataclass
class VantageReport:
    outside: Vantage | None                       # a vantage the server does not trust
    tried: list[tuple[Vantage, str]] = field(default_factory=list)  # (vantage, what happened)
    open_relay_evidence: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(f"{v}: {what}" for v, what in self.tried)


async def session(host: str, port: int, vantage: Vantage, *, timeout: float,
                  helo: str = PROBE_HELO, implicit_tls: bool = False,
                  starttls: bool = False) -> SmtpClient:
    """A connected client that has said EHLO as ``vantage`` (XCLIENT done if asked),
    over implicit TLS or after STARTTLS when asked."""
    client = SmtpClient(host, port, source=vantage.source, timeout=timeout,
                        implicit_tls=implicit_tls)
    await client.__aenter__()
    try:
        await client.ehlo(helo)
        if starttls:
            reply = await client.starttls()
            if reply.code != 220:
                raise PostwardenError(f"STARTTLS refused: {reply}")
            await client.ehlo(helo)
        if vantage.xclient is not None:
            reply = await client.xclient(ADDR=vantage.xclient, NAME="[UNAVAILABLE]")
            if reply.code != 220:
                raise PostwardenError(f"XCLIENT refused: {reply}")
            await client.ehlo(helo)
    except BaseException:
        await client.__aexit__(None, None, None)
        raise
    return client


async def relay_attempt(client: SmtpClient, sender: str, recipient: str) -> tuple[bool, str]:
    """(accepted, reply) of one MAIL/RCPT pair after RSET; never DATA."""
    await client.cmd("RSET")
    mail = await client.mail(sender)
    if not mail.positive:
        return False, f"MAIL: {mail}"
    rcpt = await client.rcpt(recipient)
    return rcpt.code in (250, 251), str(rcpt)


def candidates(host: str, source: str | None, xclient_offered: bool) -> list[Vantage]:
    if source is not None:
        return [Vantage(source)]
    found = [Vantage(None, OUTSIDE)] if xclient_offered else []
    found.append(Vantage(None))
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        found += [Vantage(a) for a in LOOPBACK_CANDIDATES if a != host]
    return found[:MAX_CANDIDATES]


async def find_outside(host: str, port: int, source: str | None, *,
                       timeout: float) -> VantageReport:
    xclient_offered = False
    if source is None:
        try:
            async with SmtpClient(host, port, timeout=timeout) as probe:
                await probe.ehlo(PROBE_HELO)
                xclient_offered = "XCLIENT" in probe.extensions
        except PostwardenError:
            pass
    report = VantageReport(None)
    for vantage in candidates(host, source, xclient_offered):
        try:
            client = await session(host, port, vantage, timeout=timeout)
        except (PostwardenError, OSError) as exc:
            report.tried.append((vantage, f"not usable ({exc})"))
            continue
        try:
            accepted, reply = await relay_attempt(client, FOREIGN_SENDER, FOREIGN_RECIPIENT)
        finally:
            await client.__aexit__(None, None, None)
        if not accepted:
            report.tried.append((vantage, f"refused relaying ({reply})"))
            report.outside = vantage
            return report
        report.tried.append((vantage, f"relayed ({reply})"))
        if vantage.xclient is not None:
            # The server took the outside identity itself: what it does now is what it
            # does for strangers, so this is the outside vantage, and an open relay.
            report.outside = vantage
            report.open_relay_evidence = [
                f"XCLIENT ADDR={vantage.xclient}: RCPT TO:<{FOREIGN_RECIPIENT}> -> {reply}"]
            return report
    return report
