"""The builders: one function per pattern of patterns.py, from a match to its event.

Security: the match groups are outside text; free text (a reject's reply and envelope, the
Dovecot session fields, postwarden's key=value lines) is split here with ``str`` methods and
with expressions that are anchored or start with a literal and have no nested quantifiers, so
the cost stays linear in the line; nothing here raises on odd input (a builder returns
``None`` or leaves a field empty).
Standards: Postfix 3.x log wording (smtpd reject lines: ``CMD from name[ip]: code dsn
reply; from=<> to=<> proto= helo=<>``); Dovecot 2.3/2.4 login and passdb wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from postwarden.logs import events as ev


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a line came from: the fields every event starts with, plus the local date and
    hour as written in the line (what pflogsumm's per-day and per-hour tables use)."""
    time: float
    host: str
    service: str
    process: str
    pid: int | None
    day: tuple[int, int, int]
    hour: int


# -- builders: one per pattern ----------------------------------------------------------------

Builder = Callable[[Origin, re.Match[str]], "ev.Event | None"]


def _o(o: Origin) -> tuple[float, str, str, str, int | None]:
    return (o.time, o.host, o.service, o.process, o.pid)


def _between(text: str, start: str, end: str) -> str:
    i = text.find(start)
    if i < 0:
        return ""
    i += len(start)
    j = text.find(end, i)
    return text[i:] if j < 0 else text[i:j]


def _b_client(o: Origin, m: re.Match[str]) -> ev.Event:
    rest = m.group("rest")
    if ", sasl_username=" in rest:
        return ev.SaslSuccess(*_o(o), queue_id=m["qid"], client=m["ip"],
                              client_name=m["name"],
                              username=_between(rest, ", sasl_username=", ", "),
                              mechanism=_between(rest, ", sasl_method=", ", "))
    return ev.Received(*_o(o), queue_id=m["qid"], client=m["ip"], client_name=m["name"])


