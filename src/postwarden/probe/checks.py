"""The behavioural checks: each one a short SMTP conversation and a verdict on the replies.

Security: every conversation is bounded (one connection per check, a fixed number of
commands, the client's timeout on every read) and never delivers a message: relay tests
stop at RCPT; a DATA that the server accepts where it should not is abandoned by closing
the connection before the final dot, so the server discards it (RFC 5321 4.1.1.4).
Standards: RFC 5321 (HELO/EHLO 4.1.1.1, VRFY/EXPN 3.5 and 7.3, RCPT 3.3, pipelining
before the greeting 4.3.1), RFC 2920 (pipelining only after EHLO), RFC 3207 and
CVE-2011-0411 (STARTTLS command injection), RFC 7672 / RFC 8314 (STARTTLS on port 25);
Postfix's reply strings (probe-anchors 8.3).

Theory of operation
-------------------
Checks that judge what the server does to strangers run from the outside vantage
(``vantage.find_outside``); without one they are ``not-testable``, never a guess. The server's
own name comes from its greeting; the recipient that must exist is ``postmaster`` there
(RFC 5321 4.5.1). Each result carries the transcript lines that show the verdict.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from postwarden.audit.model import Severity
from postwarden.errors import PostwardenError
from postwarden.probe import smtp
from postwarden.probe.client import SmtpClient, SmtpConnectionError
from postwarden.probe.model import CheckResult, Verdict
from postwarden.probe.vantage import (
    FOREIGN_RECIPIENT,
    FOREIGN_SENDER,
    PROBE_HELO,
    Vantage,
    VantageReport,
    relay_attempt,
    session,
)

# A name without a dot, and a name with an empty label (not a host name: RFC 1123 2.1).
BAD_HELOS = ("nodots", "bad..example")
FORMS_PER_SESSION = 6   # relay forms per connection (below smtpd_soft_error_limit)
LEAKY_BANNER = re.compile(r"postfix|debian|ubuntu|red ?hat|centos|\d+\.\d+\.\d+", re.I)
MAX_EVIDENCE = 24


@dataclass
class ProbeContext:
    host: str
    port: int
    timeout: float
    vantage: VantageReport
    server_name: str = ""     # the first word of the greeting after the code
    # Ports judged as submission (clients log in; stricter TLS); others as an MX port.
    submission_ports: frozenset[int] = frozenset({587, 465})
    implicit_tls_ports: frozenset[int] = frozenset({465})  # TLS from the first byte
    other_ports: tuple[int, ...] = ()  # more ports of the same server for the relay test

    async def outside_session(self, helo: str = PROBE_HELO) -> SmtpClient | None:
        if self.vantage.outside is None:
            return None
        return await session(self.host, self.port, self.vantage.outside,
                             timeout=self.timeout, helo=helo)

    async def plain(self, vantage: Vantage | None = None) -> SmtpClient:
        """A connected client that has read the greeting and said nothing yet."""
        source = (vantage or self.vantage.outside or Vantage(None)).source
        client = SmtpClient(self.host, self.port, source=source, timeout=self.timeout)
        await client.__aenter__()
        return client

    async def outside_unintroduced(self) -> SmtpClient | None:
        """An outside client that has not said HELO (after XCLIENT, HELO is reset)."""
        if self.vantage.outside is None:
            return None
        client = await self.plain()
        try:
            if self.vantage.outside.xclient is not None:
                await client.ehlo(PROBE_HELO)
                await client.xclient(ADDR=self.vantage.outside.xclient, NAME="[UNAVAILABLE]",
                                     HELO="[UNAVAILABLE]")
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        return client

    @property
    def postmaster(self) -> str:
        return f"postmaster@{self.server_name or self.host}"

    def untestable(self, check: Check) -> CheckResult:
        return check.result(Verdict.NOT_TESTABLE,
                            "no vantage point the server treats as an outside client: "
                            + self.vantage.reason, (), self.port)


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: Severity
    run: Callable[[ProbeContext], Awaitable[CheckResult]]

    def result(self, verdict: Verdict, summary: str, evidence: tuple[str, ...] | list[str],
               port: int | None, severity: Severity | None = None) -> CheckResult:
        return CheckResult(self.id, self.title, verdict, severity or self.severity, summary,
                           tuple(evidence)[-MAX_EVIDENCE:], port)


CHECKS: list[Check] = []


def check(id: str, title: str, severity: Severity,
          ) -> Callable[[Callable[[ProbeContext], Awaitable[CheckResult]]],
                        Callable[[ProbeContext], Awaitable[CheckResult]]]:
    def register(run: Callable[[ProbeContext], Awaitable[CheckResult]],
                 ) -> Callable[[ProbeContext], Awaitable[CheckResult]]:
        CHECKS.append(Check(id, title, severity, run))
        return run
    return register


def _this(id: str) -> Check:
    return next(c for c in CHECKS if c.id == id)


# The 16 address forms of nmap's smtp-open-relay (sender, recipient); S is the server's
# name, I its address, D a foreign domain.
def relay_forms(server: str, ip: str, domain: str = "example.net",
                ) -> list[tuple[str, str]]:
    to, frm = "relaytest", "antispam"
    lit = f"[{ip}]"
    return [
        ("", f"{to}@{domain}"), (f"{frm}@{domain}", f"{to}@{domain}"),
        (f"{frm}@{server}", f"{to}@{domain}"), (f"{frm}@{lit}", f"{to}@{domain}"),
        (f"{frm}@{lit}", f"{to}%{domain}@{lit}"), (f"{frm}@{lit}", f"{to}%{domain}@{server}"),
        (f"{frm}@{lit}", f'"{to}@{domain}"'), (f"{frm}@{lit}", f'"{to}%{domain}"'),
        (f"{frm}@{lit}", f"{to}@{domain}@{lit}"), (f"{frm}@{lit}", f'"{to}@{domain}"@{lit}'),
        (f"{frm}@{lit}", f"{to}@{domain}@{server}"), (f"{frm}@{lit}", f"@{lit}:{to}@{domain}"),
        (f"{frm}@{lit}", f"@{server}:{to}@{domain}"), (f"{frm}@{lit}", f"{domain}!{to}"),
        (f"{frm}@{lit}", f"{domain}!{to}@{lit}"), (f"{frm}@{lit}", f"{domain}!{to}@{server}"),
    ]


@dataclass(frozen=True)
class Channel:
    """One way into the server: a port, in clear, after STARTTLS or over implicit TLS."""

    port: int
    tls: str  # "none", "starttls" or "implicit"

    def __str__(self) -> str:
        return f"port {self.port}" + ("" if self.tls == "none" else f" ({self.tls})")


async def _channels(ctx: ProbeContext) -> tuple[list[Channel], list[str]]:
    """Every port and TLS mode the relay test should use, and why others were left out."""
    found: list[Channel] = []
    notes: list[str] = []
    for port in (ctx.port, *ctx.other_ports):
        if port in ctx.implicit_tls_ports:
            found.append(Channel(port, "implicit"))
            continue
        try:
            async with SmtpClient(ctx.host, port, timeout=ctx.timeout) as client:
                await client.ehlo(PROBE_HELO)
                starttls = "STARTTLS" in client.extensions
        except (PostwardenError, OSError) as exc:
            notes.append(f"port {port}: not reachable ({exc})")
            continue
        found.append(Channel(port, "none"))
        if starttls:
            found.append(Channel(port, "starttls"))
    return found, notes


async def _relay_on(ctx: ProbeContext, channel: Channel,
                    forms: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(accepted forms, transcript tail) of some forms on one channel, on one connection;
    an accepted foreign recipient is taken on to DATA, and a 354 abandoned before the dot.
    A channel that refuses MAIL itself (530: STARTTLS first) is left at that."""
    assert ctx.vantage.outside is not None
    client = await session(ctx.host, channel.port, ctx.vantage.outside, timeout=ctx.timeout,
                           implicit_tls=channel.tls == "implicit",
                           starttls=channel.tls == "starttls")
    accepted: list[str] = []
    try:
        for sender, recipient in forms:
            ok, reply = await relay_attempt(client, sender, recipient)
            if ok:
                accepted.append(f"{channel}: MAIL FROM:<{sender}> RCPT TO:<{recipient}> -> "
                                f"{reply}")
            elif reply.startswith("MAIL: 530"):
                break  # nothing is taken in clear here: the STARTTLS channel tells more
        if accepted:  # RFC 5321 3.3: is the message itself taken? (never completed)
            await relay_attempt(client, FOREIGN_SENDER, FOREIGN_RECIPIENT)
            data = await client.cmd("DATA")
            accepted.append(f"{channel}: DATA -> {data}"
                            + ("; abandoned before the final dot" if data.code == 354 else ""))
        tail = client.transcript.lines()[-4:]
    finally:
        await client.__aexit__(None, None, None)
    return accepted, tail


