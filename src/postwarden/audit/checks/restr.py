"""RESTR: SMTP access restrictions and protocol hygiene, as each smtpd service sees them.

Security: reads the parsed configuration; RESTR-002 also looks (stat only) for a policy
socket under queue_directory when that directory exists on this machine.
Standards: SMTPD_ACCESS_README (list order, first match, end of list = permit, restriction
classes); SMTPD_POLICY_README (policy endpoints, spawn time limits, placement);
postconf(5) smtpd_*_restrictions, smtpd_forbid_bare_newline, smtpd_forbid_unauth_pipelining,
disable_vrfy_command, smtpd_etrn_restrictions, smtpd_helo_required,
smtpd_reject_unlisted_recipient, smtpd_delay_reject, smtpd_policy_service_default_action;
LOCAL_RECIPIENT_README; https://www.postfix.org/smtp-smuggling.html; Postfix 3.7
``smtpd/smtpd_check.c`` (unknown restriction -> "451 4.3.5 Server configuration error").

Theory of operation
-------------------
Restriction lists are per process: an ``-o smtpd_recipient_restrictions=...`` replaces the
main.cf list for that service only. Each check therefore walks the smtpd processes (an
``inet`` smtpd, and the ``smtpd pass`` service behind postscreen) and reads each list as
that service sees it. A finding about a list the service does not override is reported once,
against main.cf; one about an override is reported against the service's ``-o`` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from postwarden.audit.context import Context, service_key
from postwarden.audit.fixes import Change, Inputs, Op, Outcome, chain, insert, remove_item, setting
from postwarden.audit.fixes import scope as scope_of
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.audit.restrictions import KNOWN, WITH_ARGUMENT, Restriction
from postwarden.postfix.mastercf import Service, split_words

P5 = "postconf(5)"
ACC = "SMTPD_ACCESS_README"
POL = "SMTPD_POLICY_README"

# SMTPD_ACCESS_README: the lists smtpd evaluates, in its order.
LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
         "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
         "smtpd_end_of_data_restrictions", "smtpd_etrn_restrictions")
ENVELOPE_LISTS = LISTS[:5]
FINAL = ("permit", "reject", "defer")
HYGIENE = ("reject_non_fqdn_sender", "reject_unknown_sender_domain",
           "reject_non_fqdn_recipient", "reject_unknown_recipient_domain")






def _mx(ctx: Context) -> list[Service]:
    found: dict[str, Service] = {}
    for service in ctx.mx_services():
        smtpd = ctx.smtpd_behind(service)
        found[smtpd.key] = smtpd
    return list(found.values())






def _where(scope: Service | None) -> str:
    return f" ({scope.key})" if scope is not None else ""


def _classes(ctx: Context, service: Service | None) -> set[str]:
    return set(ctx.words("smtpd_restriction_classes", service))


def _lists(ctx: Context, service: Service) -> Iterator[tuple[str, list[Restriction]]]:
    for name in LISTS:
        yield name, ctx.restrictions(name, service)


def _drop_unknown(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Remove the words of the hit's list that smtpd would answer with 451."""
    name = hit.parameter or ""
    service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    classes = _classes(ctx, service)
    for item in ctx.restrictions(name, service):
        if _token_problem(item, classes):
            yield from remove_item(name, str(item))(ctx, hit, inputs)


def _policy_endpoints(ctx: Context) -> Iterator[tuple[str, str, Service]]:
    """(list name, endpoint argument, smtpd service) for every check_policy_service."""
    for service in ctx.all_smtpd():
        for name, items in _lists(ctx, service):
            for item in items:
                if item.name == "check_policy_service" and item.argument:
                    yield name, item.argument, service


def _endpoint(argument: str) -> str:
    """'inet:host:port' from 'inet:host:port' or '{ inet:host:port, timeout=10s }' text."""
    words = split_words(argument, ", \t\r\n")
    return words[0] if words else argument


