"""``logs summary``: pflogsumm's totals, counted the way pflogsumm counts them, plus a security
section pflogsumm lacks.

Security: counts come from outside text; every per-key table that an attacker can grow
(clients, accounts, reasons) is bounded (``Bounded``: the smallest counts are dropped past a
cap), and the per-queue-id state (sizes, deferral flags) is dropped when qmgr logs
``removed`` and capped at the most recent ``MAX_QUEUE_IDS`` queue ids besides, so memory
does not grow with the length of the log. The
totals' own sets (distinct senders and recipients) grow with the number of distinct
addresses only.
Standards: pflogsumm 1.1.5 (Debian 1.1.5-8) counting rules, see docs/logs.md.
A large plain file may be counted in parts by several processes (summary_parallel.py, with
``PartSummary``, a subclass of ``Summary``): the merged counts are this module's, exactly.

Theory of operation (the counting rules, from pflogsumm's source, facts only):
- received: smtpd or postscreen ``QID: client=``, pickup ``QID: uid=|sender=``; the client's
  domain is remembered for the sender statistics until qmgr's first ``size=`` line.
- bytes received, senders, sending hosts/domains: on qmgr's first ``from=<s>, size=N`` line
  of a queue id that was received in this log (not for re-queued or forwarded mail).
  The sender's domain part is lower-cased (ASCII), an empty sender counts as ``from=<>``
  and its domain is the client's (or the address itself for pickup).
- delivered: ``status=sent`` lines per recipient, without ``forwarded as`` (forwarded);
  bytes delivered adds the message size per recipient; recipients and recipient domains
  are counted from these lines only.
- deferred: distinct queue ids with ``status=deferred`` (deferrals: all such lines);
  bounced: ``status=bounced`` lines.
- rejected, reject warnings, held, discarded: smtpd/postscreen ``reject``, ``reject_warning``,
  ``hold``, ``discard``; cleanup ``reject``/``milter-reject``, ``warning``,
  ``hold``/``milter-hold``, ``discard``/``milter-discard`` of ``header``, ``body`` or
  ``END-OF-MESSAGE`` (smtpd's ``milter-reject`` lines are not counted, as in pflogsumm).
One more difference on purpose: pflogsumm remembers every queue id's size for the whole
log, so when Postfix reuses a short queue id (its inode part) hours later, pflogsumm skips
the new message's size and gives its deliveries the old message's; here a queue id is
forgotten at qmgr's ``removed``, and the new message counts with its own size.
Differences on purpose (pflogsumm's blind spots, see docs/logs.md): pflogsumm drops every
line whose syslog name does not start with ``postfix/``, ``postfix/submission/`` or
``postfix/smtps/``, and does not recognise smtpd, postscreen, cleanup or pickup under any
other service name (``postfix/submissions/smtpd``, ``postfix/10025/smtpd``,
``postfix-out/...``); it skips ``journalctl -o short-iso`` stamps (``+0100``), fractional
BSD stamps and journald JSON; it misses delivery lines with a ``tls=`` field. Here all of
those count. ``pflogsumm_compat=True`` restores pflogsumm's name and stamp rules for
side-by-side comparisons.
"""

from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from postwarden.logs import events as ev
from postwarden.logs.parse import (
    REJECT_FROM,
    Found,
    Handler,
    Head,
    Parser,
    restriction_of,
    split_header,
    split_reply,
)

MAX_QUEUE_IDS = 200_000   # queue ids in the queue remembered at most (sizes, deferrals)
MAX_KEYS = 50_000         # per security table
CACHE_KEYS = 10_000       # per cache of derived values (client domains, replies, addresses)
POSTSCREEN_DROPS = frozenset({
    "PREGREET", "HANGUP", "DNSBL", "COMMAND PIPELINING", "COMMAND TIME LIMIT",
    "COMMAND COUNT LIMIT", "COMMAND LENGTH LIMIT", "NON-SMTP COMMAND", "BARE NEWLINE",
    "BLACKLISTED", "DENYLISTED"})