async def _relay_channel(ctx: ProbeContext, channel: Channel,
                         ) -> tuple[list[str], list[str], str | None]:
    """The 16 forms on one channel, a few per connection: Postfix slows a client down
    after smtpd_soft_error_limit (10) errors in one session, and the probe has 15 s."""
    forms = relay_forms(ctx.server_name or ctx.host, ctx.host)
    chunks = [forms[i:i + FORMS_PER_SESSION] for i in range(0, len(forms), FORMS_PER_SESSION)]
    try:
        done = await asyncio.gather(*(_relay_on(ctx, channel, chunk) for chunk in chunks))
    except (PostwardenError, OSError) as exc:
        return [], [], f"{channel}: could not test ({exc})"
    accepted = [line for found, _ in done for line in found]
    return accepted, [f"{channel}: {line}" for line in done[-1][1][-2:]], None


@check("PRB-RELAY", "Open relay: mail for foreign domains accepted from an outside client",
       Severity.CRITICAL)
async def open_relay(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-RELAY")
    if ctx.vantage.outside is None:
        return ctx.untestable(me)
    channels, notes = await _channels(ctx)
    accepted: list[str] = []
    evidence: list[str] = list(notes)
    for found, tail, problem in await asyncio.gather(
            *(_relay_channel(ctx, channel) for channel in channels)):
        accepted += found
        evidence += tail
        if problem:
            notes.append(problem)
            evidence.append(problem)
    tested = ", ".join(str(c) for c in channels) or "no channel"
    if accepted:
        return me.result(Verdict.FAIL, f"{len(accepted)} relay attempt(s) accepted from "
                         f"{ctx.vantage.outside} ({tested})", accepted, ctx.port)
    if not channels:
        return me.result(Verdict.NOT_TESTABLE, "; ".join(notes) or "no channel", (),
                         ctx.port)
    return me.result(Verdict.PASS, f"all 16 relay forms refused from {ctx.vantage.outside} "
                     f"on {tested}", evidence, ctx.port)


@check("PRB-STARTTLS", "STARTTLS not offered", Severity.HIGH)
async def starttls_offered(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-STARTTLS")
    async with SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout) as client:
        reply = await client.ehlo(PROBE_HELO)
        offered = "STARTTLS" in client.extensions
        evidence = client.transcript.lines()
        if offered:
            tls = await client.starttls()
            evidence = client.transcript.lines()
            if tls.code != 220 or client.tls is None:
                return me.result(Verdict.FAIL, f"STARTTLS offered but refused: {tls}",
                                 evidence, ctx.port)
            return me.result(Verdict.PASS, f"STARTTLS works ({client.tls.version})",
                             evidence, ctx.port)
    del reply
    return me.result(Verdict.FAIL, "EHLO does not offer STARTTLS: mail to this server "
                     "crosses the network in clear", evidence, ctx.port)


@check("PRB-VRFY", "VRFY or EXPN tell which addresses exist", Severity.LOW)
async def vrfy_expn(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-VRFY")
    async with SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout) as client:
        await client.ehlo(PROBE_HELO)
        vrfy = await client.cmd("VRFY", "postmaster")
        expn = await client.cmd("EXPN", "postmaster")
        evidence = client.transcript.lines()[-4:]
    open_ = [f"{verb} answered {reply.code}" for verb, reply in (("VRFY", vrfy), ("EXPN", expn))
             if reply.code in (250, 251, 252)]
    if open_:
        return me.result(Verdict.FAIL, "; ".join(open_), evidence, ctx.port)
    return me.result(Verdict.PASS, f"VRFY {vrfy.code}, EXPN {expn.code}", evidence, ctx.port)


@check("PRB-BANNER", "Greeting names the software, system or version", Severity.LOW)
async def banner_leak(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-BANNER")
    async with SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout) as client:
        banner = client.banner
        evidence = client.transcript.lines()[:2]
    found = LEAKY_BANNER.findall(banner.text)
    if found:
        return me.result(Verdict.WARN, f"the greeting shows {', '.join(sorted(set(found)))}",
                         evidence, ctx.port)
    return me.result(Verdict.PASS, "the greeting names only the host", evidence, ctx.port)


@check("PRB-HELO-REQUIRED", "Mail accepted without HELO or EHLO", Severity.LOW)
async def helo_required(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-HELO-REQUIRED")
    client = await ctx.outside_unintroduced()
    if client is None:
        return ctx.untestable(me)
    try:
        mail = await client.mail(FOREIGN_SENDER)
        evidence = client.transcript.lines()[-2:]
    finally:
        await client.__aexit__(None, None, None)
    if mail.positive:
        return me.result(Verdict.FAIL, f"MAIL before HELO got {mail.code}", evidence, ctx.port)
    return me.result(Verdict.PASS, f"MAIL before HELO refused ({mail.code})", evidence,
                     ctx.port)


async def _restricted(ctx: ProbeContext, me: Check, helo: str, sender: str,
                      recipient: str, what: str) -> CheckResult:
    """Drive a transaction to RCPT (smtpd_delay_reject holds verdicts until then)."""
    client = await ctx.outside_session(helo)
    if client is None:
        return ctx.untestable(me)
    try:
        await client.cmd("RSET")
        mail = await client.mail(sender)
        rcpt = await client.rcpt(recipient) if mail.positive else mail
        evidence = client.transcript.lines()[-3:]
    finally:
        await client.__aexit__(None, None, None)
    if rcpt.code in (250, 251):
        return me.result(Verdict.FAIL, f"{what} accepted at RCPT", evidence, ctx.port)
    return me.result(Verdict.PASS, f"{what} refused ({rcpt.code})", evidence, ctx.port)


@check("PRB-HELO-FQDN", "Invalid or non-FQDN HELO name accepted", Severity.LOW)
async def helo_fqdn(ctx: ProbeContext) -> CheckResult:
    """Two sessions: a name without a dot, and one that is not a host name at all."""
    me = _this("PRB-HELO-FQDN")
    results = [await _restricted(ctx, me, helo, FOREIGN_SENDER, ctx.postmaster,
                                 f"HELO {helo}") for helo in BAD_HELOS]
    worst = next((r for r in results if r.verdict is not Verdict.PASS), None)
    if worst is not None:
        return worst
    return me.result(Verdict.PASS, "; ".join(r.summary for r in results),
                     [line for r in results for line in r.evidence], ctx.port)


@check("PRB-SENDER-DOMAIN", "Sender in a domain that does not exist accepted",
       Severity.LOW)
async def sender_domain(ctx: ProbeContext) -> CheckResult:
    sender = f"probe@no-such-domain-{secrets.token_hex(4)}.invalid"  # RFC 6761: never exists
    return await _restricted(ctx, _this("PRB-SENDER-DOMAIN"), PROBE_HELO, sender,
                             ctx.postmaster, f"MAIL FROM:<{sender}>")


@check("PRB-SENDER-FQDN", "Non-FQDN sender address accepted", Severity.LOW)
async def sender_fqdn(ctx: ProbeContext) -> CheckResult:
    return await _restricted(ctx, _this("PRB-SENDER-FQDN"), PROBE_HELO, "probe@nodots",
                             ctx.postmaster, "MAIL FROM:<probe@nodots>")


@check("PRB-RCPT-UNKNOWN", "Unknown local recipient accepted (backscatter)", Severity.MEDIUM)
async def unknown_recipient(ctx: ProbeContext) -> CheckResult:
    host = ctx.server_name or ctx.host
    return await _restricted(ctx, _this("PRB-RCPT-UNKNOWN"), PROBE_HELO, FOREIGN_SENDER,
                             f"no-such-user-7f3a9c@{host}",
                             f"RCPT TO:<no-such-user-7f3a9c@{host}>")


@check("PRB-PIPELINING", "Commands pipelined without EHLO accepted", Severity.LOW)
async def unauthorised_pipelining(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-PIPELINING")
    client = await ctx.outside_unintroduced()
    if client is None:
        return ctx.untestable(me)
    try:
        # RFC 2920: pipelining needs EHLO; after HELO every command must wait its reply.
        await client.send_raw(b"HELO " + PROBE_HELO.encode() + b"\r\n"
                              + smtp.command("MAIL", f"FROM:<{FOREIGN_SENDER}>")
                              + smtp.command("RCPT", f"TO:<{ctx.postmaster}>")
                              + smtp.command("DATA"))
        replies: list[smtp.Reply] = []
        closed = False
        try:
            while len(replies) < 4:
                replies.append(await client.read_reply())
        except SmtpConnectionError:
            closed = True  # Postfix 3.7.6+ hangs up on unauthorised pipelining
        evidence = client.transcript.lines()[-5:]
    finally:
        await client.__aexit__(None, None, None)  # a 354 is abandoned: nothing is sent
    if any(r.code == 354 for r in replies):
        return me.result(Verdict.FAIL, "DATA pipelined after HELO got 354", evidence,
                         ctx.port)
    how = "the server closed the connection" if closed else (
        f"DATA got {replies[-1].code}" if replies else "no reply")
    return me.result(Verdict.PASS, f"pipelined commands refused ({how})", evidence,
                     ctx.port)


@check("PRB-STARTTLS-INJECTION", "STARTTLS command injection (CVE-2011-0411 class)",
       Severity.HIGH)
async def starttls_injection(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-STARTTLS-INJECTION")
    async with SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout) as client:
        await client.ehlo(PROBE_HELO)
        if "STARTTLS" not in client.extensions:
            return me.result(Verdict.NOT_TESTABLE, "STARTTLS is not offered",
                             client.transcript.lines()[-2:], ctx.port)
        # The plaintext RSET after STARTTLS must be thrown away, not answered inside TLS.
        await client.send_raw(b"STARTTLS\r\nRSET\r\n")
        reply = await client.read_reply()
        if reply.code != 220:
            return me.result(Verdict.NOT_TESTABLE, f"STARTTLS refused: {reply}",
                             client.transcript.lines()[-2:], ctx.port)
        await client.upgrade()
        try:
            injected = await client.read_reply(timeout=min(1.0, ctx.timeout))
        except PostwardenError:
            injected = None
        evidence = client.transcript.lines()[-4:]
    if injected is not None:
        return me.result(Verdict.FAIL, f"the server answered the injected RSET inside TLS "
                         f"({injected.code})", evidence, ctx.port)
    return me.result(Verdict.PASS, "the injected RSET was discarded", evidence, ctx.port)
