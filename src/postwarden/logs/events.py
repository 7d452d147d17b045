"""Typed events: what one Postfix, Dovecot or postwarden log line says.

Security: every text field comes from a log line, that is from outside (client names, HELO
strings, addresses, reasons); the parser bounds nothing here, consumers must not trust them
(escape before printing to a terminal, never use them as file names or commands).
Standards: Postfix logging (smtpd(8), postscreen(8), qmgr(8), cleanup(8), smtp(8)); Dovecot 2.3
and 2.4 login and auth process log lines.

Theory of operation: one line gives at most one event. Every event carries where it came from
(``time`` in epoch seconds UTC, ``host``, the syslog name as ``service``, its last component as
``process`` and the ``pid``). Client addresses are kept as text (``client`` is the IP address,
``client_name`` the name Postfix printed before ``[``, often ``unknown``). The classes and
fields other modules rely on are stable: later versions only add fields (with defaults) and
classes, never rename.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    time: float          # epoch seconds, UTC
    host: str
    service: str         # the syslog name: "postfix/submission/smtpd", "dovecot", ...
    process: str         # its last component: "smtpd", "qmgr", "imap-login", ...
    pid: int | None


# -- SMTP sessions --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Connect(Event):
    """smtpd ``connect from name[ip]``."""
    client: str
    client_name: str = ""


@dataclass(frozen=True, slots=True)
class Disconnect(Event):
    """smtpd ``disconnect from name[ip] ehlo=1 auth=0/1 commands=1/2``.

    ``commands`` is the whole per-command statistics text ("ehlo=1 auth=0/1 commands=1/2"),
    ``auth`` the value of ``auth=`` ("0/1": one AUTH, none succeeded; "" when absent)."""
    client: str
    commands: str
    client_name: str = ""
    auth: str = ""


@dataclass(frozen=True, slots=True)
class LostConnection(Event):
    """smtpd ``lost connection after AUTH from name[ip]`` and ``timeout after CONNECT``."""
    client: str
    after: str                    # the SMTP command: CONNECT, EHLO, STARTTLS, AUTH, DATA ...
    client_name: str = ""
    kind: str = "lost connection"  # or "timeout", "too many errors"


@dataclass(frozen=True, slots=True)
class ProtocolAbuse(Event):
    """smtpd ``improper command pipelining after X``, ``non-SMTP command from``,
    ``bare <LF> received after X``."""
    client: str
    kind: str                     # "improper command pipelining", "non-SMTP command", ...
    detail: str = ""
    client_name: str = ""


@dataclass(frozen=True, slots=True)
class RateLimit(Event):
    """anvil limits as smtpd logs them: ``warning: Connection rate limit exceeded: 31 from
    name[ip] for service smtpd`` (kind = "Connection rate", "Message delivery request rate",
    "Connection count", "Recipient address rate", "New TLS session rate", "AUTH command rate")."""
    client: str
    kind: str
    count: int
    limit_service: str = ""
    client_name: str = ""


# -- authentication -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SaslFailure(Event):
    """One failed login.

    source "postfix": smtpd ``warning: name[ip]: SASL LOGIN authentication failed: ...``
    (one line per failed AUTH command). source "dovecot": a ``*-login`` line ending a session
    with ``(auth failed, N attempts ...)`` (2.3) or ``Login aborted ... (auth_failed)`` (2.4),
    once per session: ``attempts`` is N. Dovecot's auth-worker/passdb lines for the same
    attempts are :class:`AuthBackendFailure`, so nothing is counted twice."""
    client: str
    username: str
    mechanism: str
    source: str                   # "postfix" | "dovecot" | "sieve"
    reason: str = ""
    protocol: str = ""            # dovecot: imap, pop3, submission, managesieve; postfix: smtp
    attempts: int = 1
    client_name: str = ""


@dataclass(frozen=True, slots=True)
class AuthBackendFailure(Event):
    """Dovecot auth process: ``pam(user,ip): pam_authenticate() failed``, ``sql(user,ip):
    Password mismatch``, ``passwd-file(user,ip): unknown user``, ``ldap(...): invalid
    credentials``; saslauthd/PAM ``authentication failure; ... rhost=``. ``client`` may be ""
    (cyrus/saslauthd lines carry no address)."""
    client: str
    username: str
    backend: str                  # pam, sql, passwd-file, ldap, ...
    reason: str


@dataclass(frozen=True, slots=True)
class LoginSuccess(Event):
    """Dovecot ``imap-login: Login: user=<u>, method=PLAIN, rip=ip``."""
    client: str
    username: str
    mechanism: str
    protocol: str


# -- messages (what the summary counts) -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Received(Event):
    """A message entered the queue: smtpd/postscreen ``QID: client=name[ip]`` or pickup
    ``QID: uid=0 from=<root>`` (``via`` "pickup", no client)."""
    queue_id: str
    client: str
    client_name: str = ""
    via: str = "smtpd"            # "smtpd" | "pickup"


@dataclass(frozen=True, slots=True)
class SaslSuccess(Received):
    """smtpd ``QID: client=name[ip], sasl_method=PLAIN, sasl_username=u``: an authenticated
    submission (also a :class:`Received`)."""
    username: str = ""
    mechanism: str = ""


@dataclass(frozen=True, slots=True)
class MessageId(Event):
    """cleanup ``QID: message-id=<...>``."""
    queue_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Queued(Event):
    """qmgr ``QID: from=<sender>, size=N, nrcpt=N (queue active)``."""
    queue_id: str
    sender: str
    size: int
    nrcpt: int


@dataclass(frozen=True, slots=True)
class Delivery(Event):
    """A delivery attempt for one recipient (smtp, lmtp, local, virtual, pipe, error ...):
    ``QID: to=<r>, [orig_to=<o>,] relay=R, delay=D, [delays=..,] dsn=X.Y.Z, status=S (text)``."""
    queue_id: str
    recipient: str
    relay: str
    delay: float
    dsn: str
    status: str                   # sent | deferred | bounced | expired | ...
    detail: str                   # the text in parentheses after status
    orig_recipient: str = ""
    forwarded: bool = False       # status=sent (... forwarded as QID)


@dataclass(frozen=True, slots=True)
class Removed(Event):
    """qmgr ``QID: removed``: the message left the queue."""
    queue_id: str


@dataclass(frozen=True, slots=True)
class Reject(Event):
    """smtpd/postscreen ``NOQUEUE: reject: RCPT from name[ip]: 554 5.7.1 <r>: Relay access
    denied; from=<s> to=<r> proto=ESMTP helo=<h>`` (also with a queue id, ``reject_warning``,
    smtpd ``milter-reject``), and cleanup ``QID: reject: header|body|END-OF-MESSAGE ...``
    (``stage`` is then "header", "body" or "END-OF-MESSAGE").

    ``restriction`` is the reason's class ("Relay access denied", "Recipient address
    rejected", "Helo command rejected", "Client host rejected", "blocked using <list>", ...);
    ``reason`` the text after the codes; ``warning`` is true for ``reject_warning`` and for
    cleanup ``warning:``. ``action`` is the Postfix word: reject, reject_warning,
    milter-reject, warning."""
    client: str
    stage: str
    code: int
    dsn: str
    reason: str
    restriction: str
    sender: str
    recipient: str
    helo: str
    warning: bool
    action: str = "reject"
    queue_id: str = ""
    client_name: str = ""


@dataclass(frozen=True, slots=True)
class Hold(Event):
    """``QID: hold: ...`` (smtpd access ``HOLD``, cleanup header_checks ``HOLD``)."""
    queue_id: str
    stage: str
    reason: str
    client: str = ""
    sender: str = ""
    recipient: str = ""


@dataclass(frozen=True, slots=True)
class Discard(Event):
    """``QID: discard: ...`` (access ``DISCARD``, header_checks ``DISCARD``)."""
    queue_id: str
    stage: str
    reason: str
    client: str = ""
    sender: str = ""
    recipient: str = ""


# -- postscreen, TLS, problems --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Postscreen(Event):
    """postscreen verdicts and tests: kind is PREGREET, DNSBL, HANGUP, COMMAND PIPELINING,
    BARE NEWLINE, NON-SMTP COMMAND, COMMAND TIME LIMIT, COMMAND COUNT LIMIT, COMMAND LENGTH
    LIMIT, PASS NEW, PASS OLD, CONNECT, DISCONNECT, WHITELISTED, ALLOWLISTED, BLACKLISTED,
    DENYLISTED, WHITELIST VETO, ALLOWLIST VETO. ``detail``: the rest (e.g. "rank 3", the
    pregreet text)."""
    client: str
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class TlsFailure(Event):
    """``SSL_accept error from name[ip]: ...``, ``warning: TLS library problem: ...``,
    dovecot ``TLS handshaking: SSL_accept() failed``; smtp ``SSL_connect error to``."""
    client: str
    reason: str
    direction: str = "in"         # "in" (we are the server) | "out" (smtp client)


@dataclass(frozen=True, slots=True)
class TlsEstablished(Event):
    """``Anonymous|Trusted|Verified|Untrusted TLS connection established from|to name[ip]:
    TLSv1.3 with cipher X (256/256 bits)``."""
    client: str
    trust: str
    protocol: str
    cipher: str
    direction: str = "in"


@dataclass(frozen=True, slots=True)
class Problem(Event):
    """Any other ``warning:``, ``error:``, ``fatal:`` or ``panic:`` line."""
    level: str                    # warning | error | fatal | panic
    message: str


# -- postwarden's own decisions -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyDecision(Event):
    """postwarden's own decision lines: policyd ``policyd: client=.. sender=<..>
    recipient=<..> action=DEFER_IF_PERMIT check=greylist ... reason=..``, the milter's DMARC
    decisions and the watcher's bans. ``check``: greylist | spf | ratelimit | dmarc | ban |
    ...; ``action`` as logged (DUNNO, DEFER_IF_PERMIT, REJECT, PREPEND, ban, unban, ...)."""
    check: str
    action: str
    client: str
    sender: str
    recipient: str
    username: str
    detail: str
    component: str = ""           # policyd | milter | watch
    dry_run: bool = False         # logged with dry_run=yes: what would have been done


EVENT_TYPES: tuple[type[Event], ...] = (
    Connect, Disconnect, LostConnection, ProtocolAbuse, RateLimit, SaslFailure,
    AuthBackendFailure, LoginSuccess, Received, SaslSuccess, MessageId, Queued, Delivery,
    Removed, Reject, Hold, Discard, Postscreen, TlsFailure, TlsEstablished, Problem,
    PolicyDecision,
)
