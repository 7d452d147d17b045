"""Probe checks for abuse resistance: own-domain senders, SMTP smuggling, rate limits, greylisting.

Security: every conversation here is bounded in commands, connections and time (the
``MAX_*`` and ``*_BUDGET`` constants below, and the client's timeout on every read). No
message is ever sent to an outside recipient: RCPT names only the target's own
``postmaster`` (RFC 5321 4.5.1), and DATA is sent only by the smuggling check, to that
local recipient. The smuggling check never sends the real end of data ("<CRLF>.<CRLF>"): a
server that did not take the malformed sequence as the end has nothing to queue, and
discards the transaction when the connection closes (RFC 5321 4.1.1.4). A server that did
take it has queued one short message to its own postmaster; that is the finding, and there
is no way to observe it without that. The rate checks stop at the first limit reply.
Standards: RFC 5321 4.1.1.4 and 2.3.8 (end of data, lines end in CRLF only); SEC Consult
"SMTP Smuggling" (December 2023) and Postfix's smtp-smuggling.html
(``smtpd_forbid_bare_newline``); postconf(5) ``smtpd_client_connection_rate_limit``,
``smtpd_client_message_rate_limit``, ``smtpd_client_event_limit_exceptions``, anvil(8);
RFC 6647 (greylisting: a temporary 4xx to an unknown triplet); Postfix's reply strings
(probe-anchors 8.3).

Theory of operation
-------------------
1. Own domain as sender (PRB-OWN-DOMAIN-SENDER). From the outside vantage,
   ``MAIL FROM:<postmaster@SERVER>`` then ``RCPT TO:<postmaster@SERVER>``. Postfix accepts
   this by default. Accepted is a WARN, not a FAIL: mail from outside in the domain's own
   name is sometimes legitimate (a forwarder, a mailing list, a newsletter or ticket
   service sending for the domain), and the sound control for it is SPF/DMARC at the
   receiving side, which one probe address cannot judge. A 5xx is a PASS
   (``check_sender_access`` or ``reject_sender_login_mismatch`` refuses it). A 4xx proves
   nothing either way (a greylister says the same to everyone) and is ``not-testable``.
2. SMTP smuggling (PRB-SMUGGLING). After 354, a body whose text ends in a non-standard
   end-of-data sequence followed by "RSET<CRLF>", one variant a connection (a server that
   refuses a bare LF may hang up, which would hide the other variants):
   "<LF>.<LF>", "<CR>.<CR>" and "<CRLF>.<LF>". Then one reply is awaited for
   ``SMUGGLING_WAIT`` seconds. A 2xx means the server ended the message there (and a
   second reply, to the embedded RSET, shows it would run the smuggled command): FAIL.
   A 4xx/5xx, a hang-up or silence means it did not: PASS. Observed on Postfix 3.7.11:
   with ``smtpd_forbid_bare_newline = yes`` there is silence for all three variants (the
   data goes on; the verdict on the bare LF would come only at the real end of data,
   which the probe never sends); with the default
   ``smtpd_forbid_bare_newline = no`` both "<LF>.<LF>" and "<CRLF>.<LF>" end the data
   (250 queued, then 250 to the smuggled RSET); "<CR>.<CR>" never does. Clients in
   ``smtpd_forbid_bare_newline_exclusions`` ($mynetworks) are exempt, so the check runs
   from the outside vantage.
3. Rate limits (PRB-RATE-CONNECTIONS, PRB-RATE-MESSAGES). anvil(8) counts connections
   and MAIL commands per client address; clients in
   ``smtpd_client_event_limit_exceptions`` ($mynetworks by default) are exempt, so both
   run from the outside vantage. Connections are opened one after another, each closed
   after the greeting; messages are MAIL/RSET pairs on one connection, never DATA. Both
   stop at the first refusal. XCLIENT: observed on Postfix 3.7.11, the message rate limit
   applies to the address announced with XCLIENT ("450 4.7.1 Error: too much mail from
   192.0.2.9" on the 4th MAIL with a limit of 3), so PRB-RATE-MESSAGES works from an
   XCLIENT vantage. A connection is counted when it is made, before any XCLIENT, under the
   prober's real address, which is usually trusted; XCLIENT cannot carry a connection
   rate, so PRB-RATE-CONNECTIONS needs an outside source address and is ``not-testable``
   from an XCLIENT vantage. The counters persist in anvil for ``anvil_rate_time_unit``:
   checks that ran before from the same address count too, which is why these two are
   registered last (and the connection check last of all: once its limit answers, every
   later connection from that address is refused as well).
4. Greylisting (PRB-GREYLIST). A fresh triplet (client, random sender at example.com,
   postmaster): a 4xx at RCPT is what a greylister answers (RFC 6647 2). A 5xx proves
   nothing about greylisting and is ``not-testable``.
"""

