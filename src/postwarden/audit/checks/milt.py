"""MILT: milters and policy sockets, whether they fail safe and whether smtpd can reach them.

Security: reads the parsed configuration and the metadata (never the contents) of the unix
sockets it names; milter lists are bounded at ``MAX_MILTERS`` entries.
Standards: MILTER_README ("Specifying Milter applications", "Different settings for
different Milter applications"); postconf(5) smtpd_milters, non_smtpd_milters,
milter_default_action, milter_protocol, milter_macro_daemon_name; master(5) chroot field;
COMPATIBILITY_README (chroot default below level 1).

Theory of operation
-------------------
``milter_uses`` lists every milter a process really calls: smtpd_milters as each smtpd
service sees it (main.cf plus its ``-o``), and non_smtpd_milters as cleanup(8) sees it. An
entry is ``unix:path``, ``local:path`` or ``inet:host:port``, optionally wrapped as
``{ endpoint, name = value, ... }`` with per-milter settings such as ``default_action``.
A relative unix path is relative to queue_directory; so is an absolute one when the calling
process is chrooted, because the jail's root is the queue directory. A finding names the
service only when that service overrides the parameter, so one main.cf line gives one
finding, not one per service.

Remedies edit the text where the finding points: a per-milter ``default_action = accept``
is taken out of its braces, a signer named in smtpd_milters is added to
non_smtpd_milters, and ``milter_default_action``/``milter_protocol`` go back to their
defaults (tempfail, 6). Sockets and jails (MILT-003, MILT-004) need the milter's own
configuration and are left to the operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from postwarden.audit import fixes
from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome, service_setting, unset
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service, extract_braced, split_words

P5 = "postconf(5)"
MIL = "MILTER_README"
MAX_MILTERS = 64
SEPARATORS = ", \t\r\n"
RESTRICTION_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                     "smtpd_sender_restrictions", "smtpd_relay_restrictions",
                     "smtpd_recipient_restrictions", "smtpd_data_restrictions",
                     "smtpd_end_of_data_restrictions")
# Endpoint words that identify a DKIM signer: OpenDKIM (conventional port 8891) and rspamd
# (milter proxy on 11332), the two Debian packages that sign through a milter.
SIGNER_WORDS = ("dkim", "rspamd", ":8891", ":11332")


@dataclass(frozen=True)
class Milter:
    endpoint: str
    default_action: str | None  # the per-milter { default_action = ... }, if any
    parameter: str               # smtpd_milters or non_smtpd_milters
    service: Service | None      # the process that calls it (an smtpd service or cleanup)


def parse_milters(value: str) -> list[tuple[str, str | None]]:
    """(endpoint, per-milter default_action) of each entry of a milter list."""
    found: list[tuple[str, str | None]] = []
    for word in split_words(value, SEPARATORS)[:MAX_MILTERS]:
        if not word.startswith("{"):
            found.append((word, None))
            continue
        # MILTER_README: { inet:host:port, connect_timeout=10s, default_action=accept }
        parts = [p.strip() for p in extract_braced(word).split(",")]
        if not parts or not parts[0]:
            continue
        action = None
        for part in parts[1:]:
            name, _, setting = part.partition("=")
            if name.strip() == "default_action":
                action = setting.strip().lower()
        found.append((parts[0], action))
    return found


def smtpd_processes(ctx: Context) -> list[Service]:
    return [s for s in ctx.services if s.process_name == "smtpd"]


def milter_uses(ctx: Context) -> list[Milter]:
    uses: list[Milter] = []
    for service in smtpd_processes(ctx):
        for endpoint, action in parse_milters(ctx.value("smtpd_milters", service)):
            uses.append(Milter(endpoint, action, "smtpd_milters", service))
    cleanup = ctx.service("cleanup", "unix")
    for endpoint, action in parse_milters(ctx.value("non_smtpd_milters", cleanup)):
        uses.append(Milter(endpoint, action, "non_smtpd_milters", cleanup))
    return uses


def scope(ctx: Context, name: str, service: Service | None) -> str | None:
    """The service key when that service overrides name, else None (a main.cf setting)."""
    if service is not None and ctx.overridden(name, service):
        return service.key
    return None


def is_signer(endpoint: str) -> bool:
    lowered = endpoint.lower()
    return any(word in lowered for word in SIGNER_WORDS)


def socket_path(endpoint: str) -> str | None:
    kind, _, rest = endpoint.partition(":")
    return rest if kind in ("unix", "local") and rest else None


def chrooted(ctx: Context, service: Service | None) -> bool:
    """master(5): '-' in the chroot column means y below compatibility_level 1."""
    if service is None:
        return False
    if service.chroot == "-":
        major = ctx.value("compatibility_level").split(".", 1)[0]
        return not major.isdigit() or int(major) < 1
    return service.chroot == "y"


def _written(ctx: Context, hit: Hit, name: str) -> tuple[str | None, str]:
    """(scope, text) of name where the hit's service gets it: its -o, else main.cf."""
    where = fixes.scope(ctx, hit, name)
    service = ctx.service(*where.split("/", 1)) if where else None
    if service is not None:
        return where, service.overrides().get(name, "")
    return None, ctx.config.main.get(name) or ""