@rule(id="RESTR-001", title="Unknown word in a restriction list",
      severity=Severity.HIGH, parameters=LISTS,
      rationale="postconf does not check restriction lists; smtpd meets the unknown word "
                "only when it evaluates the list and then answers '451 4.3.5 Server "
                "configuration error' to every request that reaches it (a pasted "
                "placeholder such as '...' stops all incoming mail).",
      fix="Remove or correct the word; a restriction class must be listed in "
          "smtpd_restriction_classes.",
      references=(ACC, f"{P5} smtpd_restriction_classes", "Postfix smtpd/smtpd_check.c"),
      remedy=_drop_unknown)
def unknown_token(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str | None, str, str]] = set()
    for service in ctx.all_smtpd():
        classes = _classes(ctx, service)
        lists = [(n, ctx.restrictions(n, service)) for n in LISTS]
        lists += [(c, ctx.restrictions(c, service)) for c in sorted(classes)]
        for name, items in lists:
            scope = service if ctx.overridden(name, service) else None
            for item in items:
                problem = _token_problem(item, classes)
                key = (service_key(scope), name, str(item))
                if problem and key not in seen:
                    seen.add(key)
                    yield Hit(f"{name}{_where(scope)}: {problem}", parameter=name,
                              service=service_key(scope))


def _token_problem(item: Restriction, classes: set[str]) -> str | None:
    word = item.name
    lowered = word.lower()
    if word.startswith("$") or ":" in word:
        # a bare "type:table" is a lookup of the list's own kind (SMTPD_ACCESS_README)
        return None
    if word in WITH_ARGUMENT and item.argument is None:
        return f'"{word}" needs an argument and is last in the list'
    if lowered in KNOWN or word in classes:
        return None
    return f'"{word}" is not a restriction or a restriction class'


@rule(id="RESTR-002", title="Policy service endpoint that does not exist",
      severity=Severity.HIGH, parameters=LISTS,
      rationale="When smtpd cannot reach a policy service it applies "
                "smtpd_policy_service_default_action, by default '451 4.3.5 Server "
                "configuration problem': every recipient is deferred. unix:private/X needs a "
                "master.cf service X (usually a spawn service) listening on that socket.",
      fix="Add the master.cf service that runs the policy daemon, or point "
          "check_policy_service at the endpoint the daemon really listens on.",
      references=(POL, f"{P5} smtpd_policy_service_default_action"))
def policy_endpoint_missing(ctx: Context) -> Iterator[Hit]:
    queue = ctx.queue_path("")
    on_host = queue.is_dir()
    seen: set[str] = set()
    for name, argument, service in _policy_endpoints(ctx):
        endpoint = _endpoint(argument)
        kind, _, path = endpoint.partition(":")
        if kind != "unix" or not path or endpoint in seen:
            continue
        seen.add(endpoint)
        problem = _socket_problem(ctx, path, queue, on_host)
        if problem:
            scope = service if ctx.overridden(name, service) else None
            yield Hit(f"{name}{_where(scope)}: check_policy_service {endpoint}: {problem}",
                      parameter=name, service=service_key(scope))