from __future__ import annotations

import re
import secrets
import time

from postwarden.audit.model import Severity
from postwarden.probe.checks import ProbeContext, _this, check
from postwarden.probe.client import SmtpClient, SmtpConnectionError, SmtpTimeout
from postwarden.probe.model import CheckResult, Verdict
from postwarden.probe.smtp import Reply
from postwarden.probe.vantage import FOREIGN_SENDER

SMUGGLING_WAIT = 1.0          # seconds to wait for a reply after a smuggled end of data
SMUGGLING_VARIANTS = ((b"\n.\n", "<LF>.<LF>"), (b"\r.\r", "<CR>.<CR>"),
                      (b"\r\n.\n", "<CRLF>.<LF>"))
MAX_CONNECTIONS = 25          # PRB-RATE-CONNECTIONS: connections at most
CONNECTION_BUDGET = 5.0       # ... and seconds at most
MAX_MESSAGES = 12             # PRB-RATE-MESSAGES: MAIL transactions at most
MESSAGE_BUDGET = 5.0
XCLIENT_NO_RATE = ("the outside vantage is an XCLIENT identity, and XCLIENT cannot carry a "
                   "connection rate (connections count under the prober's own address); "
                   "use --source with an outside address")

CHECK_ADDRESS = "probe-{}@example.com"   # RFC 2606: a domain that is never a real sender

# Words greylisters put in their 4xx (postgrey, postwarden, rspamd, sqlgrey, milter-greylist).
GREYLIST_WORDS = re.compile(r"gr[ae]y|try again later|temporar(il)?y (deferred|delayed)", re.I)


async def _close(client: SmtpClient) -> None:
    await client.__aexit__(None, None, None)


async def _to_postmaster(ctx: ProbeContext, client: SmtpClient, sender: str,
                         ) -> tuple[Reply, Reply | None]:
    """RSET, MAIL FROM:<sender>, and RCPT TO:<postmaster> when MAIL was accepted."""
    await client.cmd("RSET")
    mail = await client.mail(sender)
    if not mail.positive:
        return mail, None
    return mail, await client.rcpt(ctx.postmaster)


# -- own domain as sender ---------------------------------------------------------------------

@check("PRB-OWN-DOMAIN-SENDER", "The server's own domain accepted as sender from outside",
       Severity.MEDIUM)
