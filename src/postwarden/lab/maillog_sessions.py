"""The sessions of a generated mail log: each rendered whole, its lines pushed on a heap.

Security: every line is built from the seeded ``random.Random`` of a ``World`` and the
fixed texts below; nothing is read from outside. Some lines deliberately carry what a
parser must survive: non-UTF-8 bytes (as surrogate escapes, written out by the renderer),
quoted local parts with blanks and commas, IPv6 clients and relays.
Standards: Postfix's log line forms (smtpd(8), postscreen(8), cleanup(8), qmgr(8), smtp(8),
local(8), virtual(8), pipe(8), bounce(8), pickup(8), dnsblog(8), anvil(8)); access(5)
HOLD/DISCARD, header_checks(5); Dovecot 2.3 and 2.4 auth failure lines.

Theory of operation
-------------------
1. A session (an inbound message, a submission, a NOQUEUE reject, a SASL brute force, a
   postscreen drop, cron mail, noise) is started at a time by ``Sessions.start_one`` and
   renders all its lines at once, each with a time, into ``Sessions.heap``; ``maillog``
   pops them in time order. The random draws happen in rendering order, so a seed gives one
   log.
2. Every line that matters to the totals carries a ``Fact`` (see ``maillog_truth``).
3. Traps for a parser, each counted as pflogsumm counts it: queued rejects (``QID: reject:``),
   ``reject_warning``, access HOLD/DISCARD in smtpd and header/body actions in cleanup,
   ``milter-reject`` from cleanup (counted) and from smtpd (not counted), mail received but
   never queued (cleanup reject), bounce notices and forwarded copies (delivered, never
   received), sizes from the first qmgr line only, recipient domains lower-cased but local
   parts kept, quoted local parts with blanks and commas, IPv6 clients and relays, long and
   short queue ids, non-UTF-8 bytes in postscreen lines, Dovecot lines and LMTP "saved mail"
   lines that are no deliveries.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from postwarden.lab.maillog_truth import Fact
from postwarden.lab.maillog_world import LOCAL_DOMAINS, Options, World


@dataclass(order=True, slots=True)
class Pending:
    """One rendered line waiting in the heap, ordered by time, then by push order."""

    time: float
    seq: int
    name: str = field(compare=False)
    pid: int | None = field(compare=False)
    message: str = field(compare=False)
    fact: Fact | None = field(compare=False)


def _seconds(value: float) -> str:
    """A delay as Postfix prints it: whole seconds from 10 on, else two digits."""
    if value >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}" if value >= 0.01 else "0"


TLS_IN = ("TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
          "server-signature RSA-PSS (2048 bits) server-digest SHA256")
SPAMHAUS = "zen.spamhaus.org"
RBL_TEXT = ("554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
            "https://www.spamhaus.org/query/ip/{ip}")
RCPT_REJECTS = (
    "454 4.7.1 <{rcpt}>: Relay access denied",
    "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table",
    RBL_TEXT,
    "450 4.7.1 <{helo}>: Helo command rejected: Host not found",
    "504 5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname",
    "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see "
    "https://postgrey.schweikert.ch/help/example.org.html",
    "450 4.7.1 Client host rejected: cannot find your hostname, [{ip}]",
    "554 5.7.1 <{rcpt}>: Recipient address rejected: Access denied",
)
DEFER_REASONS = (
    "connect to {mx}[{ip}]:25: Connection timed out",
    "connect to {mx}[{ip}]:25: Connection refused",
    "host {mx}[{ip}] said: 451 4.7.1 Please try again later (in reply to RCPT TO command)",
    "host {mx}[{ip}] said: 421 4.7.0 [TSS04] Messages temporarily deferred due to user "
    "complaints (in reply to end of DATA command)",
)
BOUNCE_REASONS = (
    "host {mx}[{ip}] said: 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown "
    "(in reply to RCPT TO command)",
    "host {mx}[{ip}] said: 552 5.2.2 Mailbox full (in reply to end of DATA command)",
)
SUBJECTS = ("Invoice 4711", "Meeting notes", "WIN A PRIZE", "Re: quarterly report",
            "Your parcel", "newsletter #12")
MECHANISMS = ("LOGIN", "PLAIN", "CRAM-MD5")


class Sessions:
    """Renders whole sessions into the heap (theory point 1)."""

    def __init__(self, world: World, options: Options) -> None:
        self.world = world
        self.rng = world.rng
        self.options = options
        self.heap: list[Pending] = []
        self._seq = 0
        self.myhostname = f"{options.hostname}.example.org"
        self.server_ip = "192.0.2.25"
        self.exotic = options.names == "all"
        self.kinds: tuple[Callable[[float], None], ...] = (
            self.inbound, self.submission, self.noqueue_reject, self.brute_force,
            self.postscreen, self.cron, self.noise)
        self.weights = (30, 14, 22, 16, 8, 2, 8)
        self._qmgr = {"postfix": world.pids["qmgr"], "postfix-out": world.next_pid()}

    # -- plumbing --------------------------------------------------------------------------

    def start_one(self, when: float) -> None:
        self.rng.choices(self.kinds, self.weights)[0](when)

    def emit(self, when: float, name: str, pid: int | None, message: str,
             fact: Fact | None = None) -> None:
        self._seq += 1
        heapq.heappush(self.heap, Pending(when, self._seq, name, pid, message, fact))

    def later(self, when: float, low: float = 0.001, high: float = 0.4) -> float:
        return when + self.rng.uniform(low, high)

    def qmgr(self, prefix: str) -> int:
        return self._qmgr[prefix]

    def mailbox(self, recipient: str) -> str:
        """The address local(8) logs for a recipient that an alias sent to a mailbox."""
        return f"{recipient.partition('@')[0]}@{self.myhostname}"

    def helo(self, client: str) -> str:
        name = client.partition("[")[0]
        if name == "unknown" or self.rng.random() < 0.2:
            return self.rng.choice(("localhost", "User", "WIN-8QZ3K1", "[127.0.0.1]",
                                    "h\u00e9lo.example"))
        return name

    # -- one message's life after smtpd/pickup -------------------------------------------------

    def queue(self, when: float, prefix: str, qid: str, sender: str, size: int,
              recipients: Sequence[str], deliver: Callable[[float, str, str, int], float],
              ) -> float:
        """cleanup and qmgr lines, the deliveries, then "removed"."""
        cleanup = self.world.next_pid()
        when = self.later(when)
        domain = sender.partition("@")[2] or self.myhostname
        self.emit(when, f"{prefix}/cleanup", cleanup,
                  f"{qid}: message-id=<{self.rng.getrandbits(64):x}@{domain}>")
        when = self.later(when, 0.01, 0.6)
        self.emit(when, f"{prefix}/qmgr", self.qmgr(prefix),
                  f"{qid}: from=<{sender}>, size={size}, nrcpt={len(recipients)} (queue active)",
                  Fact("size", qid, sender, size))
        last = when
        for recipient in recipients:
            last = max(last, deliver(self.later(when, 0.05, 2.0), qid, recipient, size))
        self.emit(self.later(last, 0.0, 0.01), f"{prefix}/qmgr", self.qmgr(prefix),
                  f"{qid}: removed", Fact("forget", qid))
        return last

    def delivery(self, when: float, name: str, qid: str, recipient: str, relay: str,
                 status: str, text: str, *, orig_to: str = "", forwarded: bool = False,
                 start: float | None = None) -> None:
        rng = self.rng
        delay = when - (start if start is not None else when - rng.uniform(0.1, 3))
        a, b, c = rng.uniform(0, 0.3), rng.uniform(0, 0.05), rng.uniform(0, 0.5)
        d = max(0.0, delay - a - b - c)
        dsn = {"sent": "2.0.0", "deferred": "4.4.1", "bounced": "5.1.1"}[status]
        fields = [f"{qid}: to=<{recipient}>"]
        if orig_to:
            fields.append(f"orig_to=<{orig_to}>")
        fields.append(f"relay={relay}")
        if name.endswith("/smtp") and status == "sent" and rng.random() < 0.2:
            fields.append(f"conn_use={rng.randrange(2, 9)}")
        fields += [f"delay={_seconds(delay)}",
                   f"delays={_seconds(a)}/{_seconds(b)}/{_seconds(c)}/{_seconds(d)}",
                   f"dsn={dsn}",
                   f"status={status} ({text})"]
        self.emit(when, name, self.world.next_pid(), ", ".join(fields),
                  Fact("delivery", qid, recipient, 1 if forwarded else 0, status))

    def local_delivery(self, when: float, qid: str, recipient: str, size: int) -> float:
        """A local recipient: LMTP to Dovecot, virtual, local or pipe; now and then a bounce or
        a forward (whose copy is a new message, delivered but never received)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.02:
            self.delivery(when, "postfix/virtual", qid, recipient, "virtual", "bounced",
                          "unknown user: \"" + recipient + "\"")
            return when
        if roll < 0.035:
            copy = self.world.queue_id(when)
            self.delivery(when, "postfix/local", qid, self.mailbox(recipient), "local",
                          "sent", f"forwarded as {copy}",
                          orig_to=recipient, forwarded=True)
            target = self.world.remote_address()
            return self.queue(when, "postfix", copy, "" if rng.random() < 0.1 else recipient,
                              size + rng.randrange(200, 900), [target], self.remote_delivery)
        if roll < 0.6:
            self.delivery(when, "postfix/lmtp", qid, recipient,
                          f"{self.myhostname}[private/dovecot-lmtp]", "sent",
                          f"250 2.0.0 <{recipient}> {rng.getrandbits(40):x} Saved")
            if rng.random() < 0.5:
                self.emit(when - 0.001, "dovecot", None,
                          f"lmtp({recipient})<{self.world.next_pid()}><{rng.getrandbits(48):x}>:"
                          f" msgid=<{rng.getrandbits(32):x}@x>: saved mail to INBOX")
        elif roll < 0.8:
            self.delivery(when, "postfix/virtual", qid, recipient, "virtual", "sent",
                          "delivered to maildir")
        elif roll < 0.9:
            self.delivery(when, "postfix/pipe", qid, recipient, "dovecot", "sent",
                          "delivered via dovecot service")
        else:
            self.delivery(when, "postfix/local", qid, self.mailbox(recipient), "local",
                          "sent", "delivered to mailbox", orig_to=recipient)
        return when

    def remote_delivery(self, when: float, qid: str, recipient: str, size: int,
                        prefix: str = "postfix", sender: str = "") -> float:
        """smtp to another MX: sent, or deferred (retried, re-sized by qmgr, maybe expired),
        or bounced (with a notice to the sender)."""
        rng = self.rng
        domain = recipient.partition("@")[2].lower()
        v6 = rng.random() < 0.1
        mx_ip = (f"2001:db8:25::{rng.randrange(1, 999):x}" if v6
                 else f"203.0.113.{rng.randrange(1, 255)}")
        mx = f"mx{rng.randrange(3)}.{domain}"
        name = f"{prefix}/smtp"
        start = when - rng.uniform(0.1, 2)
        roll = rng.random()
        if roll < 0.85:
            self.delivery(when, name, qid, recipient, f"{mx}[{mx_ip}]:25", "sent",
                          f"250 2.0.0 Ok: queued as {rng.getrandbits(40):X}")
            return when
        if roll < 0.9:
            reason = rng.choice(BOUNCE_REASONS).format(mx=mx, ip=mx_ip, rcpt=recipient)
            self.delivery(when, name, qid, recipient, f"{mx}[{mx_ip}]:25", "bounced", reason)
            return self.bounce_notice(when, prefix, qid, sender)
        reason = rng.choice(DEFER_REASONS).format(mx=mx, ip=mx_ip)
        for attempt in range(rng.randrange(1, 4)):
            if reason.startswith("connect"):
                self.emit(when - 0.001, name, self.world.next_pid(), reason)
            self.delivery(when, name, qid, recipient, "none" if reason.startswith("connect")
                          else f"{mx}[{mx_ip}]:25", "deferred", reason, start=start)
            when += 300 * 2 ** attempt + rng.uniform(0, 60)
            self.emit(when - 0.5, f"{prefix}/qmgr", self.qmgr(prefix),
                      f"{qid}: from=<{sender}>, size={size}, nrcpt=1 (queue active)",
                      Fact("size", qid, sender, size))
        final = rng.random()
        if final < 0.6:
            self.delivery(when, name, qid, recipient, f"{mx}[{mx_ip}]:25", "sent",
                          f"250 2.0.0 Ok: queued as {rng.getrandbits(40):X}", start=start)
            return when
        if final < 0.8:
            reason = rng.choice(BOUNCE_REASONS).format(mx=mx, ip=mx_ip, rcpt=recipient)
            self.delivery(when, name, qid, recipient, f"{mx}[{mx_ip}]:25", "bounced", reason,
                          start=start)
        else:
            self.emit(when, f"{prefix}/qmgr", self.qmgr(prefix),
                      f"{qid}: from=<{sender}>, status=expired, returned to sender")
        return self.bounce_notice(when, prefix, qid, sender)

    def bounce_notice(self, when: float, prefix: str, qid: str, sender: str) -> float:
        """bounce(8) writes a notice (from=<>) to the sender: sized and delivered, not received."""
        if not sender or "@" not in sender:
            return when
        notice = self.world.queue_id(when)
        when = self.later(when)
        self.emit(when, f"{prefix}/bounce", self.world.next_pid(),
                  f"{qid}: sender non-delivery notification: {notice}")
        size = self.rng.randrange(2000, 9000)
        if sender.partition("@")[2].lower() in LOCAL_DOMAINS:
            return self.queue(when, prefix, notice, "", size, [sender], self.local_delivery)
        return self.queue(when, prefix, notice, "", size, [sender],
                          lambda w, q, r, s: self.remote_delivery(w, q, r, s, prefix))

    def cleanup_action(self, when: float, prefix: str, qid: str, client: str, sender: str,
                       recipient: str, helo: str) -> str:
        """Now and then a header/body check or milter acts in cleanup; returns the action."""
        roll = self.rng.random()
        action = ("reject" if roll < 0.010 else "milter-reject" if roll < 0.015 else
                  "hold" if roll < 0.020 else "discard" if roll < 0.023 else
                  "warning" if roll < 0.033 else "milter-hold" if roll < 0.035 else
                  "milter-discard" if roll < 0.037 else "")
        if not action:
            return ""
        tail = f"from=<{sender}> to=<{recipient}> proto=ESMTP helo=<{helo}>"
        subject = self.rng.choice(SUBJECTS)
        if action == "milter-reject":
            text = f"END-OF-MESSAGE from {client}: 5.7.1 Rejected by spam filter; {tail}"
        elif action.startswith("milter-"):
            # pflogsumm's \b(hold|discard): matches inside milter-hold: and milter-discard:.
            text = (f"END-OF-MESSAGE from {client}: milter triggers "
                    f"{action[7:].upper()} action; {tail}")
        elif action == "discard":
            text = f"body {subject} from {client}; {tail}: Discarded by body check"
        else:
            reason = {"reject": "5.7.1 Message content rejected", "hold": "Held for review",
                      "warning": "Old mailer"}[action]
            text = f"header Subject: {subject} from {client}; {tail}: {reason}"
        self.emit(when, f"{prefix}/cleanup", self.world.next_pid(), f"{qid}: {action}: {text}",
                  Fact("cleanup", qid, action))
        return action

    # -- session kinds -------------------------------------------------------------------

    def smtpd_open(self, when: float, name: str, client: str) -> tuple[int, float]:
        pid = self.world.next_pid()
        self.emit(when, name, pid, f"connect from {client}")
        if self.rng.random() < 0.5:
            when = self.later(when, 0.01, 0.2)
            self.emit(when, name, pid, f"Anonymous TLS connection established from {client}: "
                      + TLS_IN)
        return pid, self.later(when)

    def access_action(self, when: float, name: str, pid: int, qid: str, client: str,
                      action: str, recipient: str, tail: str) -> float:
        """smtpd's access-map HOLD or DISCARD of one recipient."""
        what = ("Recipient address triggers HOLD action" if action == "hold"
                else "Sender address triggers DISCARD action")
        self.emit(when, name, pid, f"{qid}: {action}: RCPT from {client}: <{recipient}>: "
                  f"{what}; " + tail.format(rcpt=recipient), Fact("reject", qid, action))
        return self.later(when)

    def inbound(self, when: float) -> None:
        """Mail from another MX for local users (with the rarer twists of theory point 3)."""
        rng, world = self.rng, self.world
        client, ip = world.client()
        if rng.random() < 0.3:
            port = rng.randrange(1024, 65536)
            pscreen = world.pids["postscreen"]
            self.emit(when, "postfix/postscreen", pscreen,
                      f"CONNECT from [{ip}]:{port} to [{self.server_ip}]:25")
            when = self.later(when)
            self.emit(when, "postfix/postscreen", pscreen,
                      f"PASS {rng.choice(('NEW', 'OLD'))} [{ip}]:{port}")
            when = self.later(when)
        name = "postfix/smtpd"
        pid, when = self.smtpd_open(when, name, client)
        sender = "" if rng.random() < 0.05 else world.remote_address()
        helo = self.helo(client)
        tail = f"from=<{sender}> to=<{{rcpt}}> proto=ESMTP helo=<{helo}>"
        recipients = [world.local_address() for _ in range(rng.choice((1, 1, 1, 1, 2, 3)))]
        if rng.random() < 0.03:
            self.emit(when, name, pid, f"NOQUEUE: reject_warning: RCPT from {client}: 450 4.7.1 "
                      f"Client host rejected: cannot find your hostname, [{ip}]; "
                      + tail.format(rcpt=recipients[0]), Fact("reject", "", "reject_warning"))
            when = self.later(when)
        # An access HOLD/DISCARD on the first recipient is logged before the queue file
        # exists (NOQUEUE, as Postfix 3.7 does); on a later one with the queue id.
        action = rng.choice(("hold", "discard")) if rng.random() < 0.01 else ""
        first = action and (len(recipients) == 1 or rng.random() < 0.5)
        if first:
            when = self.access_action(when, name, pid, "NOQUEUE", client, action,
                                      recipients[0], tail)
        qid = world.queue_id(when)
        self.emit(when, name, pid, f"{qid}: client={client}", Fact("client", qid, client))
        if action and not first:
            when = self.access_action(when, name, pid, qid, client, action, recipients[-1],
                                      tail)
        commands = f"ehlo=1 mail=1 rcpt={len(recipients)} data=1 quit=1 commands=5"
        if rng.random() < 0.05:
            bad = world.local_address()
            when = self.later(when)
            self.emit(when, name, pid, f"{qid}: reject: RCPT from {client}: 550 5.1.1 <{bad}>: "
                      "Recipient address rejected: User unknown in virtual mailbox table; "
                      + tail.format(rcpt=bad), Fact("reject", qid, "reject"))
            commands = f"ehlo=1 mail=1 rcpt={len(recipients)}/{len(recipients) + 1} data=1 " \
                       f"quit=1 commands={5}/{6}"
        size = min(int(rng.lognormvariate(9.3, 1.1)), 40_000_000) + 300
        done = when
        if not action:
            when = self.later(when, 0.05, 1.5)
            action = self.cleanup_action(when, "postfix", qid, client, sender, recipients[0],
                                         helo)
        if action in ("", "warning"):
            self.queue(when, "postfix", qid, sender, size, recipients, self.local_delivery)
        else:
            self.emit(self.later(when), "postfix/cleanup", world.next_pid(),
                      f"{qid}: message-id=<{rng.getrandbits(60):x}@{helo}>", Fact("forget", qid))
        self.emit(self.later(done, 0.5, 2.0), name, pid, f"disconnect from {client} {commands}")

    def submission(self, when: float) -> None:
        """An authenticated user sends to other domains (postfix-out: another instance)."""
        rng, world = self.rng, self.world
        prefix, name = "postfix", "postfix/submission/smtpd"
        roll = rng.random()
        if self.exotic and roll < 0.3:
            name = "postfix/submissions/smtpd"
        elif self.exotic and roll < 0.4:
            prefix, name = "postfix-out", "postfix-out/smtpd"
        elif roll < 0.5:
            name = "postfix/smtps/smtpd"
        address = world.ip()
        host = f"{rng.choice(('laptop', 'phone', 'desk'))}{rng.randrange(50)}.dyn.example.net"
        client = f"{host}[{address}]" if rng.random() < 0.7 else f"unknown[{address}]"
        pid, when = self.smtpd_open(when, name, client)
        sender = world.local_address()
        user = sender.partition("@")[0]
        qid = world.queue_id(when)
        self.emit(when, name, pid, f"{qid}: client={client}, sasl_method="
                  f"{rng.choice(MECHANISMS[:2])}, sasl_username={user}",
                  Fact("client", qid, client))
        recipients = [world.remote_address() for _ in range(rng.choice((1, 1, 2, 3, 5)))]
        size = min(int(rng.lognormvariate(9.0, 1.3)), 20_000_000) + 400
        self.queue(when, prefix, qid, sender, size, recipients,
                   lambda w, q, r, s: self.remote_delivery(w, q, r, s, prefix, sender))
        self.emit(self.later(when, 0.3, 1.0), name, pid,
                  f"disconnect from {client} ehlo=2 starttls=1 auth=1 mail=1 "
                  f"rcpt={len(recipients)} data=1 quit=1 commands={7 + len(recipients)}")

    def noqueue_reject(self, when: float) -> None:
        """A client that is turned away before a queue file exists."""
        rng, world = self.rng, self.world
        client, ip = world.client()
        name = "postfix/smtpd"
        roll = rng.random()
        if self.exotic and roll < 0.05:
            name = "postfix/submissions/smtpd"
        elif roll < 0.1:
            name = rng.choice(("postfix/submission/smtpd", "postfix/smtps/smtpd"))
        pid, when = self.smtpd_open(when, name, client)
        helo = self.helo(client)
        sender = "" if rng.random() < 0.1 else world.remote_address()
        stage = rng.random()
        if stage < 0.05:
            self.emit(when, name, pid, f"NOQUEUE: reject: CONNECT from {client}: 554 5.7.1 "
                      f"<{client}>: Client host rejected: Access denied; proto=SMTP",
                      Fact("reject", "", "reject"))
        elif stage < 0.1:
            self.emit(when, name, pid, f"NOQUEUE: reject: EHLO from {client}: 504 5.5.2 <{helo}>:"
                      f" Helo command rejected: need fully-qualified hostname; proto=SMTP "
                      f"helo=<{helo}>", Fact("reject", "", "reject"))
        elif stage < 0.15:
            self.emit(when, name, pid, f"NOQUEUE: reject: MAIL from {client}: 553 5.7.1 "
                      f"<{sender}>: Sender address rejected: not logged in; from=<{sender}> "
                      f"proto=ESMTP helo=<{helo}>", Fact("reject", "", "reject"))
        elif stage < 0.18:
            # smtpd's own milter-reject: pflogsumm 1.1.5 does not count it, so no fact.
            self.emit(when, name, pid, f"NOQUEUE: milter-reject: MAIL from {client}: 550 5.7.1 "
                      f"Command rejected; from=<{sender}> proto=ESMTP helo=<{helo}>")
        else:
            template = rng.choice(RCPT_REJECTS)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                rcpt = (world.remote_address() if "Relay" in template
                        else world.local_address())
                text = template.format(rcpt=rcpt, ip=ip, helo=helo)
                self.emit(when, name, pid, f"NOQUEUE: reject: RCPT from {client}: {text}; "
                          f"from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>",
                          Fact("reject", "", "reject"))
                when = self.later(when)
        when = self.later(when)
        if rng.random() < 0.5:
            self.emit(when, name, pid, f"lost connection after RCPT from {client}")
            self.emit(when, name, pid, f"disconnect from {client} ehlo=1 mail=1 rcpt=0/1 "
                      "commands=2/3")
        else:
            self.emit(when, name, pid, f"disconnect from {client} ehlo=1 mail=1 rcpt=0/1 quit=1 "
                      "commands=3/4")

    def brute_force(self, when: float) -> None:
        """SASL guessing on the submission ports (and now and then on IMAP)."""
        rng, world = self.rng, self.world
        address = world.ip()
        client = f"unknown[{address}]"
        if rng.random() < 0.2:
            self.dovecot_failure(when, address)
            return
        name = rng.choice(("postfix/submission/smtpd", "postfix/smtps/smtpd")
                          + (("postfix/submissions/smtpd",) if self.exotic else ()))
        pid, when = self.smtpd_open(when, name, client)
        for _ in range(rng.randrange(1, 6)):
            mechanism = rng.choice(MECHANISMS)
            text = {"LOGIN": "UGFzc3dvcmQ6", "PLAIN": "authentication failure",
                    "CRAM-MD5": "authentication failure"}[mechanism]
            user = f", sasl_username={rng.choice(world.local_users)}" if rng.random() < 0.3 else ""
            self.emit(when, name, pid,
                      f"warning: {client}: SASL {mechanism} authentication failed: {text}{user}")
            when = self.later(when, 0.5, 3.0)
        self.emit(when, name, pid, f"lost connection after AUTH from {client}")
        self.emit(when, name, pid, f"disconnect from {client} ehlo=1 auth=0/1 commands=1/2")

    def dovecot_failure(self, when: float, address: str) -> None:
        rng = self.rng
        user = rng.choice(self.world.local_users)
        worker = self.world.next_pid()
        session = f"{rng.getrandbits(64):x}"
        if rng.random() < 0.5:
            self.emit(when, "dovecot", None, f"auth-worker({worker}): passwd-file({user},"
                      f"{address}): unknown user")
            self.emit(self.later(when, 1, 3), "dovecot", None,
                      f"imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
                      f"user=<{user}>, method=PLAIN, rip={address}, lip={self.server_ip}, TLS, "
                      f"session=<{session}>")
        else:  # Dovecot 2.4 wording
            self.emit(when, "dovecot", None,
                      f"auth-worker({worker}): passwd-file({user},{address})<{session}>: "
                      "Password mismatch")
            self.emit(self.later(when, 1, 3), "dovecot", None,
                      "imap-login: Login aborted: Connection closed (auth failed, 3 attempts in "
                      f"16 secs) (auth_failed): user=<{user}>, method=PLAIN, rip={address}, "
                      f"lip={self.server_ip}, TLS, session=<{session}>")

    def postscreen(self, when: float) -> None:
        """A zombie dropped by postscreen: pregreet, DNSBL, hangup or an outright reject."""
        rng, world = self.rng, self.world
        ip = world.ip()
        port = rng.randrange(1024, 65536)
        peer = f"[{ip}]:{port}"
        pid = world.pids["postscreen"]
        name = "postfix/postscreen"
        self.emit(when, name, pid, f"CONNECT from {peer} to [{self.server_ip}]:25")
        when = self.later(when, 0.1, 1.0)
        roll = rng.random()
        if roll < 0.3:
            junk = "EHLO User\\r\\n" if rng.random() < 0.9 else "\udcff\udcfe\\x01GET / HTTP/1.0"
            self.emit(when, name, pid, f"PREGREET {rng.randrange(5, 40)} after "
                      f"{rng.uniform(0, 1):.2f} from {peer}: {junk}")
        elif roll < 0.45:
            self.emit(when, name, pid, f"HANGUP after {rng.uniform(0, 9):.1f} from {peer} in "
                      "tests after SMTP handshake")
        elif roll < 0.55:
            self.emit(when, name, pid, f"COMMAND PIPELINING from {peer} after "
                      f"EHLO: QUIT\\r\\n\udcc3")
        elif roll < 0.6:
            self.emit(when, name, pid, f"NOQUEUE: reject: CONNECT from {peer}: too many "
                      "connections", Fact("reject", "", "reject"))
        else:
            self.emit(when - 0.05, "postfix/dnsblog", world.pids["dnsblog"],
                      f"addr {ip} listed by domain {SPAMHAUS} as "
                      f"127.0.0.{rng.choice((2, 3, 4, 11))}")
            self.emit(when, name, pid, f"DNSBL rank {rng.randrange(1, 9)} for {peer}")
            when = self.later(when, 0.5, 3)
            self.emit(when, name, pid, f"NOQUEUE: reject: RCPT from {peer}: 550 5.7.1 Service "
                      f"unavailable; client [{ip}] blocked using {SPAMHAUS}; "
                      f"from=<{world.remote_address()}>, to=<{world.local_address()}>, "
                      f"proto=ESMTP, helo=<{self.helo('unknown')}>", Fact("reject", "", "reject"))
        self.emit(self.later(when), name, pid, f"DISCONNECT {peer}")

    def cron(self, when: float) -> None:
        """Local mail from cron through pickup, delivered (or forwarded on) by local(8)."""
        qid = self.world.queue_id(when)
        self.emit(when, "postfix/pickup", self.world.pids["pickup"], f"{qid}: uid=0 from=<root>",
                  Fact("pickup", qid))
        sender = "" if self.rng.random() < 0.05 else f"root@{self.myhostname}"
        size = self.rng.randrange(600, 4000)

        def deliver(w: float, q: str, r: str, s: int) -> float:
            self.delivery(w, "postfix/local", q, r, "local", "sent", "delivered to mailbox",
                          orig_to="root")
            return w

        self.queue(when, "postfix", qid, sender, size, [f"root@{self.myhostname}"], deliver)

    def noise(self, when: float) -> None:
        """Lines no total depends on: warnings, TLS failures, anvil, master, scache."""
        rng, world = self.rng, self.world
        client, ip = world.client()
        pid = world.next_pid()
        roll = rng.random()
        if roll < 0.25:
            self.emit(when, "postfix/smtpd", pid, f"warning: hostname {client.partition('[')[0]}"
                      f" does not resolve to address {ip}: Name or service not known")
        elif roll < 0.45:
            self.emit(when, "postfix/smtpd", pid, f"SSL_accept error from {client}: -1")
            self.emit(when, "postfix/smtpd", pid, "warning: TLS library problem: "
                      "error:0A000126:SSL routines::unexpected eof while reading:"
                      "../ssl/record/rec_layer_s3.c:317:")
        elif roll < 0.6:
            self.emit(when, "postfix/smtpd", pid, f"warning: Connection rate limit exceeded: "
                      f"{rng.randrange(31, 90)} from {client} for service smtp")
        elif roll < 0.75:
            self.emit(when, "postfix/anvil", world.pids["anvil"], "statistics: max connection "
                      f"rate {rng.randrange(1, 20)}/60s for (smtp:{ip}) at Mar  5 10:00:00")
        elif roll < 0.8:
            self.emit(when, "postfix/master", world.pids["anvil"] - 1, "reload -- version 3.7.11,"
                      " configuration /etc/postfix")
        elif roll < 0.9:
            self.emit(when, "postfix/smtp", pid, f"Trusted TLS connection established to "
                      f"mx1.{world.remote_domain()}[203.0.113.9]:25: TLSv1.3 with cipher "
                      "TLS_AES_256_GCM_SHA384 (256/256 bits)")
        else:
            self.dovecot_failure(when, ip)