TOTAL_KEYS = ("received", "delivered", "forwarded", "deferred", "bounced", "rejected",
              "reject_warnings", "held", "discarded", "bytes_received", "bytes_delivered",
              "senders", "sending_hosts", "recipients", "recipient_hosts")

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_DOMAIN2 = re.compile(r"(.*)\.([^.]+)\.([^.]{3}|[^.]{2,3}\.[^.]{2})")
_PFLOGSUMM_NAME = re.compile(r"postfix(?:/(?:smtps|submission))?/([^\[:]*)")
_PFLOGSUMM_STAMP = re.compile(r"[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d \S+ |"
                              r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?"
                              r"(?:[+-]\d\d:\d\d|Z) \S+ ")
# handlers that pflogsumm runs only for one exact daemon name ("smtpd", not "10025/smtpd")
_EXACT_DAEMON = {"smtpd.client": ("smtpd", "postscreen"), "smtpd.reject": ("smtpd", "postscreen"),
                 "cleanup.action": ("cleanup",), "pickup.received": ("pickup",)}


def ascii_lower(text: str) -> str:
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def lower_domain(addr: str) -> str:
    """pflogsumm's address normal form: the part from the first '@' on in lower case."""
    i = addr.find("@")
    return addr if i < 0 else addr[:i] + ascii_lower(addr[i:])


def client_domain(name: str, ip: str) -> str:
    """pflogsumm's host/domain of a client: the IP when the name is unknown, else the name
    cut to its last two labels (three for 'co.uk'-like endings) when it ends in a 2- or
    3-letter label."""
    if name in ("", "unknown"):
        return ip
    m = _DOMAIN2.fullmatch(name)
    if m is None:
        return name
    return ascii_lower(f"{m.group(2)}.{m.group(3)}")