def _b_connect(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.Connect(*_o(o), client=m["ip"], client_name=m["name"])


def _b_disconnect(o: Origin, m: re.Match[str]) -> ev.Event:
    rest = m["rest"] or ""
    auth = _between(" " + rest, " auth=", " ")
    return ev.Disconnect(*_o(o), client=m["ip"], commands=rest, client_name=m["name"],
                         auth=auth)


REJECT_FROM = re.compile(r"(?P<stage>[A-Z][A-Z-]*) from (?P<name>[^\[\s]*)\[(?P<ip>[^\]\s]*)\]"
                       r"(?::\d+)?: (?P<text>.*)")
_DSN = re.compile(r"\d\.\d{1,3}\.\d{1,3} ")


def split_reply(text: str) -> tuple[int, str, str, str]:
    """'554 5.7.1 <r>: Relay access denied; from=<..> ..' -> code, dsn, reason, envelope."""
    code = 0
    if text[:3].isdigit() and text[3:4] in (" ", "-"):
        code, text = int(text[:3]), text[4:]
    dsn = ""
    dm = _DSN.match(text)
    if dm:
        dsn, text = dm.group()[:-1], text[dm.end():]
    cut = text.find("; from=<")
    if cut < 0:
        cut = text.find("; proto=")
    envelope = ""
    if cut >= 0:
        text, envelope = text[:cut], text[cut + 2:]
    if text.startswith("<"):
        close = text.find(">: ")
        if close > 0:
            text = text[close + 3:]
    return code, dsn, text, envelope


def restriction_of(reason: str) -> str:
    """The class of a reject reason: 'Relay access denied', 'Recipient address rejected',
    'blocked using zen.example', ..."""
    i = reason.find("blocked using ")
    if i >= 0:
        name = reason[i + 14:].split(";", 1)[0].split(" ", 1)[0].rstrip(",;")
        return "blocked using " + name
    for sep in (":", ";", ","):
        j = reason.find(sep)
        if j > 0:
            reason = reason[:j]
    return reason.strip()[:80]


def _envelope(env: str) -> tuple[str, str, str]:
    sender = _between(env, "from=<", ">")
    recipient = _between(env, "to=<", ">")
    helo = ""
    i = env.rfind("helo=<")
    if i >= 0:
        helo = env[i + 6:]
        helo = helo[:-1] if helo.endswith(">") else helo
    return sender, recipient, helo


def _b_reject(o: Origin, m: re.Match[str]) -> ev.Event | None:
    action, qid, rest = m["action"], m["qid"], m["rest"]
    rm = REJECT_FROM.match(rest)
    stage = name = ip = ""
    text = rest
    if rm:
        stage, name, ip, text = rm["stage"], rm["name"], rm["ip"], rm["text"]
    code, dsn, reason, env = split_reply(text)
    sender, recipient, helo = _envelope(env)
    queue_id = "" if qid == "NOQUEUE" else qid
    if action == "hold":
        return ev.Hold(*_o(o), queue_id=queue_id, stage=stage, reason=reason, client=ip,
                       sender=sender, recipient=recipient)
    if action == "discard":
        return ev.Discard(*_o(o), queue_id=queue_id, stage=stage, reason=reason, client=ip,
                          sender=sender, recipient=recipient)
    return ev.Reject(*_o(o), client=ip, stage=stage, code=code, dsn=dsn, reason=reason,
                     restriction=restriction_of(reason), sender=sender, recipient=recipient,
                     helo=helo, warning=action == "reject_warning", action=action,
                     queue_id=queue_id, client_name=name)


_FROM_CLIENT = re.compile(r" from (?P<name>[^\[\s]*)\[(?P<ip>[^\]\s]*)\](?::\d+)?(?P<sep>[:;])")


def _b_cleanup(o: Origin, m: re.Match[str]) -> ev.Event:
    action, stage, rest = m["action"], m["stage"], m["rest"]
    rest = " " + rest
    fm = _FROM_CLIENT.search(rest)
    ip = name = ""
    reason = rest
    if fm:
        ip, name = fm["ip"], fm["name"]
        reason = rest[:fm.start()] if stage != "END-OF-MESSAGE" else rest[fm.end():]
    reason = reason.strip()
    cut = reason.find("; from=<")
    reason = reason if cut < 0 else reason[:cut]
    env_at = rest.find("; from=<")
    sender, recipient, helo = _envelope(rest[env_at + 2:] if env_at >= 0 else "")
    if helo.find(">: ") >= 0:
        helo = helo[:helo.find(">: ")]
    if action in ("hold", "milter-hold"):
        return ev.Hold(*_o(o), queue_id=m["qid"], stage=stage, reason=reason, client=ip,
                       sender=sender, recipient=recipient)
    if action in ("discard", "milter-discard"):
        return ev.Discard(*_o(o), queue_id=m["qid"], stage=stage, reason=reason, client=ip,
                          sender=sender, recipient=recipient)
    code, dsn, text, _ = split_reply(reason) if stage == "END-OF-MESSAGE" else (0, "", reason,
                                                                                 "")
    return ev.Reject(*_o(o), client=ip, stage=stage, code=code, dsn=dsn, reason=text,
                     restriction=restriction_of(text), sender=sender, recipient=recipient,
                     helo=helo, warning=action == "warning", action=action,
                     queue_id=m["qid"], client_name=name)


def _b_sasl_failed(o: Origin, m: re.Match[str]) -> ev.Event:
    reason, _, user = m["rest"].partition(", sasl_username=")
    return ev.SaslFailure(*_o(o), client=m["ip"], username=user, mechanism=m["mech"].upper(),
                          source="postfix", reason=reason, protocol="smtp",
                          client_name=m["name"])


def _b_lost(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.LostConnection(*_o(o), client=m["ip"], after=m["after"], client_name=m["name"],
                             kind=m["kind"])


def _b_pipelining(o: Origin, m: re.Match[str]) -> ev.Event:
    detail = f"after {m['after']}" + (f": {m['rest']}" if m["rest"] else "")
    return ev.ProtocolAbuse(*_o(o), client=m["ip"], kind="improper command pipelining",
                            detail=detail, client_name=m["name"])


def _b_non_smtp(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.ProtocolAbuse(*_o(o), client=m["ip"], kind="non-SMTP command",
                            detail=m["rest"], client_name=m["name"])


def _b_bare_lf(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.ProtocolAbuse(*_o(o), client=m["ip"], kind="bare <LF> received",
                            detail=f"after {m['after']}", client_name=m["name"])


def _b_rate(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.RateLimit(*_o(o), client=m["ip"], kind=m["kind"], count=int(m["count"]),
                        limit_service=m["svc"] or "", client_name=m["name"])


def _b_tls_failure(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.TlsFailure(*_o(o), client=m["ip"], reason=m["rest"], direction="in")


def _b_tls_library(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.TlsFailure(*_o(o), client="", reason=m["rest"],
                         direction="out" if o.process == "smtp" else "in")


def _b_smtp_tls_failure(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.TlsFailure(*_o(o), client=m["ip"], reason=m["rest"], direction="out")


def _b_tls_established(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.TlsEstablished(*_o(o), client=m["ip"], trust=m["trust"], protocol=m["proto"],
                             cipher=m["cipher"], direction="in" if m["dir"] == "from" else "out")


def _b_sasl_no_client(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.AuthBackendFailure(*_o(o), client="", username="", backend="cyrus-sasl",
                                 reason=m["rest"])


def _b_postscreen(o: Origin, m: re.Match[str]) -> ev.Event:
    rest = m["rest"]
    i = rest.find("[")
    j = rest.find("]", i + 1) if i >= 0 else -1
    client = rest[i + 1:j] if j > i >= 0 else ""
    return ev.Postscreen(*_o(o), client=client, kind=m["kind"], detail=rest)


def _b_queued(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.Queued(*_o(o), queue_id=m["qid"], sender=m["sender"], size=int(m["size"]),
                     nrcpt=int(m["nrcpt"]))


def _b_removed(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.Removed(*_o(o), queue_id=m["qid"])


def _b_message_id(o: Origin, m: re.Match[str]) -> ev.Event:
    mid = m["rest"].strip()
    if mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1]
    return ev.MessageId(*_o(o), queue_id=m["qid"], message_id=mid)


def _b_pickup(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.Received(*_o(o), queue_id=m["qid"], client="", via="pickup")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def _b_delivery(o: Origin, m: re.Match[str]) -> ev.Event:
    rest = m["rest"].strip()
    detail = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest
    status = m["status"]
    return ev.Delivery(*_o(o), queue_id=m["qid"], recipient=m["rcpt"], relay=m["relay"],
                       delay=_float(m["delay"]), dsn=m["dsn"] or "", status=status,
                       detail=detail, orig_recipient=m["orig"] or "",
                       forwarded=status == "sent" and "forwarded as " in rest)


def _b_problem(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.Problem(*_o(o), level=m["level"], message=m["rest"])


_ATTEMPTS = re.compile(r"\(auth failed, (\d+) attempts?")
_FAIL_MARKS = ("(auth failed, ", "(auth_failed)", "(tried to use disallowed ",
               "(tried to use disabled ", "(proxy dest auth failed)")


def _field(rest: str, key: str) -> str:
    value = _between(rest, key, ",")
    return value.strip()


def _b_dovecot_login(o: Origin, m: re.Match[str]) -> ev.Event | None:
    proto, rest = m["proto"], m["rest"]
    process = proto + "-login"
    base = (o.time, o.host, o.service, process, o.pid)
    client = _field(" " + rest, " rip=")
    user = _between(rest, "user=<", ">")
    method = _field(" " + rest, " method=")
    if rest.startswith("Login: "):
        return ev.LoginSuccess(*base, client=client, username=user, mechanism=method,
                               protocol=proto)
    for mark in _FAIL_MARKS:
        i = rest.find(mark)
        if i >= 0:
            am = _ATTEMPTS.search(rest, i)
            reason = _between(rest[i:], "(", ")").split(",", 1)[0]
            return ev.SaslFailure(*base, client=client, username=user, mechanism=method,
                                  source="dovecot", reason=reason, protocol=proto,
                                  attempts=int(am.group(1)) if am else 1)
    hs = rest.find("TLS handshaking: ")
    if "(disconnected during TLS handshake)" in rest or (hs >= 0 and "failed" in rest[hs:]):
        reason = rest[hs + 17:] if hs >= 0 else "disconnected during TLS handshake"
        return ev.TlsFailure(*base, client=client, reason=reason.split(", session=<")[0],
                             direction="in")
    return None


_BACKEND = re.compile(
    r"(?P<backend>pam|sql|passwd-file|passwd|shadow|ldap|checkpassword|bsdauth|static|lua|"
    r"oauth2|dict)\((?P<user>[^,()\s]*),(?P<ip>[^,()\s]*)[^()]{0,200}\)[^:]{0,200}: "
    r"(?P<reason>.*)")
_AUTH24 = re.compile(
    r"\((?P<user>[^,()\s]*),(?P<ip>[^,()\s]*)[^()]{0,200}\)(?:<[^<>]{0,100}>)*: "
    r"(?:Info: )?(?P<backend>[a-z][\w-]{0,30}): (?P<reason>.*)")
_BACKEND_FAIL = ("password mismatch", "unknown user", "authenticate() failed",
                 "invalid credentials", "authentication failure", "user not known")


def _b_dovecot_auth(o: Origin, m: re.Match[str]) -> ev.Event | None:
    rest = m["rest"]
    base = (o.time, o.host, o.service, m["proc"], o.pid)
    bm = _BACKEND.search(rest)
    if bm is None:
        bm = _AUTH24.match(rest)
    if bm is None:
        return None
    reason = bm["reason"]
    low = reason.lower()
    if not any(word in low for word in _BACKEND_FAIL):
        return None
    return ev.AuthBackendFailure(*base, client=bm["ip"], username=bm["user"],
                                 backend=bm["backend"], reason=reason)


def _b_pam(o: Origin, m: re.Match[str]) -> ev.Event:
    rest = m["rest"] + " "
    return ev.AuthBackendFailure(*_o(o), client=_between(rest, " rhost=", " "),
                                 username=_between(rest, " user=", " ") or
                                 _between(rest, " ruser=", " "),
                                 backend="pam_unix", reason="authentication failure")


def _b_sieve(o: Origin, m: re.Match[str]) -> ev.Event:
    return ev.SaslFailure(*_o(o), client=m["ip"], username="", mechanism=m["mech"],
                          source="sieve", reason="authentication failure",
                          protocol="managesieve", client_name=m["name"])


def _b_postwarden(o: Origin, m: re.Match[str]) -> ev.Event | None:
    """policyd and watch lines end with ``reason=<free text>``; the milter writes key=value
    pairs only (``dmarc=fail ... applied=reject action=reject``)."""
    rest = m["rest"]
    component = m["component"]
    detail = ""
    if component != "milter":
        cut = rest.find(" reason=")
        if cut >= 0:
            rest, detail = rest[:cut], rest[cut + 8:]
    fields: dict[str, str] = {}
    for token in rest.split(" ")[:64]:
        key, eq, value = token.partition("=")
        if eq and key not in fields:
            fields[key] = value
    action = fields.get("action")
    if not action:
        return None

    def addr(key: str) -> str:
        v = fields.get(key, "")
        return v[1:-1] if v.startswith("<") and v.endswith(">") else v

    check = fields.get("check", "")
    if component == "milter":
        if "dmarc" in fields:
            check = "dmarc"
            detail = f"dmarc={fields['dmarc']} applied={fields.get('applied', '-')}"
        elif action == "sign":
            check = "dkim"
        detail = detail or fields.get("reason", "")
    return ev.PolicyDecision(*_o(o), check=check or component, action=action,
                             client=fields.get("client", ""), sender=addr("sender"),
                             recipient=addr("recipient"),
                             username=fields.get("sasl_username", fields.get("user", "")),
                             detail=detail, component=component,
                             dry_run=fields.get("dry_run") == "yes")


def _b_nothing(o: Origin, m: re.Match[str]) -> None:
    return None


BUILDERS: dict[str, Builder] = {
    "postfix.statistics": _b_nothing,
    "smtpd.client": _b_client,
    "smtpd.connect": _b_connect,
    "smtpd.disconnect": _b_disconnect,
    "smtpd.reject": _b_reject,
    "smtpd.sasl_failed": _b_sasl_failed,
    "smtpd.lost": _b_lost,
    "smtpd.pipelining": _b_pipelining,
    "smtpd.non_smtp": _b_non_smtp,
    "smtpd.bare_lf": _b_bare_lf,
    "smtpd.rate_limit": _b_rate,
    "smtpd.tls_failure": _b_tls_failure,
    "smtpd.tls_library": _b_tls_library,
    "tls.established": _b_tls_established,
    "smtpd.sasl_no_client": _b_sasl_no_client,
    "postscreen.event": _b_postscreen,
    "qmgr.queued": _b_queued,
    "qmgr.removed": _b_removed,
    "cleanup.message_id": _b_message_id,
    "cleanup.action": _b_cleanup,
    "pickup.received": _b_pickup,
    "delivery": _b_delivery,
    "smtp.tls_failure": _b_smtp_tls_failure,
    "postfix.problem": _b_problem,
    "dovecot.login": _b_dovecot_login,
    "dovecot.auth": _b_dovecot_auth,
    "pam.failure": _b_pam,
    "sieve.badlogin": _b_sieve,
    "postwarden.decision": _b_postwarden,
}
