"""The postwarden milter: DKIM signing, or DKIM/SPF/DMARC checks and Authentication-Results.

Security: every macro, envelope address, header and body byte comes from the SMTP client
(through the MTA) and is untrusted. A message is kept in memory up to
``max_message_size`` bytes (headers and body together); beyond that it is passed on
unchecked and unsigned, and the buffers are freed. DNS work per message is bounded: DKIM
keys and SPF within ``verify_budget``, DMARC within ``[dmarc] budget``. Only a sender the
signing decision calls internal (network, SASL login, ``{daemon_name}``) gets mail
signed, and such a sender's mail is never rejected by a DMARC policy. An incoming
Authentication-Results field that claims our authserv-id is a forgery (RFC 8601 5) and is
deleted, always, also in ``sign`` mode. Private keys are read before the privilege drop and
never logged. Everything a handler raises becomes the configured fail-safe in
``postwarden.milter.server``.
Standards: RFC 6376 (DKIM), RFC 8463 (Ed25519), RFC 8601 (Authentication-Results: 5, the
removal of forged fields; 2.7 the methods dkim, spf, dmarc and their properties), RFC 7208
(SPF), RFC 9989 (DMARC; 7.1 disposition), RFC 3463 (5.7.1), Postfix MILTER_README
(``smtpd_milters``, ``non_smtpd_milters``, macros ``i``, ``{daemon_name}``,
``{auth_authen}``, header index semantics).

Theory of operation
-------------------
1. One ``Engine`` per process holds what all connections share: settings, the loaded
   keys, the resolver, the DKIM key cache, the evaluation store and the counters. Each MTA
   connection gets a ``MilterHandler``; it collects one message at a time (sender,
   recipients, header fields as the MTA sent them, body) and calls ``Engine.finish`` at end
   of message.
2. ``finish`` first lists the forged Authentication-Results fields, then asks
   ``signing.decide``. An internal sender with keys gets one DKIM-Signature per key (RSA
   and Ed25519 dual signing), inserted at the top. Any other message (in a mode that
   verifies) has every DKIM signature verified while SPF is found (policyd's header when it
   carries our authserv-id and ``spf_source`` is "auto", else evaluated here with policyd's
   SPF code) concurrently; DMARC is evaluated on both;
   one Authentication-Results field with our authserv-id goes to the top; the DMARC
   disposition is applied as ``[dmarc] on_reject`` / ``on_quarantine`` say; the
   evaluation is recorded for aggregate reports.
3. Modifications go out in this order: deletions of forged fields, highest index first
   (so a deletion never shifts the index of the next one), then the insertions. An
   inserted field's value starts with a space when ``SMFIP_HDR_LEADSPC`` was negotiated
   (Postfix then adds none itself) and folds with bare LF, which Postfix stores as line
   ends.
4. Dry run: everything is computed and logged (``dry_run=yes`` on the line); the reply is
   accept with no modification, and the evaluation is recorded as ``applied=none``.
5. The handler continues at every step before end of message, so the server asks the MTA
   not to wait for those replies (``SMFIP_NR_*``): a message costs a few round trips.
6. Starting, serving and stopping the daemon (and checking published keys) is
   ``postwarden.milter.service``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from postwarden.errors import PostwardenError, clip
from postwarden.milter import authres, dkim, dmarc, signing
from postwarden.milter.keys import PrivateKey
from postwarden.milter.metrics import MilterCounters
from postwarden.milter.protocol import (
    SMFIA_INET,
    SMFIA_INET6,
    SMFIP_HDR_LEADSPC,
    Body,
    ChangeHeader,
    Connect,
    EndOfMessage,
    Header,
    InsertHeader,
    MailFrom,
    Modification,
    Quarantine,
    RcptTo,
    Reply,
    ReplyCode,
    Verdict,
)
from postwarden.milter.server import (
    BaseHandler,
    EndOfMessageResult,
    SessionContext,
)
from postwarden.policy.model import Resolver
from postwarden.policy.spf_eval import check_identity
from postwarden.settings import Settings

if TYPE_CHECKING:
    from postwarden.milter.reports import EvaluationStore

log = logging.getLogger(__name__)

AR_NAME = "Authentication-Results"
DMARC_HEADER = "X-Postwarden-DMARC"
MAX_RECIPIENTS = 1000          # remembered per message (only the first is reported)
MAX_SHOWN = 120


# -- one message -------------------------------------------------------------------------


@dataclass
class MessageState:
    """What the MTA told us about the message in progress."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    oversized: bool = False
    # (index among the Authentication-Results fields, 1-based) of forged ones
    forged: list[int] = field(default_factory=list)
    ar_seen: int = 0