class Bounded:
    """A counter with at most ``cap`` keys: past the cap the lower half is dropped (the top
    of the table, what the report shows, survives)."""

    __slots__ = ("cap", "counts", "dropped")

    def __init__(self, cap: int = MAX_KEYS) -> None:
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.dropped = 0

    def add(self, key: str, n: int = 1) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += n
            return
        if len(counts) >= self.cap:
            keep = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[: self.cap // 2]
            self.dropped += len(counts) - len(keep)
            self.counts = counts = dict(keep)
        counts[key] = n

    def top(self, n: int) -> list[tuple[str, int]]:
        return heapq.nsmallest(n, self.counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass
class Security:
    sasl_by_client: Bounded = field(default_factory=Bounded)
    sasl_by_account: Bounded = field(default_factory=Bounded)
    sasl_by_source: Bounded = field(default_factory=Bounded)
    auth_backend_failures: int = 0
    relay_by_client: Bounded = field(default_factory=Bounded)
    rejects_by_restriction: Bounded = field(default_factory=Bounded)
    rejects_by_reason: Bounded = field(default_factory=Bounded)
    tls_by_client: Bounded = field(default_factory=Bounded)
    tls_by_reason: Bounded = field(default_factory=Bounded)
    postscreen: Bounded = field(default_factory=Bounded)
    postscreen_by_client: Bounded = field(default_factory=Bounded)
    decisions: Bounded = field(default_factory=Bounded)
    rate_limits: Bounded = field(default_factory=Bounded)
    protocol_abuse: Bounded = field(default_factory=Bounded)
    sasl_failures: int = 0
    relay_attempts: int = 0
    tls_failures: int = 0
    postscreen_drops: int = 0


class Summary:
    """Feeds lines, keeps pflogsumm's counters and the security tables."""

    def __init__(self, *, year: int | None = None, now: float | None = None,
                 pflogsumm_compat: bool = False, max_queue_ids: int = MAX_QUEUE_IDS) -> None:
        self.pflogsumm_compat = pflogsumm_compat
        self.max_queue_ids = max_queue_ids
        self.t: dict[str, int] = dict.fromkeys(TOTAL_KEYS, 0)
        self.deferrals = 0
        self.lines = 0
        self.matched = 0
        self._sizes: dict[str, int] = {}
        self._rcvd: dict[str, str] = {}
        self._deferred: dict[str, None] = {}   # an insertion-ordered set
        self.senders: dict[str, list[int]] = {}       # address -> [count, bytes]
        self.sending_domains: dict[str, list[int]] = {}
        self.recipients: dict[str, list[int]] = {}
        self.recipient_domains: dict[str, list[float]] = {}  # count, bytes, defers, dly, max
        self.per_day: dict[tuple[int, int, int], list[int]] = {}
        self.per_hour: list[list[int]] = [[0, 0, 0, 0, 0] for _ in range(24)]
        self.sec = Security()
        self._domains: dict[tuple[str, str], str] = {}
        self._names_ok: dict[tuple[str, str], bool] = {}
        self._hour_rows: dict[str, tuple[list[int], list[int]]] = {}
        self._addresses: dict[str, tuple[str, str]] = {}
        self._replies: dict[str, tuple[str, str]] = {}
        self._handlers: dict[str, Handler] = {
            "smtpd.client": self._received,
            "pickup.received": self._pickup,
            "qmgr.removed": self._removed,
            "qmgr.queued": self._queued,
            "delivery": self._delivery,
            "smtpd.reject": self._reject,
            "cleanup.action": self._cleanup,
            "smtpd.sasl_failed": self._sasl_failed,
            "dovecot.login": self._event,
            "dovecot.auth": self._event,
            "pam.failure": self._event,
            "sieve.badlogin": self._event,
            "smtpd.sasl_no_client": self._event,
            "smtpd.tls_failure": self._event,
            "smtpd.tls_library": self._event,
            "smtp.tls_failure": self._event,
            "postscreen.event": self._postscreen,
            "postwarden.decision": self._event,
            "smtpd.rate_limit": self._event,
            "smtpd.pipelining": self._event,
            "smtpd.non_smtp": self._event,
            "smtpd.bare_lf": self._event,
        }
        # only the patterns counted here are tried: the others cost nothing
        self.parser = Parser(year=year, now=now, only=frozenset(self._handlers))

    # -- the loop ----------------------------------------------------------------------------

    def feed(self, lines: Iterable[str]) -> None:
        handlers = self._handlers
        if self.pflogsumm_compat:
            handlers = {name: self._pflogsumm_only(name, h) for name, h in handlers.items()}
        n, hit = self.parser.scan(lines, handlers)
        self.lines += n
        self.matched += hit

    def _pflogsumm_only(self, name: str, handler: Handler) -> Handler:
        def filtered(m: re.Match[str], head: Head, found: Found) -> None:
            if self._pflogsumm_sees(name, head):
                handler(m, head, found)
        return filtered

    def _pflogsumm_sees(self, name: str, head: Head) -> bool:
        """pflogsumm's stamp and syslog-name rules (only with pflogsumm_compat)."""
        if not isinstance(head, str) or _PFLOGSUMM_STAMP.match(head) is None:
            return False
        sh = split_header(head)
        service = sh[0] if sh else ""
        ok = self._names_ok.get((name, service))
        if ok is None:
            m = _PFLOGSUMM_NAME.match(service)
            if m is None:
                ok = service in ("postfix", "postfix-script") and name not in _EXACT_DAEMON
            else:
                ok = name not in _EXACT_DAEMON or m.group(1) in _EXACT_DAEMON[name]
            if len(self._names_ok) < 10_000:
                self._names_ok[(name, service)] = ok
        return ok

    def _count_day(self, head: Head, column: int) -> None:
        # the rows for a line's date and hour, cached by the stamp up to the hour
        if isinstance(head, str):
            key = head[:head.find(":", 5)]
            rows = self._hour_rows.get(key)
            if rows is None:
                rows = self._hour_rows[key] = self._rows(head)
        else:
            rows = self._rows(head)
        rows[0][column] += 1
        rows[1][column] += 1

    def _rows(self, head: Head) -> tuple[list[int], list[int]]:
        if len(self._hour_rows) > 1000:
            self._hour_rows.clear()
        day, hour = self.parser.day_hour(head)
        row = self.per_day.get(day)
        if row is None:
            row = self.per_day[day] = [0, 0, 0, 0, 0]
        return row, self.per_hour[hour % 24]

    def _forget_oldest(self) -> None:
        # dicts keep insertion order: the first keys are the oldest queue ids
        for table in (self._sizes, self._rcvd, self._deferred):
            excess = len(table) - self.max_queue_ids
            if excess > 0:
                for qid in list(itertools.islice(table, excess + self.max_queue_ids // 10)):
                    del table[qid]

    # -- pflogsumm's counters ----------------------------------------------------------------

    # The handlers take (match, header, found); queued(), deferred_once() and removed() take
    # values, because the merge of a parallel run (summary_parallel.py) replays them.

    def _received(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid, name, ip = m.group("qid", "name", "ip")
        self.t["received"] += 1
        self._count_day(head, 0)
        key = (name, ip)
        dom = self._domains.get(key)
        if dom is None:
            dom = client_domain(name, ip)
            if len(self._domains) >= CACHE_KEYS:
                self._domains.clear()
            self._domains[key] = dom
        self._rcvd[qid] = dom
        if len(self._rcvd) > self.max_queue_ids:
            self._forget_oldest()

    def _pickup(self, m: re.Match[str], head: Head, found: Found) -> None:
        self.t["received"] += 1
        self._count_day(head, 0)
        self._rcvd[m.group("qid")] = "pickup"

    def _queued(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid, sender, size = m.group("qid", "sender", "size")
        self.queued(qid, sender, size)

    def queued(self, qid: str, sender: str, size_text: str) -> None:
        if self._sizes.get(qid):
            return
        size = int(size_text)
        self._sizes[qid] = size
        if len(self._sizes) > self.max_queue_ids:
            self._forget_oldest()
        whence = self._rcvd.pop(qid, "")
        if not whence:
            return
        addr = lower_domain(sender) if sender else "from=<>"
        i = addr.find("@")
        # no "user@domain": the client's domain stands in (the address itself for pickup)
        fallback = addr if whence == "pickup" else whence
        dom = addr[i + 1:] if 0 < i < len(addr) - 1 else fallback
        t = self.t
        row = self.sending_domains.get(dom)
        if row is None:
            row = self.sending_domains[dom] = [0, 0]
            t["sending_hosts"] += 1
        row[0] += 1
        row[1] += size
        row = self.senders.get(addr)
        if row is None:
            row = self.senders[addr] = [0, 0]
            t["senders"] += 1
        row[0] += 1
        row[1] += size
        t["bytes_received"] += size

    def _address(self, raw: str) -> tuple[str, str]:
        """A recipient in pflogsumm's normal form and its domain (cached: they repeat)."""
        known = self._addresses.get(raw)
        if known is None:
            addr = lower_domain(raw)
            i = addr.find("@")
            known = (addr, addr[i + 1:] if i > 0 else addr)
            if len(self._addresses) >= CACHE_KEYS:
                self._addresses.clear()
            self._addresses[raw] = known
        return known

    def _delivery(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid, rcpt, delay_text, status, rest = m.group("qid", "rcpt", "delay", "status", "rest")
        t = self.t
        if status == "sent":
            if "forwarded as " in rest:
                t["forwarded"] += 1
                return
            # the busiest handler: _address and _count_day written out
            known = self._addresses.get(rcpt)
            if known is None:
                known = self._address(rcpt)
            addr, dom = known
            try:
                delay = float(delay_text)
            except ValueError:
                delay = 0.0
            drow = self.recipient_domains.get(dom)
            if drow is None:
                drow = self.recipient_domains[dom] = [0, 0, 0, 0.0, 0.0]
            if not drow[0]:
                t["recipient_hosts"] += 1
            size = self._sizes.get(qid, 0)
            drow[0] += 1
            drow[1] += size
            drow[3] += delay
            if not drow[4] or delay > drow[4]:
                drow[4] = delay
            row = self.recipients.get(addr)
            if row is None:
                row = self.recipients[addr] = [0, 0]
                t["recipients"] += 1
            row[0] += 1
            row[1] += size
            t["delivered"] += 1
            t["bytes_delivered"] += size
            if isinstance(head, str):
                rows = self._hour_rows.get(head[:head.find(":", 5)])
                if rows is not None:
                    rows[0][1] += 1
                    rows[1][1] += 1
                    return
            self._count_day(head, 1)
        elif status == "deferred":
            self.deferrals += 1
            self.deferred_once(qid)
            self._count_day(head, 2)
            dom = self._address(rcpt)[1]
            drow = self.recipient_domains.get(dom)
            if drow is None:
                drow = self.recipient_domains[dom] = [0, 0, 0, 0.0, 0.0]
            drow[2] += 1
            delay = _delay(delay_text)
            if not drow[4] or delay > drow[4]:
                drow[4] = delay
        elif status == "bounced":
            t["bounced"] += 1
            self._count_day(head, 3)

    def deferred_once(self, qid: str) -> None:
        """pflogsumm counts a deferred message once, however often it is deferred."""
        if qid not in self._deferred:
            self._deferred[qid] = None
            self.t["deferred"] += 1
            if len(self._deferred) > self.max_queue_ids:
                self._forget_oldest()

    def _removed(self, m: re.Match[str], head: Head, found: Found) -> None:
        self.removed(m.group("qid"))

    def removed(self, qid: str) -> None:
        # the message left the queue: its id will not be seen again (until Postfix reuses it)
        self._sizes.pop(qid, None)
        self._rcvd.pop(qid, None)
        self._deferred.pop(qid, None)

    def _reject(self, m: re.Match[str], head: Head, found: Found) -> None:
        action, rest = m.group("action", "rest")
        key = _ACTION_TOTAL.get(action)
        if key is not None:
            self.t[key] += 1
            self._count_day(head, 4)
        if action not in ("reject", "milter-reject", "proxy-reject"):
            return
        # the security tables need the client, the command and the reason: taken with the
        # parser's own helpers, without building the whole event; the reason's class is
        # cached by the reply text (most rejects repeat a few replies)
        rm = REJECT_FROM.match(rest)
        if rm is None:
            return
        stage, ip, text = rm.group("stage", "ip", "text")
        cut = text.find("; from=<")
        reply = text if cut < 0 else text[:cut]
        known = self._replies.get(reply)
        if known is None:
            reason = split_reply(reply)[2]
            known = (reason[:100], restriction_of(reason) or "(none)")
            if len(self._replies) >= CACHE_KEYS:
                self._replies.clear()
            self._replies[reply] = known
        reason, restriction = known
        s = self.sec
        s.rejects_by_restriction.add(restriction)
        s.rejects_by_reason.add(stage + " " + reason)
        if restriction == "Relay access denied":
            s.relay_attempts += 1
            s.relay_by_client.add(ip)

    def _sasl_failed(self, m: re.Match[str], head: Head, found: Found) -> None:
        ip, rest = m.group("ip", "rest")
        s = self.sec
        s.sasl_failures += 1
        s.sasl_by_client.add(ip)
        s.sasl_by_account.add(rest.partition(", sasl_username=")[2] or "(none given)")
        s.sasl_by_source.add("postfix/smtp")

    def _postscreen(self, m: re.Match[str], head: Head, found: Found) -> None:
        kind = m.group("kind")
        if kind in POSTSCREEN_DROPS:
            self._event(m, head, found)

    def _cleanup(self, m: re.Match[str], head: Head, found: Found) -> None:
        key = _CLEANUP_TOTAL[m.group("action")]
        self.t[key] += 1
        self._count_day(head, 4)

    # -- the security section ----------------------------------------------------------------

    def _event(self, m: re.Match[str], head: Head, found: Found) -> None:
        # observe() reads no time, host or pid: the stamp is not converted
        event = self.parser.build_untimed(found)
        if event is not None:
            self.observe(event)

    def observe(self, event: ev.Event) -> None:
        s = self.sec
        if isinstance(event, ev.SaslFailure):
            s.sasl_failures += event.attempts
            s.sasl_by_client.add(event.client or "(unknown)", event.attempts)
            s.sasl_by_account.add(event.username or "(none given)", event.attempts)
            s.sasl_by_source.add(f"{event.source}/{event.protocol}", event.attempts)
        elif isinstance(event, ev.AuthBackendFailure):
            s.auth_backend_failures += 1
        elif isinstance(event, ev.Reject):
            if event.warning:
                return
            s.rejects_by_restriction.add(event.restriction or "(none)")
            s.rejects_by_reason.add(f"{event.stage} {event.reason[:100]}")
            if event.restriction == "Relay access denied":
                s.relay_attempts += 1
                s.relay_by_client.add(event.client)
        elif isinstance(event, ev.TlsFailure):
            s.tls_failures += 1
            s.tls_by_client.add(event.client or "(not logged)")
            s.tls_by_reason.add(event.reason[:100])
        elif isinstance(event, ev.Postscreen):
            if event.kind in POSTSCREEN_DROPS:
                s.postscreen_drops += 1
                s.postscreen.add(event.kind)
                s.postscreen_by_client.add(event.client)
        elif isinstance(event, ev.PolicyDecision):
            s.decisions.add(f"{event.check} {event.action}"
                            + (" (dry run)" if event.dry_run else ""))
        elif isinstance(event, ev.RateLimit):
            s.rate_limits.add(f"{event.kind}: {event.client}", 1)
        elif isinstance(event, ev.ProtocolAbuse):
            s.protocol_abuse.add(f"{event.kind}: {event.client}")

    # -- results -----------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return dict(self.t)

    def to_json(self, top: int = 10) -> dict[str, Any]:
        s = self.sec

        def table(b: Bounded) -> list[dict[str, Any]]:
            return [{"key": k, "count": v} for k, v in b.top(top)]

        return {
            "totals": self.totals(),
            "deferrals": self.deferrals,
            "lines": {"read": self.lines, "recognised": self.matched},
            "per_day": [{"date": f"{d[0]:04d}-{d[1]:02d}-{d[2]:02d}", "received": r[0],
                         "delivered": r[1], "deferred": r[2], "bounced": r[3],
                         "rejected": r[4]} for d, r in sorted(self.per_day.items())],
            "per_hour": [{"hour": h, "received": r[0], "delivered": r[1], "deferred": r[2],
                          "bounced": r[3], "rejected": r[4]}
                         for h, r in enumerate(self.per_hour)],
            "top_senders": _top_rows(self.senders, top),
            "top_recipients": _top_rows(self.recipients, top),
            "security": {
                "sasl_failures": s.sasl_failures,
                "sasl_failures_by_client": table(s.sasl_by_client),
                "sasl_failures_by_account": table(s.sasl_by_account),
                "sasl_failures_by_source": table(s.sasl_by_source),
                "auth_backend_failures": s.auth_backend_failures,
                "relay_attempts": s.relay_attempts,
                "relay_attempts_by_client": table(s.relay_by_client),
                "rejects_by_restriction": table(s.rejects_by_restriction),
                "rejects_by_reason": table(s.rejects_by_reason),
                "tls_failures": s.tls_failures,
                "tls_failures_by_client": table(s.tls_by_client),
                "tls_failures_by_reason": table(s.tls_by_reason),
                "postscreen_drops": s.postscreen_drops,
                "postscreen_drops_by_test": table(s.postscreen),
                "postscreen_drops_by_client": table(s.postscreen_by_client),
                "postwarden_decisions": table(s.decisions),
                "rate_limits": table(s.rate_limits),
                "protocol_abuse": table(s.protocol_abuse),
            },
        }


_ACTION_TOTAL = {"reject": "rejected", "reject_warning": "reject_warnings", "hold": "held",
                 "discard": "discarded"}
_CLEANUP_TOTAL = {"reject": "rejected", "milter-reject": "rejected",
                  "warning": "reject_warnings", "hold": "held", "discard": "discarded",
                  # pflogsumm's unanchored "\bhold: " also finds "milter-hold: "
                  "milter-hold": "held", "milter-discard": "discarded"}


def _delay(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _top_rows(table: dict[str, list[int]], n: int) -> list[dict[str, Any]]:
    rows = heapq.nsmallest(n, table.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return [{"address": k, "count": v[0], "bytes": v[1]} for k, v in rows]