async def own_domain_sender(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-OWN-DOMAIN-SENDER")
    client = await ctx.outside_session()
    if client is None:
        return ctx.untestable(me)
    sender = f"postmaster@{ctx.server_name or ctx.host}"
    try:
        mail, rcpt = await _to_postmaster(ctx, client, sender)
        evidence = client.transcript.lines()[-3:]
    finally:
        await _close(client)
    final = rcpt or mail
    what = f"MAIL FROM:<{sender}> from {ctx.vantage.outside}"
    if rcpt is not None and rcpt.code in (250, 251):
        # Theory point 1: WARN, since forwarders and services may send in the domain's name.
        return me.result(Verdict.WARN, f"{what} accepted at RCPT: anyone can send as the "
                         "server's own domain (refuse it with check_sender_access or "
                         "reject_sender_login_mismatch)", evidence, ctx.port)
    if final.is_permanent:
        return me.result(Verdict.PASS, f"{what} refused ({final.code})", evidence, ctx.port)
    return me.result(Verdict.NOT_TESTABLE, f"{what} deferred ({final.code}): a temporary "
                     "refusal says nothing about the sender", evidence, ctx.port)


# -- SMTP smuggling ----------------------------------------------------------------------------

async def _smuggle(ctx: ProbeContext, sequence: bytes, name: str,
                   ) -> tuple[str, str, list[str]]:
    """One variant on its own connection: ("ended" | "refused" | "kept" | "untestable",
    what happened, evidence). Never sends the real end of data (theory point 2)."""
    client = await ctx.outside_session()
    assert client is not None
    try:
        mail, rcpt = await _to_postmaster(ctx, client, FOREIGN_SENDER)
        if rcpt is None or rcpt.code not in (250, 251):
            return ("untestable", f"{name}: the transaction to {ctx.postmaster} was refused "
                    f"({(rcpt or mail).code})", client.transcript.lines()[-3:])
        start = len(client.transcript)
        data = await client.cmd("DATA")
        if data.code != 354:
            return ("untestable", f"{name}: DATA got {data.code}",
                    client.transcript.lines(start))
        body = (f"From: <{FOREIGN_SENDER}>\r\nTo: <{ctx.postmaster}>\r\n"
                "Subject: postwarden SMTP smuggling probe\r\n\r\n"
                "This text tests whether a non-standard end of data ends the message.")
        await client.send_raw(body.encode() + sequence + b"RSET\r\n")
        try:
            reply = await client.read_reply(timeout=SMUGGLING_WAIT)
        except SmtpTimeout:
            return ("kept", f"{name}: no reply within {SMUGGLING_WAIT:g} s, the data goes "
                    "on", client.transcript.lines(start))
        except SmtpConnectionError:
            return ("refused", f"{name}: the server closed the connection",
                    client.transcript.lines(start))
        if not reply.positive:
            return ("refused", f"{name}: refused ({reply})", client.transcript.lines(start))
        # The message was queued to postmaster; is the smuggled RSET answered too?
        try:
            second = await client.read_reply(timeout=SMUGGLING_WAIT)
            also = f", and the smuggled RSET was answered ({second.code})"
        except (SmtpTimeout, SmtpConnectionError):
            also = ""
        return ("ended", f"{name} ended the data ({reply.code}){also}",
                client.transcript.lines(start))
    finally:
        await _close(client)   # abandons any DATA still open: nothing is queued


@check("PRB-SMUGGLING", "SMTP smuggling: a non-standard end of data accepted", Severity.HIGH)
async def smuggling(ctx: ProbeContext) -> CheckResult:
    """Three variants, each on its own connection, each in a message to the target's own
    postmaster (a local recipient), never to an outside address; see theory point 2."""
    me = _this("PRB-SMUGGLING")
    if ctx.vantage.outside is None:
        return ctx.untestable(me)
    outcomes = [await _smuggle(ctx, sequence, name) for sequence, name in SMUGGLING_VARIANTS]
    ended = [o for o in outcomes if o[0] == "ended"]
    if ended:
        evidence = [line for _, _, lines in ended for line in lines]
        return me.result(Verdict.FAIL, "; ".join(what for _, what, _ in ended)
                         + ": a smuggled second message could pass the server's checks",
                         evidence, ctx.port)
    tested = [o for o in outcomes if o[0] != "untestable"]
    if not tested:
        return me.result(Verdict.NOT_TESTABLE, "; ".join(o[1] for o in outcomes),
                         [line for o in outcomes for line in o[2]], ctx.port)
    return me.result(Verdict.PASS, "; ".join(o[1] for o in outcomes),
                     [line for o in tested for line in o[2]], ctx.port)


# -- greylisting -------------------------------------------------------------------------------

@check("PRB-GREYLIST", "No greylisting of a new triplet", Severity.INFO)
async def greylist(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-GREYLIST")
    client = await ctx.outside_session()
    if client is None:
        return ctx.untestable(me)
    sender = CHECK_ADDRESS.format(secrets.token_hex(6))
    try:
        mail, rcpt = await _to_postmaster(ctx, client, sender)
        evidence = client.transcript.lines()[-3:]
    finally:
        await _close(client)
    if rcpt is None:
        return me.result(Verdict.NOT_TESTABLE, f"MAIL refused ({mail.code})", evidence,
                         ctx.port)
    if rcpt.is_transient and GREYLIST_WORDS.search(rcpt.text):
        return me.result(Verdict.PASS, f"greylisting answers {rcpt.code} to a new triplet",
                         evidence, ctx.port)
    if rcpt.is_transient:
        # A 4xx for another reason (a DNS lookup that failed, a policy service down) says
        # nothing about greylisting.
        return me.result(Verdict.NOT_TESTABLE, f"RCPT deferred ({rcpt}), not as greylisting",
                         evidence, ctx.port)
    if rcpt.code in (250, 251):
        return me.result(Verdict.WARN, "no greylisting: a new triplet is accepted at once",
                         evidence, ctx.port)
    return me.result(Verdict.NOT_TESTABLE, f"RCPT refused ({rcpt.code}): nothing to say "
                     "about greylisting", evidence, ctx.port)


# -- rate limits (registered last: theory point 3) ----------------------------------------------

@check("PRB-RATE-MESSAGES", "No message rate limit for a client", Severity.LOW)
async def message_rate(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-RATE-MESSAGES")
    client = await ctx.outside_session()
    if client is None:
        return ctx.untestable(me)
    started = time.monotonic()
    sent = 0
    mail = Reply(250, ("not sent",))
    try:
        while sent < MAX_MESSAGES and time.monotonic() - started < MESSAGE_BUDGET:
            await client.cmd("RSET")
            mail = await client.mail(FOREIGN_SENDER)
            sent += 1
            if not mail.positive:
                break
        evidence = client.transcript.lines()[-4:]
    finally:
        await _close(client)
    if mail.is_transient:
        return me.result(Verdict.PASS, f"MAIL number {sent} got {mail.code}: a message "
                         "rate limit", evidence, ctx.port)
    if not mail.positive:
        return me.result(Verdict.NOT_TESTABLE, f"MAIL refused ({mail.code}), not by a rate "
                         "limit", evidence, ctx.port)
    return me.result(Verdict.WARN, f"no message rate limit up to {sent} MAIL commands in "
                     f"{time.monotonic() - started:.1f} s", evidence, ctx.port)


@check("PRB-RATE-CONNECTIONS", "No connection rate limit for a client", Severity.LOW)
async def connection_rate(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-RATE-CONNECTIONS")
    outside = ctx.vantage.outside
    if outside is None:
        return ctx.untestable(me)
    if outside.xclient is not None:
        return me.result(Verdict.NOT_TESTABLE, XCLIENT_NO_RATE, (), ctx.port)
    started = time.monotonic()
    count = 0
    while count < MAX_CONNECTIONS and time.monotonic() - started < CONNECTION_BUDGET:
        client = SmtpClient(ctx.host, ctx.port, source=outside.source, timeout=ctx.timeout)
        try:
            await client.connect()
        except SmtpConnectionError:
            client.transcript.note("closed before a greeting")
            return me.result(Verdict.PASS, f"connection {count + 1} was closed before a "
                             "greeting: a connection limit", client.transcript.lines(),
                             ctx.port)
        finally:
            await _close(client)
        count += 1
        if not client.banner.positive:
            return me.result(Verdict.PASS, f"connection {count} got {client.banner.code} at "
                             "the greeting: a connection rate limit",
                             client.transcript.lines(), ctx.port)
    return me.result(Verdict.WARN, f"no connection rate limit up to {count} connections in "
                     f"{time.monotonic() - started:.1f} s from {outside}",
                     client.transcript.lines(), ctx.port)
