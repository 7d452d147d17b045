"""The log patterns, kept as data: one regular expression per line shape, the programs it
applies to, and golden sample lines with the event each must give.

Security: every expression here runs on attacker-controlled text (HELO names, addresses,
reasons, raw client bytes). Each one is anchored where it starts (``re.match`` at the start of
the message), has at most one unbounded ``.*`` and that one last, and uses only character
classes that cannot overlap with the literal that follows them, so matching is linear in the
line length; the finer splitting of free text (``sasl_username=``, ``from=<..>``) is done with
``str`` methods in parse_builders.py, never with nested quantifiers.
tests/unit/logs/test_patterns.py feeds adversarial lines under a time bound and fails when a
pattern has no sample.
Standards: Postfix 3.x log wording (smtpd, postscreen, qmgr, cleanup, pickup, smtp/lmtp/local/
virtual/pipe/error); Dovecot 2.3 and 2.4 login and auth wording; postwarden's own
``policyd:``/``milter:``/``watch:`` key=value decision lines.

Sample lines use documentation addresses (RFC 5737, RFC 3849) and example domains; ``expect``
lists the event class (``type``) and the fields that must have those values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# A client as Postfix prints it: "name[ip]" or "[ip]", optionally ":port" after it. The
# name never holds "[", the address never "]"; IPv6 addresses are split at the "]".
CLIENT = r"(?P<name>[^\[\s]*)\[(?P<ip>[^\]\s]*)\](?::\d+)?"
QID = r"(?P<qid>[0-9A-Za-z]+)"

# process names that deliver mail (their lines carry "to=<..>, relay=..")
DELIVERY_AGENTS = ("smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard",
                   "relay")
POSTFIX_ANY = "postfix:*"   # the generic patterns tried for every Postfix process last


@dataclass(frozen=True)
class Sample:
    line: str
    expect: Mapping[str, object]


@dataclass(frozen=True)
class Pattern:
    name: str
    programs: tuple[str, ...]   # process names (last syslog_name component) it applies to
    regex: str                  # matched at the start of the message
    samples: tuple[Sample, ...]
    doc: str = ""
    # A cheap literal test before the expression runs: the message (or, with after_qid, the
    # text after its first ": ") must start with one of these. Empty: no test (then every
    # line of the pattern's daemons meets the expression).
    guard: tuple[str, ...] = ()
    after_qid: bool = False


def _s(line: str, **expect: object) -> Sample:
    return Sample(line, expect)


SMTPD = ("smtpd",)
SMTPD_PS = ("smtpd", "postscreen")
DOVECOT = ("dovecot",)

PATTERNS: tuple[Pattern, ...] = (
    # -- smtpd: the busiest lines first -----------------------------------------------------
    Pattern(
        "smtpd.client", SMTPD_PS, QID + r": client=" + CLIENT + r"(?P<rest>.*)",
        (
            _s("Mar  4 09:10:11 mx1 postfix/smtpd[2101]: 3F1A2B4C5D: "
               "client=mail.example.org[192.0.2.25]",
               type="Received", queue_id="3F1A2B4C5D", client="192.0.2.25",
               client_name="mail.example.org", service="postfix/smtpd", process="smtpd"),
            _s("2024-06-01T10:00:00.123456+02:00 mx1 postfix/submissions/smtpd[77]: "
               "4Vx9kQ2mLqz7Ybn: client=unknown[2001:db8::42], sasl_method=PLAIN, "
               "sasl_username=alice@example.net",
               type="SaslSuccess", queue_id="4Vx9kQ2mLqz7Ybn", client="2001:db8::42",
               username="alice@example.net", mechanism="PLAIN",
               service="postfix/submissions/smtpd", time=1717228800.123456),
        ),
        "a message accepted by smtpd (with SASL: an authenticated submission)",
        guard=("client=",), after_qid=True,
    ),
    Pattern(
        "smtpd.connect", SMTPD, r"connect from " + CLIENT,
        (_s("Mar  4 09:10:10 mx1 postfix/smtpd[2101]: connect from "
            "mail.example.org[192.0.2.25]",
            type="Connect", client="192.0.2.25", client_name="mail.example.org", pid=2101),),
        guard=("connect from ",),
    ),
    Pattern(
        "smtpd.disconnect", SMTPD, r"disconnect from " + CLIENT + r"(?: (?P<rest>.*))?",
        (
            _s("Mar  4 09:10:12 mx1 postfix/smtpd[2101]: disconnect from "
               "unknown[198.51.100.7] ehlo=1 auth=0/1 quit=1 commands=2/3",
               type="Disconnect", client="198.51.100.7", auth="0/1",
               commands="ehlo=1 auth=0/1 quit=1 commands=2/3"),
            _s("Mar  4 09:10:12 mx1 postfix-out/smtpd[2101]: disconnect from "
               "unknown[198.51.100.7]",
               type="Disconnect", client="198.51.100.7", commands="",
               service="postfix-out/smtpd"),
        ),
        guard=("disconnect from ",),
    ),
    Pattern(
        "smtpd.reject",
        SMTPD_PS,
        r"(?P<qid>NOQUEUE|[0-9A-Za-z]+): (?P<action>reject|reject_warning|milter-reject|"
        r"hold|discard|proxy-reject): (?P<rest>.*)",
        (
            _s("Mar  4 09:11:00 mx1 postfix/smtpd[2102]: NOQUEUE: reject: RCPT from "
               "unknown[203.0.113.9]: 554 5.7.1 <victim@example.net>: Relay access denied; "
               "from=<spam@example.com> to=<victim@example.net> proto=ESMTP "
               "helo=<bogus.example>",
               type="Reject", client="203.0.113.9", stage="RCPT", code=554, dsn="5.7.1",
               restriction="Relay access denied", sender="spam@example.com",
               recipient="victim@example.net", helo="bogus.example", warning=False),
            _s("Mar  4 09:11:01 mx1 postfix/postscreen[99]: NOQUEUE: reject: RCPT from "
               "[2001:db8:5::9]:40122: 550 5.7.1 Service unavailable; client "
               "[2001:db8:5::9] blocked using dnsbl.example.net; from=<a@example.com>, "
               "to=<b@example.org>, proto=ESMTP, helo=<x.example>",
               type="Reject", client="2001:db8:5::9", code=550,
               restriction="blocked using dnsbl.example.net", sender="a@example.com",
               recipient="b@example.org", helo="x.example", process="postscreen"),
            _s("Mar  4 09:11:02 mx1 postfix/10025/smtpd[2103]: 7AB12CD3E4: reject_warning: "
               "RCPT from host.example.com[192.0.2.80]: 450 4.7.1 <h>: Helo command "
               "rejected: need fully-qualified hostname; from=<> to=<u@example.org> "
               "proto=SMTP helo=<h>",
               type="Reject", warning=True, action="reject_warning", queue_id="7AB12CD3E4",
               restriction="Helo command rejected", sender="", helo="h",
               service="postfix/10025/smtpd"),
            _s("Mar  4 09:11:03 mx1 postfix/smtpd[2104]: 4B0D1E2F3A: hold: RCPT from "
               "host.example.com[192.0.2.81]: <u@example.org>: Recipient address "
               "triggers HOLD action; from=<s@example.com> to=<u@example.org> proto=ESMTP "
               "helo=<host.example.com>",
               type="Hold", queue_id="4B0D1E2F3A", stage="RCPT", client="192.0.2.81"),
        ),
        "smtpd and postscreen access decisions: reject, reject_warning, hold, discard",
        guard=("reject", "milter-reject", "hold", "discard", "proxy-reject"), after_qid=True,
    ),
    Pattern(
        "smtpd.sasl_failed", SMTPD,
        r"warning: " + CLIENT + r": SASL (?P<mech>[\w-]+) authentication failed:? ?"
        r"(?P<rest>.*)",
        (
            _s("Mar  4 09:12:00 mx1 postfix/submission/smtpd[2200]: warning: "
               "unknown[203.0.113.50]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
               type="SaslFailure", client="203.0.113.50", mechanism="LOGIN", username="",
               source="postfix", reason="UGFzc3dvcmQ6"),
            _s("Mar  4 09:12:01 mx1 postfix/smtpd[2201]: warning: unknown[203.0.113.51]:"
               "58211: SASL PLAIN authentication failed: (reason unavailable), "
               "sasl_username=admin",
               type="SaslFailure", client="203.0.113.51", mechanism="PLAIN",
               username="admin", reason="(reason unavailable)"),
        ),
        guard=("warning: ",),
    ),
    Pattern(
        "smtpd.lost", SMTPD,
        r"(?:NOQUEUE: )?(?P<kind>lost connection|timeout|too many errors) after "
        r"(?P<after>[\w.-]+)(?: \(\d+ bytes\))? from " + CLIENT,
        (
            _s("Mar  4 09:12:02 mx1 postfix/smtpd[2201]: lost connection after AUTH from "
               "unknown[203.0.113.51]",
               type="LostConnection", client="203.0.113.51", after="AUTH",
               kind="lost connection"),
            _s("Mar  4 09:12:03 mx1 postfix/smtpd[2202]: timeout after DATA (1024 bytes) "
               "from host.example.com[192.0.2.82]",
               type="LostConnection", kind="timeout", after="DATA"),
        ),
        guard=("lost connection", "timeout after", "too many errors", "NOQUEUE: lost"),
    ),
    Pattern(
        "smtpd.pipelining", SMTPD,
        r"improper command pipelining after (?P<after>\S+) from " + CLIENT
        + r":? ?(?P<rest>.*)",
        (_s("Mar  4 09:12:04 mx1 postfix/smtpd[2203]: improper command pipelining after "
            "EHLO from unknown[198.51.100.60]: MAIL FROM:<x@example.com>",
            type="ProtocolAbuse", client="198.51.100.60",
            kind="improper command pipelining", detail="after EHLO: MAIL FROM:<x@example.com>"),),
        guard=("improper command pipelining",),
    ),
    Pattern(
        "smtpd.non_smtp", SMTPD,
        r"warning: non-SMTP command from " + CLIENT + r":? ?(?P<rest>.*)",
        (_s("Mar  4 09:12:05 mx1 postfix/smtpd[2204]: warning: non-SMTP command from "
            "unknown[198.51.100.61]: GET / HTTP/1.1",
            type="ProtocolAbuse", client="198.51.100.61", kind="non-SMTP command",
            detail="GET / HTTP/1.1"),),
        guard=("warning: non-SMTP",),
    ),
    Pattern(
        "smtpd.bare_lf", SMTPD,
        r"(?:warning: )?bare <LF> received after (?P<after>\S+) from " + CLIENT,
        (_s("Mar  4 09:12:06 mx1 postfix/smtpd[2205]: bare <LF> received after DATA from "
            "unknown[198.51.100.62]",
            type="ProtocolAbuse", client="198.51.100.62", kind="bare <LF> received",
            detail="after DATA"),),
        guard=("bare <LF>", "warning: bare <LF>"),
    ),
    Pattern(
        "smtpd.rate_limit", SMTPD,
        r"warning: (?P<kind>[A-Za-z ]{1,60}) limit exceeded: (?P<count>\d+) from " + CLIENT
        + r"(?: for service (?P<svc>\S+))?",
        (_s("Mar  4 09:12:07 mx1 postfix/smtpd[2206]: warning: Connection rate limit "
            "exceeded: 31 from unknown[203.0.113.70] for service smtp",
            type="RateLimit", client="203.0.113.70", kind="Connection rate", count=31,
            limit_service="smtp"),),
        guard=("warning: ",),
    ),
    Pattern(
        "smtpd.tls_failure", (*SMTPD, "tlsproxy"),
        r"SSL_accept error from " + CLIENT + r":? ?(?P<rest>.*)",
        (_s("Mar  4 09:12:08 mx1 postfix/smtpd[2207]: SSL_accept error from "
            "unknown[198.51.100.63]: lost connection",
            type="TlsFailure", client="198.51.100.63", reason="lost connection",
            direction="in"),),
        guard=("SSL_accept error",),
    ),
    Pattern(
        "smtpd.tls_library", (*SMTPD, "tlsproxy", "smtp"),
        r"warning: TLS library problem: (?P<rest>.*)",
        (_s("Mar  4 09:12:09 mx1 postfix/smtpd[2207]: warning: TLS library problem: "
            "error:0A000076:SSL routines::no suitable signature algorithm",
            type="TlsFailure", client="",
            reason="error:0A000076:SSL routines::no suitable signature algorithm"),),
        guard=("warning: TLS library problem",),
    ),
    Pattern(
        "tls.established", (*SMTPD, "tlsproxy", "smtp", "lmtp"),
        r"(?P<trust>Anonymous|Trusted|Verified|Untrusted) TLS connection established "
        r"(?P<dir>from|to) " + CLIENT + r": (?P<proto>\S+) with cipher (?P<cipher>\S+)",
        (_s("Mar  4 09:12:10 mx1 postfix/smtpd[2208]: Anonymous TLS connection established "
            "from mail.example.org[192.0.2.25]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 "
            "(256/256 bits)",
            type="TlsEstablished", client="192.0.2.25", trust="Anonymous",
            protocol="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", direction="in"),),
        guard=("Anonymous TLS", "Trusted TLS", "Verified TLS", "Untrusted TLS"),
    ),
    Pattern(
        "smtpd.sasl_no_client", SMTPD,
        r"warning: SASL authentication failure: (?P<rest>.*)",
        (_s("Mar  4 09:12:11 mx1 postfix/smtpd[2209]: warning: SASL authentication "
            "failure: Password verification failed",
            type="AuthBackendFailure", client="", backend="cyrus-sasl",
            reason="Password verification failed"),),
        guard=("warning: SASL authentication failure",),
    ),
    # -- postscreen --------------------------------------------------------------------------
    Pattern(
        "postscreen.event", ("postscreen",),
        r"(?P<kind>CONNECT|PASS NEW|PASS OLD|DISCONNECT|PREGREET|HANGUP|DNSBL|"
        r"COMMAND PIPELINING|COMMAND TIME LIMIT|COMMAND COUNT LIMIT|COMMAND LENGTH LIMIT|"
        r"NON-SMTP COMMAND|BARE NEWLINE|WHITELISTED|ALLOWLISTED|BLACKLISTED|DENYLISTED|"
        r"WHITELIST VETO|ALLOWLIST VETO) (?P<rest>.*)",
        (
            _s("2024-06-01T10:01:00.5+02:00 mx1 postfix/postscreen[99]: PREGREET 14 after "
               "0.1 from [203.0.113.80]:50211: EHLO ylmf-pc\\r\\n",
               type="Postscreen", client="203.0.113.80", kind="PREGREET",
               detail="14 after 0.1 from [203.0.113.80]:50211: EHLO ylmf-pc\\r\\n"),
            _s("2024-06-01T10:01:01+0200 mx1 postfix/postscreen[99]: DNSBL rank 4 for "
               "[2001:db8:77::3]:4410",
               type="Postscreen", client="2001:db8:77::3", kind="DNSBL",
               time=1717228861.0),
            _s("2024-06-01T10:01:02Z mx1 postfix/postscreen[99]: PASS NEW "
               "[192.0.2.90]:52000",
               type="Postscreen", client="192.0.2.90", kind="PASS NEW"),
        ),
        guard=("CONNECT", "PASS ", "DISCONNECT", "PREGREET", "HANGUP", "DNSBL", "COMMAND ",
               "NON-SMTP", "BARE NEWLINE", "WHITELIST", "ALLOWLIST", "BLACKLISTED",
               "DENYLISTED"),
    ),
    # -- queue manager, cleanup, pickup --------------------------------------------------------
    Pattern(
        "qmgr.queued", ("qmgr", "nqmgr", "oqmgr"),
        QID + r": from=<(?P<sender>[^>]*)>, size=(?P<size>\d+), nrcpt=(?P<nrcpt>\d+)",
        (_s("Mar  4 09:10:11 mx1 postfix/qmgr[900]: 3F1A2B4C5D: from=<Bob@Example.ORG>, "
            "size=4213, nrcpt=2 (queue active)",
            type="Queued", queue_id="3F1A2B4C5D", sender="Bob@Example.ORG", size=4213,
            nrcpt=2),),
        guard=("from=<",), after_qid=True,
    ),
    Pattern(
        "qmgr.removed", ("qmgr", "nqmgr", "oqmgr"), QID + r": removed$",
        (_s("Mar  4 09:10:13 mx1 postfix/qmgr[900]: 3F1A2B4C5D: removed",
            type="Removed", queue_id="3F1A2B4C5D"),),
        guard=("removed",), after_qid=True,
    ),
    Pattern(
        "cleanup.message_id", ("cleanup",), QID + r": (?:resent-)?message-id=(?P<rest>.*)",
        (_s("Mar  4 09:10:11 mx1 postfix/cleanup[950]: 3F1A2B4C5D: "
            "message-id=<20240304.1@example.org>",
            type="MessageId", queue_id="3F1A2B4C5D", message_id="20240304.1@example.org"),),
        guard=("message-id=", "resent-message-id="), after_qid=True,
    ),
    Pattern(
        "cleanup.action", ("cleanup",),
        QID + r": (?P<action>milter-reject|milter-hold|milter-discard|reject|warning|hold|"
        r"discard): "
        r"(?P<stage>header|body|END-OF-MESSAGE) (?P<rest>.*)",
        (
            _s("Mar  4 09:13:00 mx1 postfix/cleanup[951]: 5C6D7E8F9A: reject: header "
               "Subject: cheap pills from unknown[203.0.113.90]; from=<x@example.com> "
               "to=<u@example.org> proto=ESMTP helo=<spam.example>: 550 5.7.1 No thanks",
               type="Reject", queue_id="5C6D7E8F9A", stage="header", action="reject",
               client="203.0.113.90", sender="x@example.com", recipient="u@example.org",
               warning=False, process="cleanup"),
            _s("Mar  4 09:13:01 mx1 postfix/cleanup[951]: 5C6D7E8F9B: milter-reject: "
               "END-OF-MESSAGE from mail.example.org[192.0.2.25]: 5.7.1 DMARC policy "
               "reject; from=<a@example.org> to=<u@example.org> proto=ESMTP "
               "helo=<mail.example.org>",
               type="Reject", action="milter-reject", stage="END-OF-MESSAGE",
               client="192.0.2.25"),
            _s("Mar  4 09:13:02 mx1 postfix/cleanup[951]: 5C6D7E8F9C: warning: header "
               "X-Mailer: bulk from mail.example.org[192.0.2.25]; from=<a@example.org> "
               "to=<u@example.org> proto=ESMTP helo=<mail.example.org>",
               type="Reject", action="warning", warning=True),
            _s("Mar  4 09:13:04 mx1 postfix/cleanup[951]: 5C6D7E8F9E: milter-hold: "
               "END-OF-MESSAGE from unknown[203.0.113.91]: milter triggers HOLD action; "
               "from=<a@example.com> to=<u@example.org> proto=ESMTP helo=<x.example>",
               type="Hold", stage="END-OF-MESSAGE", client="203.0.113.91",
               queue_id="5C6D7E8F9E"),
            _s("Mar  4 09:13:03 mx1 postfix/cleanup[951]: 5C6D7E8F9D: discard: body "
               "this is spam from mail.example.org[192.0.2.25]; from=<a@example.org> "
               "to=<u@example.org> proto=ESMTP helo=<mail.example.org>",
               type="Discard", stage="body", queue_id="5C6D7E8F9D"),
        ),
        "header_checks/body_checks/milter decisions (counted by pflogsumm per recipient)",
        guard=("reject", "milter-", "warning", "hold", "discard"), after_qid=True,
    ),
    Pattern(
        "pickup.received", ("pickup",), QID + r": (?P<what>uid|sender)=(?P<rest>.*)",
        (_s("Mar  4 09:14:00 mx1 postfix/pickup[960]: 6E7F8A9B0C: uid=0 from=<root>",
            type="Received", queue_id="6E7F8A9B0C", via="pickup", client=""),),
        guard=("uid=", "sender="), after_qid=True,
    ),
    # -- delivery agents ---------------------------------------------------------------------
    Pattern(
        "delivery", (*DELIVERY_AGENTS, POSTFIX_ANY),
        QID + r": to=<(?P<rcpt>[^>]*)>, (?:orig_to=<(?P<orig>[^>]*)>, )?relay=(?P<relay>[^,]+), "
        r"(?:conn_use=[^,]+, )?delay=(?P<delay>[^,]+), (?:delays=[^,]+, )?(?:tls=[^,]+, )?"
        r"(?:dsn=(?P<dsn>[^,]+), )?status=(?P<status>\S+)(?P<rest>.*)",
        (
            _s("Mar  4 09:10:13 mx1 postfix/lmtp[970]: 3F1A2B4C5D: to=<carol@example.org>, "
               "relay=mail.example.org[private/dovecot-lmtp], delay=0.2, "
               "delays=0.1/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Saved)",
               type="Delivery", queue_id="3F1A2B4C5D", recipient="carol@example.org",
               status="sent", dsn="2.0.0", delay=0.2, detail="250 2.0.0 Saved",
               forwarded=False),
            _s("Mar  4 09:15:00 mx1 postfix-out/smtp[971]: 7D8E9F0A1B: to=<x@example.net>, "
               "relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred "
               "(connect to mx.example.net[2001:db8::25]:25: Connection timed out)",
               type="Delivery", status="deferred", relay="none",
               service="postfix-out/smtp"),
            _s("Mar  4 09:15:02 mx1 postfix/smtp[974]: 1A2B3C4D5E: to=<e@example.net>, "
               "relay=mx.example.net[192.0.2.50]:25, delay=1.2, delays=0.1/0/0.6/0.5, "
               "tls=dane, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
               type="Delivery", status="sent", recipient="e@example.net"),
            _s("Mar  4 09:15:01 mx1 postfix/local[972]: 8E9F0A1B2C: to=<dave@mx1.example.org>, "
               "orig_to=<postmaster@mx1.example.org>, relay=local, delay=0.01, "
               "delays=0/0/0/0, dsn=2.0.0, status=sent (forwarded as 9F0A1B2C3D)",
               type="Delivery", forwarded=True, orig_recipient="postmaster@mx1.example.org"),
        ),
        "one recipient's delivery attempt; also tried for unknown Postfix processes",
        guard=("to=<",), after_qid=True,
    ),
    Pattern(
        "smtp.tls_failure", ("smtp", "lmtp"),
        r"(?:warning: )?SSL_connect error to " + CLIENT + r":? ?(?P<rest>.*)",
        (_s("Mar  4 09:15:02 mx1 postfix/smtp[973]: SSL_connect error to "
            "mx.example.net[198.51.100.25]:25: lost connection",
            type="TlsFailure", client="198.51.100.25", direction="out"),),
        guard=("SSL_connect error", "warning: SSL_connect error"),
    ),
    Pattern(
        "postfix.statistics", ("anvil", "scache"), r"statistics: (?P<rest>.*)",
        (_s("Mar  4 09:15:30 mx1 postfix/anvil[940]: statistics: max connection rate "
            "3/60s for (smtp:203.0.113.70) at Mar  4 09:12:07", type=None),),
        "anvil/scache periodic statistics: recognised, no event",
        guard=("statistics: ",),
    ),
    # -- generic Postfix problems (last) -----------------------------------------------------
    Pattern(
        "postfix.problem", (POSTFIX_ANY,),
        r"(?P<level>warning|error|fatal|panic): (?P<rest>.*)",
        (_s("Mar  4 09:16:00 mx1 postfix/smtpd[2300]: warning: hostname bad.example does "
            "not resolve to address 192.0.2.99",
            type="Problem", level="warning",
            message="hostname bad.example does not resolve to address 192.0.2.99"),),
        guard=("warning: ", "error: ", "fatal: ", "panic: "),
    ),
    # -- Dovecot -----------------------------------------------------------------------------
    Pattern(
        "dovecot.login", DOVECOT,
        r"(?:dovecot: )?(?P<proto>[a-z0-9]+)-login: (?:Info: )?(?P<rest>.*)",
        (
            _s("Mar  4 09:17:00 mx1 dovecot: imap-login: Disconnected (auth failed, "
               "3 attempts in 12 secs): user=<bob@example.org>, method=PLAIN, "
               "rip=203.0.113.40, lip=192.0.2.1, TLS, session=<AbCdEf>",
               type="SaslFailure", client="203.0.113.40", username="bob@example.org",
               mechanism="PLAIN", source="dovecot", protocol="imap", attempts=3,
               process="imap-login"),
            _s("2024-06-01T10:02:00+02:00 mx1 dovecot[500]: pop3-login: Login aborted: "
               "Connection closed (auth failed, 2 attempts in 9 secs) (auth_failed): "
               "user=<eve@example.org>, method=LOGIN, rip=2001:db8::66, lip=2001:db8::1, "
               "TLS, session=<XyZ>",
               type="SaslFailure", client="2001:db8::66", username="eve@example.org",
               protocol="pop3", attempts=2, pid=500),
            _s("Mar  4 09:17:01 mx1 dovecot: imap-login: Login: user=<bob@example.org>, "
               "method=PLAIN, rip=192.0.2.44, lip=192.0.2.1, mpid=4242, TLS",
               type="LoginSuccess", client="192.0.2.44", username="bob@example.org",
               mechanism="PLAIN", protocol="imap"),
            _s("Mar  4 09:17:02 mx1 dovecot: imap-login: Login aborted: Connection closed: "
               "SSL_accept() failed: error:0A0000C1:SSL routines::no shared cipher "
               "(disconnected during TLS handshake) (tls_handshake_not_finished): user=<>, "
               "rip=198.51.100.45, lip=192.0.2.1, TLS handshaking: SSL_accept() failed",
               type="TlsFailure", client="198.51.100.45", direction="in"),
            _s("Mar  4 09:17:03 mx1 dovecot: submission-login: Disconnected: Too many "
               "invalid commands (tried to use disallowed plaintext auth): user=<joe>, "
               "rip=198.51.100.46, lip=192.0.2.1",
               type="SaslFailure", username="joe", protocol="submission",
               reason="tried to use disallowed plaintext auth"),
        ),
        "login process session ends: 2.3 '(auth failed, N attempts ..)', "
        "2.4 '(auth_failed)', logins, TLS handshake failures",
        guard=("imap-login", "pop3-login", "submission-login", "managesieve-login", "dovecot: "),
    ),
    Pattern(
        "dovecot.auth", DOVECOT,
        r"(?:dovecot: )?(?P<proc>auth(?:-worker)?)(?P<rest>[(<:].*)",
        (
            _s("Mar  4 09:17:04 mx1 dovecot: auth-worker(4100): Info: "
               "pam(bob@example.org,203.0.113.40,<AbCdEf>): pam_authenticate() failed: "
               "Authentication failure (Password mismatch?)",
               type="AuthBackendFailure", client="203.0.113.40",
               username="bob@example.org", backend="pam", process="auth-worker"),
            _s("2024-06-01T10:02:01+02:00 mx1 dovecot[500]: "
               "auth(eve@example.org,2001:db8::66,sasl:login)<XyZ>: Info: sql: Password "
               "mismatch",
               type="AuthBackendFailure", client="2001:db8::66", username="eve@example.org",
               backend="sql", reason="Password mismatch"),
            _s("Mar 04 09:17:06 mx1 dovecot[442]: dovecot: auth(default): "
               "pam(carl@example.org,198.51.100.49): pam_authenticate() failed: User not "
               "known to the underlying authentication module: 2 Time(s)",
               type="AuthBackendFailure", client="198.51.100.49", username="carl@example.org",
               backend="pam"),
            _s("Mar  4 09:17:05 mx1 dovecot: auth: passwd-file(nobody,198.51.100.47): "
               "unknown user",
               type="AuthBackendFailure", client="198.51.100.47", username="nobody",
               backend="passwd-file", reason="unknown user"),
        ),
        "auth and auth-worker passdb results (the same attempts as the login line)",
        guard=("auth", "dovecot: auth"),
    ),
    Pattern(
        "pam.failure", (*DOVECOT, "saslauthd", "auth", "sshd"),
        r"pam_unix\((?P<svc>[^)\s]*)\): authentication failure;(?P<rest>.*)",
        (_s("Mar  4 09:17:06 mx1 saslauthd[321]: pam_unix(smtp:auth): authentication "
            "failure; logname= uid=0 euid=0 tty= ruser= rhost=203.0.113.41 user=kim",
            type="AuthBackendFailure", client="203.0.113.41", username="kim",
            backend="pam_unix"),),
        guard=("pam_unix(",),
    ),
    Pattern(
        "sieve.badlogin", ("sieve", "timsieved"),
        r"badlogin: " + CLIENT + r" (?P<mech>\S+) authentication failure",
        (_s("Mar  4 09:17:07 mx1 cyrus/timsieved[330]: badlogin: host.example.com"
            "[198.51.100.48] PLAIN authentication failure",
            type="SaslFailure", client="198.51.100.48", mechanism="PLAIN",
            source="sieve"),),
        guard=("badlogin: ",),
    ),
    # -- postwarden's own decisions ----------------------------------------------------------
    Pattern(
        "postwarden.decision", ("postwarden",),
        r"(?:(?:INFO|WARNING|ERROR|DEBUG): )?(?P<component>policyd|milter|watch): "
        r"(?P<rest>[a-z_]{1,30}=.*)",
        (
            _s("Mar  4 09:18:00 mx1 postwarden[600]: policyd: client=203.0.113.30 "
               "helo=spam.example sender=<a@example.com> recipient=<u@example.org> "
               "state=RCPT action=DEFER_IF_PERMIT check=greylist ms=0.4 reason=greylisted "
               "for 300 s",
               type="PolicyDecision", check="greylist", action="DEFER_IF_PERMIT",
               client="203.0.113.30", sender="a@example.com", recipient="u@example.org",
               detail="greylisted for 300 s", component="policyd"),
            _s("2024-06-01T10:03:00+02:00 mx1 postwarden[601]: INFO: policyd: "
               "client=2001:db8::30 helo=x.example sender=<b@example.com> "
               "recipient=<u@example.org> state=RCPT action=REJECT check=spf ms=2.0 "
               "dry_run=yes reason=SPF fail for example.com",
               type="PolicyDecision", check="spf", action="REJECT", client="2001:db8::30",
               detail="SPF fail for example.com"),
            _s("Mar  4 09:18:02 mx1 postwarden[603]: milter: queue_id=4B0D1E2F3C "
               "client=203.0.113.32 from_domain=example.com dkim=none spf=fail(policyd) "
               "dmarc=fail policy_domain=example.com policy=reject disposition=reject "
               "applied=reject action=reject",
               type="PolicyDecision", check="dmarc", action="reject", client="203.0.113.32",
               component="milter", detail="dmarc=fail applied=reject"),
            _s("Mar  4 09:18:03 mx1 postwarden[603]: milter: queue_id=4B0D1E2F3D "
               "client=local from_domain=example.org signed=example.org/s1/rsa-sha256 "
               "action=sign",
               type="PolicyDecision", check="dkim", action="sign", client="local"),
            _s("Mar  4 09:18:01 mx1 postwarden[602]: watch: client=203.0.113.31 action=ban "
               "check=ban duration=600 reason=sasl brute force (12 failures in 60 s)",
               type="PolicyDecision", check="ban", action="ban", client="203.0.113.31",
               component="watch"),
        ),
        "key=value decision lines written by policyd, the milter and the watcher",
        guard=("policyd: ", "milter: ", "watch: ", "INFO: ", "WARNING: ", "ERROR: ", "DEBUG: "),
    ),
)