def _envelope(args: Sequence[str]) -> str:
    """The address of a MAIL FROM or RCPT TO argument, without angle brackets."""
    first = args[0].strip() if args else ""
    return first[1:-1] if first.startswith("<") and first.endswith(">") else first


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".") if "@" in address else ""


def client_address(connect: Connect | None) -> str | None:
    """The SMTP client's IP address, when the MTA gave one (not for unix or unknown)."""
    if connect is None or connect.family not in (SMFIA_INET, SMFIA_INET6):
        return None
    return connect.address


def build_message(headers: Sequence[tuple[str, bytes]], body: bytes, leadspc: bool) -> bytes:
    """The message as DKIM sees it: fields with CRLF line ends, a blank line, the body.

    Without ``SMFIP_HDR_LEADSPC`` Postfix has dropped the space after each colon; one is
    put back (the usual form; byte-exact only with the option, which Postfix offers)."""
    out = bytearray()
    for name, value in headers:
        text = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not leadspc and text:
            text = b" " + text
        out += name.encode("utf-8", "surrogateescape") + b":" + text + b"\r\n"
    return bytes(out) + b"\r\n" + body


def field_value(text: str | bytes, leadspc: bool) -> bytes:
    """A value to send in an add/insert/change header reply (theory point 3)."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    raw = raw.replace(b"\r\n", b"\n").rstrip(b"\n")
    raw = raw.lstrip(b" ") if not leadspc else raw
    if leadspc and not raw.startswith((b" ", b"\t")):
        raw = b" " + raw
    return raw


def signature_value(header: bytes) -> bytes:
    """The value of the ``DKIM-Signature:`` field ``dkim.sign`` returned."""
    name, _, value = header.partition(b":")
    if name.strip().lower() != b"dkim-signature":
        raise PostwardenError("dkim.sign returned something other than a DKIM-Signature")
    return value.rstrip(b"\r\n")


def forged_deletions(forged: Sequence[int]) -> list[ChangeHeader]:
    """Deletions of forged Authentication-Results fields, highest index first."""
    return [ChangeHeader(i, AR_NAME, b"") for i in sorted(set(forged), reverse=True)]


# -- the shared engine ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verification:
    """What the checks of one message found."""

    signatures: tuple[dkim.SignatureResult, ...]
    spf: dmarc.AuthOutcome | None
    spf_source: str                # "header" (policyd's) | "evaluated" | "none"
    dmarc: dmarc.DmarcResult | None


@dataclass
class Engine:
    """What every connection of one process shares (theory point 1)."""

    settings: Settings
    resolver: Resolver
    keys: Mapping[str, PrivateKey] = field(default_factory=dict)
    store: EvaluationStore | None = None
    counters: MilterCounters = field(default_factory=MilterCounters)
    cache: dkim.KeyCache = field(default_factory=dkim.KeyCache)

    @property
    def authserv_id(self) -> str:
        return self.settings.milter.authserv

    async def finish(self, ctx: SessionContext, message: MessageState) -> EndOfMessageResult:
        started = time.monotonic()
        try:
            return await self._finish(ctx, message)
        finally:
            self.counters.observe(time.monotonic() - started)

    async def _finish(self, ctx: SessionContext, message: MessageState) -> EndOfMessageResult:
        m = self.settings.milter
        leadspc = bool(ctx.negotiated and ctx.negotiated.protocol & SMFIP_HDR_LEADSPC)
        macros = ctx.macros
        client = client_address(ctx.connect)
        queue_id = clip(macros.get("i", "") or "-", 40)
        line = [f"milter: queue_id={queue_id} client={client or 'local'}"]
        deletions = forged_deletions(message.forged)
        if deletions:
            line.append(f"forged_ar_removed={len(deletions)}")
        from_fields = [v.decode("utf-8", "surrogateescape") for n, v in message.headers
                       if n.lower() == "from"]
        from_domain, _ = signing.from_domain(from_fields)
        line.append(f"from_domain={from_domain or '-'}")
        if message.oversized:
            self.counters.errors["oversized"] += 1
            line.append(f"action=continue reason=larger-than-{m.max_message_size}-bytes")
            return self._done(line, deletions, [], Verdict.CONTINUE, "oversized")
        decision = signing.decide(self.settings.dkim, from_header_domain=from_domain,
                                  macros=macros, client_address=client)
        internal = decision.internal
        raw = build_message(message.headers, bytes(message.body), leadspc)
        if m.signs and decision.sign:
            inserts = self._sign(raw, decision, leadspc, line)
            line.append("action=sign")
            return self._done(line, deletions, inserts, Verdict.CONTINUE, "signed")
        if not m.verifies:
            line.append("action=continue reason=not-signed")
            return self._done(line, deletions, [], Verdict.CONTINUE, "passed")
        found = await self._verify(ctx, message, raw, from_domain, client)
        methods = ar_methods(found, from_domain, message.sender, ctx.helo_name or "")
        header: list[Modification] = [InsertHeader(0, AR_NAME, field_value(
            authres.header_value(self.authserv_id, methods), leadspc))]
        line += [f"dkim={_dkim_summary(found.signatures)}",
                 f"spf={found.spf.result if found.spf else 'none'}({found.spf_source})"]
        verdict, applied, extra = self._disposition(found.dmarc, internal, leadspc, line)
        line.append("action=" + ("reject" if verdict != Verdict.CONTINUE else "continue"))
        await self._record(found, client, message, applied)
        return self._done(line, deletions, [*header, *extra], verdict,
                          "rejected" if applied == "reject" else
                          "quarantined" if applied == "quarantine" else "verified")

    def _done(self, line: list[str], deletions: Sequence[Modification],
              inserts: Sequence[Modification], verdict: Reply, outcome: str
              ) -> EndOfMessageResult:
        dry = self.settings.milter.dry_run
        self.counters.messages["dry-run" if dry else outcome] += 1
        if dry:
            log.info("%s dry_run=yes", " ".join(line))
            return EndOfMessageResult(Verdict.ACCEPT)
        log.info("%s", " ".join(line))
        if verdict != Verdict.CONTINUE:
            return EndOfMessageResult(verdict)  # a rejected message needs no changes
        self.counters.forged_removed += len(deletions)
        return EndOfMessageResult(verdict, (*deletions, *inserts))

    def _sign(self, raw: bytes, decision: signing.SigningDecision, leadspc: bool,
              line: list[str]) -> list[Modification]:
        inserts: list[Modification] = []
        for key in decision.keys:
            header = dkim.sign(raw, domain=key.domain, selector=key.selector,
                               key=self.keys[key.name])
            inserts.append(InsertHeader(0, "DKIM-Signature",
                                        field_value(signature_value(header), leadspc)))
            self.counters.signatures[key.algorithm] += 1
        line.append("signed=" + ",".join(f"{k.domain}/{k.selector}/{k.algorithm}"
                                         for k in decision.keys))
        return inserts

    async def _verify(self, ctx: SessionContext, message: MessageState, raw: bytes,
                      from_domain: str | None, client: str | None) -> Verification:
        m = self.settings.milter
        signatures_task = asyncio.ensure_future(dkim.verify(
            raw, self.resolver, budget=m.verify_budget, cache=self.cache))
        try:
            spf, source = await self._spf_outcome(ctx, message, client)
            signatures = tuple(await signatures_task)
        except dkim.DkimError as exc:
            log.info("milter: dkim: message not parsed: %s", exc)
            signatures = ()
        finally:
            signatures_task.cancel()     # when SPF failed: no orphan task (else a no-op)
        for s in signatures:
            self.counters.dkim_result(s.result.value)
        if spf is not None:
            self.counters.spf_result(spf.result)
        result = None
        d = self.settings.dmarc
        if d.enabled and from_domain:
            outcomes = [dmarc.AuthOutcome(s.domain.lower(), s.result.value, s.selector)
                        for s in signatures]
            result = await dmarc.evaluate(from_domain, spf, outcomes, self.resolver, d,
                                          null_sender=not message.sender)
        return Verification(signatures, spf, source, result)

    async def _spf_outcome(self, ctx: SessionContext, message: MessageState,
                           client: str | None) -> tuple[dmarc.AuthOutcome | None, str]:
        """SPF from policyd's header (``spf_source = "auto"``), else evaluated here; and
        which of the two it was ("header", "evaluated", "none")."""
        if self.settings.milter.spf_source == "auto":
            fields = [(n.encode("utf-8", "surrogateescape"), v) for n, v in message.headers]
            found = authres.spf_from_headers(fields, self.authserv_id,
                                             envelope_from=message.sender)
            if found is not None:
                return found, "header"
        spf = await self._spf(client, message.sender, ctx.helo_name or "")
        return spf, "evaluated" if spf is not None else "none"

    async def _spf(self, client: str | None, sender: str, helo: str
                   ) -> dmarc.AuthOutcome | None:
        if client is None or (not sender and not helo):
            return None
        answer = await check_identity(client, sender, helo, self.resolver,
                                      budget_seconds=self.settings.milter.verify_budget,
                                      receiver=self.authserv_id)
        scope = "mfrom" if sender else "helo"
        return dmarc.AuthOutcome(answer.domain.lower(), answer.result.value, scope=scope)

    def _disposition(self, result: dmarc.DmarcResult | None, internal: bool, leadspc: bool,
                     line: list[str]) -> tuple[Reply, str, list[Modification]]:
        """The verdict, what was applied (none | quarantine | reject), extra fields."""
        if result is None:
            line.append("dmarc=none")
            return Verdict.CONTINUE, "none", []
        line.append(f"dmarc={result.result} policy_domain={result.policy_domain or '-'} "
                    f"disposition={result.disposition}")
        d = self.settings.dmarc
        wanted = result.disposition
        how = d.on_reject if wanted == "reject" else d.on_quarantine \
            if wanted == "quarantine" else "none"
        if wanted != "none" and internal:
            line.append("applied=none reason=internal-sender")
            how = "none"
        elif how == "report":
            line.append("applied=none reason=report-only")
            how = "none"
        applied = {"reject": "reject", "quarantine": "quarantine", "header": "quarantine"
                   }.get(how, "none")
        if how != "none":
            line.append(f"applied={applied}" + (" (header)" if how == "header" else ""))
        self.counters.dmarc_result(result.result, applied)
        if how == "reject":
            return ReplyCode(550, reject_text(result)), applied, []
        if how == "quarantine":
            return Verdict.CONTINUE, applied, [Quarantine(quarantine_text(result))]
        if how == "header":
            return Verdict.CONTINUE, applied, [InsertHeader(0, DMARC_HEADER, field_value(
                f"quarantine; policy_domain={result.policy_domain}; "
                f"from_domain={result.from_domain}", leadspc))]
        return Verdict.CONTINUE, applied, []

    async def _record(self, found: Verification, client: str | None, message: MessageState,
                      applied: str) -> None:
        if found.dmarc is None or self.store is None or not self.settings.dmarc.record:
            return
        from postwarden.milter.reports import Evaluation

        dkim_outcomes = [dmarc.AuthOutcome(s.domain.lower(), s.result.value, s.selector)
                         for s in found.signatures]
        recorded = "none" if self.settings.milter.dry_run else applied
        try:
            evaluation = Evaluation.from_result(
                found.dmarc, time=time.time(), source_ip=client or "",
                envelope_from=domain_of(message.sender),
                envelope_to=domain_of(message.recipients[0]) if message.recipients else "",
                applied=recorded, spf=found.spf, dkim=dkim_outcomes)
            await self.store.add(evaluation)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store is not worth a message: count and go on
            self.counters.errors["store"] += 1
            log.warning("milter: evaluation not recorded: %s", clip(str(exc), 200))


def _dkim_summary(signatures: Sequence[dkim.SignatureResult]) -> str:
    if not signatures:
        return "none"
    return ",".join(f"{s.result.value}:{clip(s.domain, 60)}/{clip(s.selector, 30)}"
                    for s in signatures)


def reject_text(result: dmarc.DmarcResult) -> str:
    """The 550 text: RFC 3463 5.7.1 and what failed, in printable ASCII."""
    text = (f"5.7.1 Message rejected: it fails the DMARC policy (p=reject) of "
            f"{result.policy_domain or result.from_domain} for From domain "
            f"{result.from_domain}")
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:400]


def quarantine_text(result: dmarc.DmarcResult) -> str:
    text = f"DMARC policy of {result.policy_domain or result.from_domain}: quarantine"
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]


def ar_methods(found: Verification, from_domain: str | None, sender: str, helo: str
               ) -> list[authres.Method]:
    """The dkim, spf and dmarc results as RFC 8601 methods."""
    methods: list[authres.Method] = []
    for s in found.signatures:
        props = [("header.d", s.domain), ("header.s", s.selector)]
        if s.header_b:
            props.append(("header.b", s.header_b))
        reason = "" if s.result is dkim.DkimResult.PASS else s.reason
        methods.append(authres.Method("dkim", s.result.value, reason, tuple(props)))
    if not found.signatures:
        methods.append(authres.Method("dkim", "none"))
    if found.spf is not None:
        prop = ("smtp.mailfrom", sender) if found.spf.scope != "helo" else ("smtp.helo", helo)
        methods.append(authres.Method("spf", found.spf.result, properties=(prop,)))
    else:
        methods.append(authres.Method("spf", "none"))
    if found.dmarc is not None:
        methods.append(authres.Method("dmarc", found.dmarc.result, properties=(
            ("header.from", found.dmarc.from_domain),
            ("policy.dmarc", found.dmarc.disposition))))
    elif from_domain is None:
        methods.append(authres.Method("dmarc", "none", "no usable From domain"))
    return methods


# -- one connection --------------------------------------------------------------------------


class MilterHandler(BaseHandler):
    """One MTA connection: collects each message and lets the engine finish it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.message = MessageState()
        engine.counters.connections += 1

    async def mail_from(self, ctx: SessionContext, event: MailFrom) -> Reply:
        self.message = MessageState(sender=_envelope(event.args))
        return Verdict.CONTINUE

    async def rcpt_to(self, ctx: SessionContext, event: RcptTo) -> Reply:
        if len(self.message.recipients) < MAX_RECIPIENTS:
            self.message.recipients.append(_envelope(event.args))
        return Verdict.CONTINUE

    def _grow(self, size: int) -> bool:
        """Count ``size`` more bytes; False once the message is over the limit."""
        message = self.message
        message.size += size
        if not message.oversized and message.size > self.engine.settings.milter.max_message_size:
            message.oversized = True
            message.headers.clear()
            message.body = bytearray()
        return not message.oversized

    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        message = self.message
        if event.name.lower() == AR_NAME.lower():
            message.ar_seen += 1
            if authres.claims(event.value, self.engine.authserv_id):
                message.forged.append(message.ar_seen)
        if self._grow(len(event.name) + len(event.value) + 3):
            message.headers.append((event.name, event.value))
        return Verdict.CONTINUE

    async def body(self, ctx: SessionContext, event: Body) -> Reply:
        if self._grow(len(event.chunk)):
            self.message.body += event.chunk
        return Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        if event.chunk and self._grow(len(event.chunk)):
            self.message.body += event.chunk
        message, self.message = self.message, MessageState()
        return await self.engine.finish(ctx, message)

    async def abort(self, ctx: SessionContext) -> None:
        self.message = MessageState()

    async def close(self, ctx: SessionContext) -> None:
        self.engine.counters.connections -= 1