def _without_accept(word: str) -> str:
    """A milter list entry without a per-milter default_action = accept."""
    if not word.startswith("{"):
        return word
    parts = [p.strip() for p in extract_braced(word).split(",")]
    kept = [p for p in parts if not (p.partition("=")[0].strip() == "default_action"
                                     and p.partition("=")[2].strip().lower() == "accept")]
    if kept == parts:
        return word
    return kept[0] if len(kept) == 1 else "{ " + ", ".join(kept) + " }"


def _fail_closed(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    if name == "milter_default_action":
        yield Change(Op.UNSET, name, "", fixes.scope(ctx, hit, name))
    elif name is not None:
        where, text = _written(ctx, hit, name)
        words = split_words(text, SEPARATORS)
        kept = [_without_accept(w) for w in words]
        if kept != words:  # else the entry comes from a $reference, fixed where it is
            yield Change(Op.SET, name, ", ".join(kept), where)


def _sign_local_mail(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    local = {e for e, _ in parse_milters(ctx.value("non_smtpd_milters"))}
    signers = [w for w in split_words(ctx.value("smtpd_milters"), SEPARATORS)[:MAX_MILTERS]
               if any(is_signer(e) and e not in local for e, _ in parse_milters(w))]
    written = (ctx.config.main.get("non_smtpd_milters") or "").strip()
    if signers:
        yield Change(Op.SET, "non_smtpd_milters", ", ".join(
            [written, *signers] if written else signers))


def _jailed(ctx: Context, path: str) -> str:
    return str(ctx.queue_path(path.lstrip("/")))


@rule(id="MILT-001", title="Milters fail open", severity=Severity.MEDIUM,
      parameters=("milter_default_action", "smtpd_milters", "non_smtpd_milters"),
      rationale="With milter_default_action = accept (or a per-milter default_action = "
                "accept) Postfix passes mail on unfiltered and unsigned whenever the milter "
                "is down or times out, and only a log line says so.",
      fix="Remove milter_default_action (the default, tempfail, defers mail until the "
          "milter is back) or use quarantine; drop per-milter default_action = accept.",
      references=(f"{P5} milter_default_action", f"{MIL} Different settings for different "
                  "Milter applications"),
      remedy=_fail_closed)

def fail_open(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str, str | None]] = set()
    for use in milter_uses(ctx):
        if use.default_action is not None:
            if use.default_action != "accept":
                continue
            name = use.parameter
            evidence = f"{use.parameter}: {use.endpoint} has default_action = accept"
        elif ctx.value("milter_default_action", use.service).lower() == "accept":
            name = "milter_default_action"
            evidence = f"milter_default_action = accept applies to {use.endpoint}"
        else:
            continue
        key = (name, scope(ctx, name, use.service))
        if key not in seen:
            seen.add(key)
            yield Hit(evidence, parameter=name, service=key[1])


@rule(id="MILT-002", title="Outdated milter protocol version", severity=Severity.LOW,
      parameters=("milter_protocol",),
      rationale="milter_protocol below 6 is the protocol of Postfix before 2.6; it limits "
                "what milters may do and exists only for obsolete milters.",
      fix="Remove milter_protocol; the default (6) is right for current milters.",
      references=(f"{P5} milter_protocol", MIL),
      remedy=unset("milter_protocol"))

def old_protocol(ctx: Context) -> Iterator[Hit]:
    scopes: list[Service | None] = [None]
    scopes += [s for s in ctx.services if ctx.overridden("milter_protocol", s)]
    for service in scopes:
        number = ctx.number("milter_protocol", service)
        if number is not None and number < 6:
            yield Hit(f"milter_protocol = {number}", parameter="milter_protocol",
                      service=service.key if service is not None else None)


def _policy_endpoints(ctx: Context, service: Service) -> Iterator[tuple[str, str]]:
    for name in RESTRICTION_LISTS:
        for item in ctx.restrictions(name, service):
            if item.name == "check_policy_service" and item.argument:
                yield name, item.argument.split(",", 1)[0].strip()


@rule(id="MILT-003", title="Milter or policy socket outside the chroot jail",
      severity=Severity.HIGH,
      parameters=("smtpd_milters", "non_smtpd_milters", "smtpd_recipient_restrictions"),
      rationale="A chrooted smtpd or cleanup sees the queue directory as '/', so an absolute "
                "unix socket path is looked up inside the jail (MILTER_README); a socket "
                "outside it is unreachable and every message is deferred or, with "
                "milter_default_action = accept, passes unfiltered.",
      fix="Let the milter create its socket under the queue directory and name it "
          "relative to it (unix:opendkim/opendkim.sock), or use inet:127.0.0.1:port.",
      references=(f"{MIL} Specifying Milter applications", "master(5) chroot",
                  f"{P5} smtpd_milters"))
def outside_jail(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str, str, str | None]] = set()
    for use in milter_uses(ctx):
        path = socket_path(use.endpoint)
        if path is None or not path.startswith("/") or not chrooted(ctx, use.service):
            continue
        if ctx.file(_jailed(ctx, path)).exists:
            continue  # the socket (or a bind mount) is present inside the jail
        name = use.service.key if use.service is not None else "?"
        key = (use.parameter, use.endpoint, name)
        if key not in seen:
            seen.add(key)
            yield Hit(f"{use.parameter}: {use.endpoint} is looked up as "
                      f"{_jailed(ctx, path)} by chrooted {name}",
                      parameter=use.parameter, service=name if use.service else None)
    for service in smtpd_processes(ctx):
        if not chrooted(ctx, service):
            continue
        for name, endpoint in _policy_endpoints(ctx, service):
            path = socket_path(endpoint)
            if path is None or not path.startswith("/") or ctx.file(_jailed(ctx, path)).exists:
                continue
            if (name, endpoint, service.key) not in seen:
                seen.add((name, endpoint, service.key))
                yield Hit(f"check_policy_service {endpoint} is looked up as "
                          f"{_jailed(ctx, path)} by chrooted {service.key}",
                          parameter=name, service=service.key)