def _socket_problem(ctx: Context, path: str, queue: Path, on_host: bool) -> str | None:
    relative = path.removeprefix("/")
    if not path.startswith("/"):
        directory, _, service_name = path.rpartition("/")
        if directory in ("private", "public") and ctx.service(service_name, "unix"):
            return None
        if directory in ("private", "public") and not on_host:
            return f"master.cf has no unix service named {service_name!r}"
    if not on_host:
        return None
    # MILTER_README/SMTPD_POLICY_README: a chrooted smtpd resolves paths below the queue
    # directory; an unchrooted one uses them as they are.
    candidates = [queue / relative] + ([Path(path)] if path.startswith("/") else [])
    if any(_exists(c) for c in candidates):
        return None
    return f"no master.cf service and no socket at {candidates[0]}"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _spawn_limit(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if hit.parameter:
        yield Change(Op.SET, hit.parameter, "3600s")  # main.cf: X_time_limit is read there


@rule(id="RESTR-003", title="Spawned policy daemon without a time limit",
      severity=Severity.LOW, parameters=LISTS,
      rationale="spawn(8) kills its child after X_time_limit (default $command_time_limit, "
                "1000s), while a policy daemon must live as long as the smtpd that talks to "
                "it; killed mid-session, requests fall back to the default action.",
      fix="Set X_time_limit = 3600s in main.cf for the spawn service X.",
      references=(POL, "spawn(8)", f"{P5} transport_time_limit"), remedy=_spawn_limit)
def policy_time_limit(ctx: Context) -> Iterator[Hit]:
    seen: set[str] = set()
    for _name, argument, _service in _policy_endpoints(ctx):
        kind, _, path = _endpoint(argument).partition(":")
        directory, _, service_name = path.rpartition("/")
        spawn = ctx.service(service_name, "unix") if kind == "unix" else None
        if (spawn is None or spawn.process_name != "spawn" or service_name in seen
                or directory not in ("private", "public")):
            continue
        seen.add(service_name)
        limit = f"{service_name}_time_limit"
        if not ctx.explicit(limit, spawn):
            yield Hit(f"policy service {service_name} runs under spawn and {limit} is not "
                      f"set (spawn stops it after {ctx.value(limit, spawn) or '1000s'})",
                      parameter=limit, service=spawn.key,
                      fix=f"Add '{limit} = 3600s' to main.cf.")


AUTH_EXEMPT = re.compile(r"reject_.*login_mismatch")


@rule(id="RESTR-004", title="HELO or sender restrictions reject authenticated clients",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_helo_restrictions", "smtpd_sender_restrictions"),
      rationale="Each list ends on its own first match: a reject_* before "
                "permit_sasl_authenticated (or without it) also refuses users who logged in, "
                "e.g. mail clients that send a bare host name in HELO.",
      fix="Put permit_sasl_authenticated before the reject_* items, or clear the lists on "
          "the submission service (-o smtpd_helo_restrictions=).",
      references=(ACC, "SASL_README"))
def rejects_authenticated(ctx: Context) -> Iterator[Hit]:
    services = [s for s in ctx.all_smtpd() if ctx.yes("smtpd_sasl_auth_enable", s)]
    for name in ("smtpd_helo_restrictions", "smtpd_sender_restrictions"):
        for scope, service in ctx.scopes(services, (name, "smtpd_sasl_auth_enable")):
            scope = service if ctx.overridden(name, service) else scope
            for item in ctx.restrictions(name, service):
                if item.name == "permit_sasl_authenticated":
                    break
                if item.name.startswith("reject") and not AUTH_EXEMPT.fullmatch(item.name):
                    yield Hit(f"{name}{_where(scope)}: {item} comes before (or without) "
                              f"permit_sasl_authenticated on {service.key}, which has SASL "
                              "on", parameter=name, service=service_key(scope))
                    break


def _mx_setting(ctx: Context, name: str) -> Iterator[tuple[Service | None, Service, str]]:
    for scope, service in ctx.scopes(_mx(ctx), (name,)):
        yield scope, service, ctx.value(name, service)


def _exclusions(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """smtpd_forbid_bare_newline_exclusions = $mynetworks unless the operator chose a list."""
    name = "smtpd_forbid_bare_newline_exclusions"
    service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    if ctx.config.known(name) and not ctx.explicit(name, service):
        yield Change(Op.SET, name, "$mynetworks", scope_of(ctx, hit, name))


@rule(id="RESTR-005", title="SMTP smuggling protection off",
      severity=Severity.HIGH, roles=(Role.MX,), parameters=("smtpd_forbid_bare_newline",),
      rationale="Without smtpd_forbid_bare_newline an MX accepts bare <LF> line endings, "
                "which lets a sender smuggle a second message past SPF and DMARC checks "
                "(CVE-2023-51764).",
      fix="smtpd_forbid_bare_newline = yes (normalize from Postfix 3.9), with "
          "smtpd_forbid_bare_newline_exclusions = $mynetworks.",
      references=("https://www.postfix.org/smtp-smuggling.html",
                  f"{P5} smtpd_forbid_bare_newline"),
      remedy=chain(setting("smtpd_forbid_bare_newline", "yes"), _exclusions))
def smuggling(ctx: Context) -> Iterator[Hit]:
    if not ctx.config.known("smtpd_forbid_bare_newline"):
        return
    for scope, service, value in _mx_setting(ctx, "smtpd_forbid_bare_newline"):
        if value.lower() == "no":
            yield Hit(f"smtpd_forbid_bare_newline = no on {service.key}",
                      parameter="smtpd_forbid_bare_newline", service=service_key(scope))


def _no_pipelining(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if ctx.config.known("smtpd_forbid_unauth_pipelining"):
        yield from setting("smtpd_forbid_unauth_pipelining", "yes")(ctx, hit, inputs)
    else:
        yield from insert("smtpd_data_restrictions", "reject_unauth_pipelining")(
            ctx, hit, inputs)


@rule(id="RESTR-006", title="Unauthorised pipelining not refused",
      severity=Severity.LOW, roles=(Role.MX,),
      parameters=("smtpd_forbid_unauth_pipelining", "smtpd_data_restrictions"),
      rationale="Spam software often sends commands before the server answered; only "
                "smtpd_forbid_unauth_pipelining, or reject_unauth_pipelining in "
                "smtpd_data_restrictions, catches the sender who starts the message before "
                "the 354 reply (the flag is set at DATA time).",
      fix="smtpd_forbid_unauth_pipelining = yes (Postfix >= 3.7.6), or add "
          "reject_unauth_pipelining to smtpd_data_restrictions.",
      references=(f"{P5} smtpd_forbid_unauth_pipelining", ACC), remedy=_no_pipelining)
def pipelining(ctx: Context) -> Iterator[Hit]:
    names = ("smtpd_forbid_unauth_pipelining", "smtpd_data_restrictions")
    known = ctx.config.known(names[0])
    for scope, service in ctx.scopes(_mx(ctx), names):
        forbid = known and ctx.value(names[0], service).lower() == "yes"
        data = [r.name for r in ctx.restrictions(names[1], service)]
        if not forbid and "reject_unauth_pipelining" not in data:
            yield Hit(f"{service.key}: smtpd_forbid_unauth_pipelining is off and "
                      "smtpd_data_restrictions has no reject_unauth_pipelining",
                      parameter=names[0], service=service_key(scope))


@rule(id="RESTR-007", title="VRFY command enabled",
      severity=Severity.LOW, roles=(Role.MX,), parameters=("disable_vrfy_command",),
      rationale="VRFY tells anyone whether an address exists, which helps address harvesting.",
      fix="disable_vrfy_command = yes",
      references=(f"{P5} disable_vrfy_command", "RFC 5321 3.5.3"),
      remedy=setting("disable_vrfy_command", "yes"))
def vrfy(ctx: Context) -> Iterator[Hit]:
    for scope, service, value in _mx_setting(ctx, "disable_vrfy_command"):
        if value.lower() != "yes":
            yield Hit(f"disable_vrfy_command = {value or 'no'} on {service.key}",
                      parameter="disable_vrfy_command", service=service_key(scope))


@rule(id="RESTR-008", title="ETRN open to everyone",
      severity=Severity.LOW, roles=(Role.MX,), parameters=("smtpd_etrn_restrictions",),
      rationale="With no smtpd_etrn_restrictions any client may make the server flush the "
                "queue of fast_flush_domains.",
      fix="smtpd_etrn_restrictions = permit_mynetworks, reject (or add etrn to "
          "smtpd_discard_ehlo_keywords).",
      references=(f"{P5} smtpd_etrn_restrictions", "ETRN_README"),
      remedy=setting("smtpd_etrn_restrictions", "permit_mynetworks, reject"))
def etrn(ctx: Context) -> Iterator[Hit]:
    names = ("smtpd_etrn_restrictions", "smtpd_discard_ehlo_keywords")
    for scope, service in ctx.scopes(_mx(ctx), names):
        discarded = [w.lower() for w in ctx.words(names[1], service)]
        if not ctx.restrictions(names[0], service) and "etrn" not in discarded:
            yield Hit(f"smtpd_etrn_restrictions is empty on {service.key}",
                      parameter=names[0], service=service_key(scope))


@rule(id="RESTR-009", title="HELO not required",
      severity=Severity.LOW, roles=(Role.MX,), parameters=("smtpd_helo_required",),
      rationale="Without smtpd_helo_required a client can skip HELO/EHLO and with it every "
                "check in smtpd_helo_restrictions.",
      fix="smtpd_helo_required = yes",
      references=(f"{P5} smtpd_helo_required", "RFC 5321 4.1.4"),
      remedy=setting("smtpd_helo_required", "yes"))
def helo_required(ctx: Context) -> Iterator[Hit]:
    for scope, service, value in _mx_setting(ctx, "smtpd_helo_required"):
        if value.lower() != "yes":
            yield Hit(f"smtpd_helo_required = {value or 'no'} on {service.key}",
                      parameter="smtpd_helo_required", service=service_key(scope))


@rule(id="RESTR-010", title="Recipients not validated at the SMTP stage",
      severity=Severity.MEDIUM, roles=(Role.MX,),
      parameters=("smtpd_reject_unlisted_recipient", "local_recipient_maps",
                  "relay_recipient_maps"),
      rationale="An MX that accepts mail for unknown users must bounce it later, sending "
                "backscatter to forged senders, and it answers dictionary attacks.",
      fix="Keep smtpd_reject_unlisted_recipient = yes and give every local, relay and "
          "virtual domain a recipient map.",
      references=(f"{P5} smtpd_reject_unlisted_recipient", "LOCAL_RECIPIENT_README",
                  "BACKSCATTER_README"))
def recipient_validation(ctx: Context) -> Iterator[Hit]:
    for scope, service, value in _mx_setting(ctx, "smtpd_reject_unlisted_recipient"):
        if value.lower() == "no":
            yield Hit(f"smtpd_reject_unlisted_recipient = no on {service.key}",
                      parameter="smtpd_reject_unlisted_recipient", service=service_key(scope))
    if not _mx(ctx):
        return
    local = {w.lower() for w in ctx.words("mydestination")}
    if local and not ctx.words("local_recipient_maps"):
        yield Hit("local_recipient_maps is empty while mydestination lists local domains",
                  parameter="local_recipient_maps")
    relay = {w.lower() for w in ctx.words("relay_domains")} - local
    if relay and not ctx.words("relay_recipient_maps"):
        yield Hit(f"relay_domains has {', '.join(sorted(relay))} but relay_recipient_maps "
                  "is empty", parameter="relay_recipient_maps")


@rule(id="RESTR-011", title="Delayed rejection switched off",
      severity=Severity.LOW, parameters=("smtpd_delay_reject",),
      rationale="With smtpd_delay_reject = no the client, HELO and sender lists run before "
                "the recipient is known, so permit_sasl_authenticated and recipient-based "
                "exceptions cannot work there and rejections log less.",
      fix="smtpd_delay_reject = yes",
      references=(f"{P5} smtpd_delay_reject", ACC), remedy=setting("smtpd_delay_reject", "yes"))
def delay_reject(ctx: Context) -> Iterator[Hit]:
    for scope, service in ctx.scopes(ctx.all_smtpd(), ("smtpd_delay_reject",)):
        if ctx.value("smtpd_delay_reject", service).lower() == "no":
            yield Hit(f"smtpd_delay_reject = no on {service.key}",
                      parameter="smtpd_delay_reject", service=service_key(scope))


@rule(id="RESTR-012", title="Restriction items after a final permit, reject or defer",
      severity=Severity.MEDIUM, parameters=LISTS,
      rationale="A list stops at its first permit, reject or defer; whatever follows a bare "
                "one never runs, which is almost always an ordering mistake.",
      fix="Move the bare permit/reject/defer to the end of the list.",
      references=(ACC,))
def unreachable(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str | None, str]] = set()
    for service in ctx.all_smtpd():
        for name, items in _lists(ctx, service):
            scope = service if ctx.overridden(name, service) else None
            if (service_key(scope), name) in seen:
                continue
            seen.add((service_key(scope), name))
            for index, item in enumerate(items[:-1]):
                guarded = index > 0 and items[index - 1].name == "warn_if_reject"
                if item.name in FINAL and not guarded:
                    rest = ", ".join(str(r) for r in items[index + 1:])
                    yield Hit(f"{name}{_where(scope)}: {item.name} is followed by {rest}, "
                              "which never runs", parameter=name, service=service_key(scope))
                    break


# Where the envelope checks go in smtpd_recipient_restrictions: behind the permits of the
# operator's own clients and the relay guard, ahead of everything else.
HYGIENE_AFTER = ("permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination",
                 "defer_unauth_destination")


def _hygiene(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = "smtpd_recipient_restrictions"
    service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    items = ctx.restrictions(name, service)
    where = scope_of(ctx, hit, name)
    if not items:  # the site's own clients keep sending as before
        yield Change(Op.INSERT, name, ", ".join((*HYGIENE_AFTER[:2], *HYGIENE)), where)
        return
    before = tuple(r.name for r in items if r.name not in HYGIENE_AFTER)
    yield Change(Op.INSERT, name, ", ".join(HYGIENE), where, HYGIENE_AFTER, before)


@rule(id="RESTR-013", title="No envelope address checks on the MX",
      severity=Severity.LOW, roles=(Role.MX,), parameters=ENVELOPE_LISTS,
      rationale="Rejecting non-FQDN and unresolvable sender and recipient domains costs "
                "little and stops much junk and backscatter before the message is accepted.",
      fix="Add reject_non_fqdn_sender, reject_unknown_sender_domain, "
          "reject_non_fqdn_recipient and reject_unknown_recipient_domain to "
          "smtpd_recipient_restrictions, after permit_mynetworks/permit_sasl_authenticated "
          "and the relay guard.",
      references=(ACC, f"{P5} reject_unknown_sender_domain"), remedy=_hygiene)
def envelope_hygiene(ctx: Context) -> Iterator[Hit]:
    for scope, service in ctx.scopes(_mx(ctx), ENVELOPE_LISTS):
        used = {r.name for n in ENVELOPE_LISTS for r in ctx.restrictions(n, service)}
        if not used & set(HYGIENE):
            yield Hit(f"{service.key}: none of {', '.join(HYGIENE)} in any restriction "
                      "list", parameter="smtpd_recipient_restrictions", service=service_key(scope))


DEFAULT_ACTION = re.compile(r"default_action\s*=\s*(\S+)")


@rule(id="RESTR-014", title="Policy service failures let mail through",
      severity=Severity.INFO,
      parameters=("smtpd_policy_service_default_action",),
      rationale="With a DUNNO or OK default action a policy server that is down or slow is "
                "skipped without notice: greylisting, SPF or quota checks silently stop.",
      fix="Keep the default 451 action unless failing open is a deliberate choice.",
      references=(f"{P5} smtpd_policy_service_default_action", POL))
def policy_fail_open(ctx: Context) -> Iterator[Hit]:
    seen: set[str] = set()
    for name, argument, service in _policy_endpoints(ctx):
        endpoint = _endpoint(argument)
        local = DEFAULT_ACTION.search(argument)
        action = (local.group(1) if local else
                  ctx.value("smtpd_policy_service_default_action", service)).rstrip(",")
        first = action.split()[0].upper() if action.split() else ""
        if first in ("DUNNO", "OK") and endpoint not in seen:
            seen.add(endpoint)
            parameter = name if local else "smtpd_policy_service_default_action"
            scope = service if ctx.overridden(parameter, service) else None
            yield Hit(f"check_policy_service {endpoint}: default action {action}",
                      parameter=parameter, service=service_key(scope))