@rule(id="MILT-004", title="Milter unix socket does not exist", severity=Severity.HIGH,
      parameters=("smtpd_milters", "non_smtpd_milters"),
      rationale="When the socket is absent every connection to the milter fails: mail is "
                "deferred (tempfail) or accepted unfiltered and unsigned (accept).",
      fix="Start the milter, or correct the socket path in the milter list.",
      references=(MIL, f"{P5} smtpd_milters"))
def missing_socket(ctx: Context) -> Iterator[Hit]:
    # XXX: inet: milters are not probed; an audit must not open connections. A runtime
    # check (postwarden doctor) is the place for that.
    if not ctx.file(ctx.value("queue_directory") or "/nonexistent").exists:
        return  # auditing a copied configuration: this machine's sockets say nothing
    seen: set[tuple[str, str]] = set()
    for use in milter_uses(ctx):
        path = socket_path(use.endpoint)
        if path is None:
            continue
        if path.startswith("/"):
            if chrooted(ctx, use.service):
                continue  # MILT-003's case
            where = path
        else:
            where = _jailed(ctx, path)  # daemons run in the queue directory
        if (use.parameter, use.endpoint) in seen or ctx.file(where).exists:
            continue
        seen.add((use.parameter, use.endpoint))
        yield Hit(f"{use.parameter}: {use.endpoint}: {where} does not exist",
                  parameter=use.parameter, service=scope(ctx, use.parameter, use.service))


@rule(id="MILT-005", title="DKIM signer not applied to locally submitted mail",
      severity=Severity.LOW, parameters=("smtpd_milters", "non_smtpd_milters"),
      rationale="Mail from sendmail(1) (cron, web applications) passes cleanup(8) and only "
                "non_smtpd_milters; a signer listed only in smtpd_milters leaves it unsigned.",
      fix="List the signing milter in non_smtpd_milters too (non_smtpd_milters = "
          "$smtpd_milters when they are the same).",
      references=(f"{MIL} Non-SMTP mail", f"{P5} non_smtpd_milters"),
      remedy=_sign_local_mail)

def signer_not_local(ctx: Context) -> Iterator[Hit]:
    local = {e for e, _ in parse_milters(ctx.value("non_smtpd_milters"))}
    for endpoint, _ in parse_milters(ctx.value("smtpd_milters")):
        if is_signer(endpoint) and endpoint not in local:
            yield Hit(f"{endpoint} is in smtpd_milters but not in non_smtpd_milters",
                      parameter="non_smtpd_milters")


@rule(id="MILT-006", title="Submission service not marked as originating",
      severity=Severity.LOW, roles=(Role.SUBMISSION,),
      parameters=("milter_macro_daemon_name",),
      rationale="Signing milters such as OpenDKIM decide to sign by the {daemon_name} macro "
                "or the client address; without milter_macro_daemon_name = ORIGINATING on "
                "the submission service, users' mail can be treated as inbound and left "
                "unsigned.",
      fix="Add -o milter_macro_daemon_name=ORIGINATING to the submission services.",
      references=(f"{P5} milter_macro_daemon_name", MIL),
      remedy=service_setting("milter_macro_daemon_name", "ORIGINATING"))

def not_originating(ctx: Context) -> Iterator[Hit]:
    for service in ctx.submission_services():
        milters = parse_milters(ctx.value("smtpd_milters", service))
        if not any(is_signer(e) for e, _ in milters):
            continue
        name = ctx.value("milter_macro_daemon_name", service)
        if name != "ORIGINATING":
            yield Hit(f"{service.key}: milter_macro_daemon_name = {name or '(empty)'}",
                      parameter="milter_macro_daemon_name", service=service.key)
