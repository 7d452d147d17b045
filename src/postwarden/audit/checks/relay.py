"""RELAY: relay control, whether a stranger can send mail through this server to anywhere.

Security: reads the parsed configuration only; restriction lists are walked once each,
restriction classes to a fixed depth, so odd or cyclic configurations cannot loop.
Standards: SMTPD_ACCESS_README (list order, "Dangerous use of smtpd_recipient_restrictions");
postconf(5) smtpd_relay_restrictions, smtpd_recipient_restrictions,
smtpd_relay_before_recipient_restrictions, smtpd_delay_reject, smtpd_restriction_classes,
relay_domains, relay_recipient_maps, permit_mx_backup, allow_untrusted_routing;
SMTPD_POLICY_README; Postfix 3.7 ``smtpd/smtpd_check.c`` (``has_required``).

Theory of operation
-------------------
Postfix evaluates the client, helo and sender lists (at RCPT time while smtpd_delay_reject
= yes), then smtpd_relay_restrictions and smtpd_recipient_restrictions, in the order
smtpd_relay_before_recipient_restrictions gives (SMTPD_ACCESS_README). Each list is read
left to right until something decides: a REJECT or DEFER ends the whole request, a PERMIT
ends only that list, and the end of a list is a PERMIT. So mail is refused as soon as one
list refuses it, and a relay is open when every list lets the attacker through.

``walk`` follows one list for a given client: an anonymous client outside mynetworks, not
authenticated, writing to a remote recipient (``remote=True``), or to a local one
(``remote=False``, used by SASL-006 and SVC-008 to ask "is authentication required?").
Each item is one of: a *stop* that refuses this client (``reject``, and for the remote case
``reject_unauth_destination`` and the other relay guards); a *definite permit* that lets
the client through (``permit``, a mynetworks that covers the whole internet, and for the
local case ``permit_auth_destination``); an *escape*, a permit the attacker may be able to
meet (``permit_mx_backup``, ``permit_tls_all_clientcerts``, ``permit_dnswl_client``, an
access table or policy service that can answer OK, ...); or something that only refuses
some clients and so decides nothing here. A list whose walk ends in a stop with escapes
before it lets through exactly the clients that meet one of those escapes.

Restriction classes named in a list are expanded in place, as smtpd_check.c does; a
``warn_if_reject`` makes the next item a warning, so it stops no one.

The remedies close the relay where the hit's service decides it: the escapes (and a bare
``permit``) before the guard move behind ``reject_unauth_destination``, where they still
act on mail for this host's own domains; the permits that need a login or the operator's
own networks (``permit_mynetworks``, ``permit_sasl_authenticated``,
``permit_tls_clientcerts``, ``check_ccert_access``, ``check_sasl_access``) and the items
that only refuse stay ahead of it. With smtpd_relay_restrictions empty the guard of
smtpd_recipient_restrictions is used; with no guard anywhere the relay list gets
permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination. XXX:
permit_mx_backup and permit_tls_all_clientcerts stay where they are: closing them needs the
operator's list (relay_domains or permit_mx_backup_networks; relay_clientcerts), so a
relay open only through them is left to the operator.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from postwarden.audit.checks.net import Breadth, breadth, list_words
from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.fixes import scope as scope_of
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.audit.restrictions import KNOWN, RELAY_GUARDS, Restriction
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
ACC = "SMTPD_ACCESS_README"
RELAY = "smtpd_relay_restrictions"
RECIPIENT = "smtpd_recipient_restrictions"
EARLY = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions")
CLASS_DEPTH = 4
MAX_COMBINATIONS = 12

STOPS = frozenset({"reject", "defer", "defer_if_permit"})
# Permits an outside client can meet (or arrange to meet) without logging in.
ESCAPES = {
    "permit_mx_backup": "any domain that names this host as MX backup",
    "permit_tls_all_clientcerts": "any client with a certificate from a trusted CA",
    "permit_dnswl_client": "clients listed by the DNS allowlist",
    "permit_rhswl_client": "clients whose name the DNS allowlist lists",
    "permit_naked_ip_address": "any client that sends a bare IP address in HELO",
    "check_policy_service": "requests the policy service answers OK",
}
# Access tables keyed by something the client does not control without a login.
NOT_ANONYMOUS = frozenset({"check_ccert_access", "check_sasl_access"})
RECIPIENT_ONLY = frozenset({
    "reject_unauth_destination", "defer_unauth_destination", "permit_auth_destination",
    "check_relay_domains", "permit_mx_backup", "reject_non_fqdn_recipient",
    "reject_unknown_recipient_domain", "reject_unlisted_recipient",
    "reject_unverified_recipient", "check_recipient_access", "check_recipient_a_access",
    "check_recipient_mx_access", "check_recipient_ns_access",
})


@dataclass(frozen=True)
class Walk:
    """What one list does with the client: stopped by ``stop`` unless it meets an escape;
    or let through by ``permit`` (when ``stop`` is None)."""

    list_name: str
    stop: str | None
    permit: str | None
    escapes: tuple[str, ...]

    @property
    def blocks(self) -> bool:
        return self.stop is not None and not self.escapes

    @property
    def passes(self) -> bool:
        return self.stop is None


def smtpd_services(ctx: Context) -> list[Service]:
    """Every master.cf service whose command is smtpd (inet, pass behind postscreen, ...)."""
    return [s for s in ctx.services if s.process_name == "smtpd"]


def exposed(ctx: Context) -> list[Service]:
    """smtpd services an outside client reaches: public inet ones, and the ``pass`` ones a
    public postscreen hands connections to."""
    public = ctx.public_smtpd_services()
    behind_postscreen = any(s.process_name == "postscreen" for s in public)
    return [s for s in smtpd_services(ctx)
            if s in public or (s.type == "pass" and behind_postscreen)]


def expand(ctx: Context, name: str, svc: Service | None) -> list[Restriction]:
    """The list with restriction classes inlined (smtpd_check.c evaluates them in place)."""
    classes = set(ctx.words("smtpd_restriction_classes", svc))
    return _expand(ctx, ctx.restrictions(name, svc), classes, svc, 0)


def _expand(ctx: Context, items: list[Restriction], classes: set[str],
            svc: Service | None, depth: int) -> list[Restriction]:
    found: list[Restriction] = []
    for item in items:
        if item.name in classes and item.name not in KNOWN and depth < CLASS_DEPTH:
            found.extend(_expand(ctx, ctx.restrictions(item.name, svc), classes, svc,
                                 depth + 1))
        else:
            found.append(item)
    return found


def has_guard(ctx: Context, name: str, svc: Service | None) -> bool:
    """has_required() of smtpd_check.c: a guard not behind warn_if_reject or permit; a
    restriction class counts when it holds one (its own permit ends only the class)."""
    classes = set(ctx.words("smtpd_restriction_classes", svc))
    return _has_guard(ctx, ctx.restrictions(name, svc), classes, svc, 0)


def _has_guard(ctx: Context, items: list[Restriction], classes: set[str],
               svc: Service | None, depth: int) -> bool:
    skip = False
    for item in items:
        if skip:
            skip = False
            continue
        if item.name == "warn_if_reject":
            skip = True
            continue
        if item.name == "permit":
            return False
        if item.name in RELAY_GUARDS:
            return True
        if (item.name in classes and item.name not in KNOWN and depth < CLASS_DEPTH
                and _has_guard(ctx, ctx.restrictions(item.name, svc), classes, svc,
                               depth + 1)):
            return True
    return False


def _covers_everything(ctx: Context, svc: Service | None) -> bool:
    return any(breadth(w) is Breadth.EVERYTHING for w in list_words(ctx, "mynetworks", svc))


def _anonymous_sasl(ctx: Context, svc: Service | None) -> bool:
    return (ctx.yes("smtpd_sasl_auth_enable", svc)
            and "noanonymous" not in ctx.words("smtpd_sasl_security_options", svc))


def walk(ctx: Context, name: str, svc: Service | None, *, remote: bool) -> Walk:
    """Follow list ``name`` for an anonymous outside client (see the theory above)."""
    stops = RELAY_GUARDS if remote else STOPS
    if not remote or (name in EARLY and not ctx.yes("smtpd_delay_reject", svc)):
        # Without a recipient, or before RCPT, the destination tests decide nothing.
        stops = STOPS
    escapes: list[str] = []
    warned = False
    for item in expand(ctx, name, svc):
        was_warned, warned = warned, item.name == "warn_if_reject"
        if item.name == "permit":
            return Walk(name, None, "permit", tuple(escapes))
        if item.name == "permit_mynetworks" and _covers_everything(ctx, svc):
            return Walk(name, None, f"permit_mynetworks (mynetworks = "
                        f"{ctx.value('mynetworks', svc)})", tuple(escapes))
        if not remote and item.name in ("permit_auth_destination", "check_relay_domains"):
            return Walk(name, None, item.name, tuple(escapes))
        if item.name in stops and not was_warned:
            return Walk(name, str(item), None, tuple(escapes))
        if item.name not in KNOWN and item.name != "warn_if_reject":
            # smtpd answers 451 "server configuration error" for an unknown restriction.
            return Walk(name, f"{item.name} (unknown: 451 for every request)", None,
                        tuple(escapes))
        escape = _escape(ctx, item, svc)
        if escape is not None:
            escapes.append(escape)
    return Walk(name, None, "end of list", tuple(escapes))


def _escape(ctx: Context, item: Restriction, svc: Service | None) -> str | None:
    if item.name in ESCAPES:
        return f"{item} ({ESCAPES[item.name]})"
    if (item.name.startswith("check_") and item.name.endswith("_access")
            and item.name not in NOT_ANONYMOUS):
        return f"{item} (an OK answer from the table)"
    if item.name == "permit_sasl_authenticated" and _anonymous_sasl(ctx, svc):
        return f"{item} (anonymous SASL login: noanonymous is missing)"
    return None


def rcpt_order(ctx: Context, svc: Service | None) -> tuple[str, str]:
    if ctx.yes("smtpd_relay_before_recipient_restrictions", svc):
        return RELAY, RECIPIENT
    return RECIPIENT, RELAY


def relay_walks(ctx: Context, svc: Service | None) -> list[Walk]:
    """Every list an anonymous remote-recipient request passes through, in Postfix's order."""
    return [walk(ctx, name, svc, remote=True) for name in (*EARLY, *rcpt_order(ctx, svc))]


def open_paths(ctx: Context, svc: Service | None) -> list[tuple[str, str]]:
    """(parameter, description) of each way an anonymous client relays; [] when closed."""
    walks = relay_walks(ctx, svc)
    if any(w.blocks for w in walks):
        return []
    order = " then ".join(rcpt_order(ctx, svc))
    passing = [w for w in walks if w.passes and w.list_name in (RELAY, RECIPIENT)]
    said = "; ".join(f"{w.list_name} lets it through ({_why(w)})" for w in passing)
    gated = [w for w in walks if not w.passes]
    if not gated:
        return [(passing[0].list_name if passing else RELAY,
                 f"any client relays to any domain: {said} (evaluated {order})")]
    paths = []
    combos = itertools.product(*[[(w.list_name, e) for e in w.escapes] for w in gated])
    for combo in itertools.islice(combos, MAX_COMBINATIONS):
        how = " and ".join(f"{e} in {n} before {_stop(gated, n)}" for n, e in combo)
        tail = f"; {said}" if said else ""
        paths.append((combo[0][0], f"a client that meets {how} relays to any domain{tail} "
                                   f"(evaluated {order})"))
    return paths


def _why(w: Walk) -> str:
    if w.permit == "end of list":
        return "no relay guard; the end of the list permits"
    return f"{w.permit} comes before any relay guard"


def _stop(walks: list[Walk], name: str) -> str:
    return next((w.stop or "" for w in walks if w.list_name == name), "")


GUARD = "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
GUARD_FIX = f"smtpd_relay_restrictions = {GUARD}"
# Permits that stay ahead of the guard: a login, a client certificate the operator lists,
# or the operator's own networks (see the theory of operation).
KEEP_AHEAD = frozenset({"permit_mynetworks", "permit_sasl_authenticated",
                        "permit_tls_clientcerts", "check_ccert_access", "check_sasl_access"})
OPERATOR_ONLY = frozenset({"permit_mx_backup", "permit_tls_all_clientcerts"})
# Guards that only refuse relaying; any other stop (reject, defer) also ends the list for
# local mail, so the guard is inserted before it instead.
DESTINATION_GUARDS = frozenset({"reject_unauth_destination", "defer_unauth_destination",
                                "check_relay_domains"})


def _movable(item: Restriction, name: str) -> bool:
    """Whether item belongs behind the relay guard of list ``name``."""
    if item.name == "permit" or item.name == "check_policy_service":
        return True
    if item.name in ESCAPES:
        return item.name not in OPERATOR_ONLY
    if item.name.startswith("check_") and item.name.endswith("_access"):
        # RELAY-004: in the recipient list every table goes behind the guard.
        return name == RECIPIENT or item.name not in KEEP_AHEAD
    return False


def _units(items: list[Restriction]) -> list[list[Restriction]]:
    """Items with each ``warn_if_reject`` kept together with the item it softens."""
    units: list[list[Restriction]] = []
    for item in items:
        if units and units[-1][-1].name == "warn_if_reject":
            units[-1].append(item)
        else:
            units.append([item])
    return units


def _list_text(items: list[str], on_service: bool) -> str:
    """A list value: ", " in main.cf; "," in an -o, as master.cf writes them."""
    if on_service and not any("{" in item for item in items):
        return ",".join(w for item in items for w in item.split(" ", 1))
    return ", ".join(items)


def guard_first(ctx: Context, name: str, svc: Service | None, *,
                on_service: bool = False) -> str | None:
    """List ``name`` with the movable items behind a working relay guard; None when the
    list would not change."""
    items = ctx.restrictions(name, svc)
    classes = set(ctx.words("smtpd_restriction_classes", svc))
    units = _units(items)
    cut = next((i for i, u in enumerate(units) if len(u) == 1 and u[0].name in RELAY_GUARDS),
               len(units))
    head, tail = units[:cut], [r for u in units[cut:] for r in u]
    guard = Restriction("reject_unauth_destination", None, -1)
    if tail and tail[0].name in DESTINATION_GUARDS:
        guard, tail = tail[0], tail[1:]
    ahead: list[Restriction] = []
    behind: list[Restriction] = []
    for unit in head:
        if unit[0].name == "warn_if_reject":
            if not (len(unit) == 2 and unit[1].name == guard.name):
                ahead.extend(unit)  # a warning copy of the guard itself is dropped
        elif any(_movable(r, name) for r in
                 (_expand(ctx, [unit[0]], classes, svc, 0) if unit[0].name in classes
                  else unit)):
            behind.extend(unit)
        else:
            ahead.extend(unit)
    result = [*ahead, guard, *behind, *tail]
    if [str(r) for r in result] == [str(r) for r in items]:
        return None
    return _list_text([r.text() for r in result], on_service)


def _close_relay(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Put the relay guard first where the hit's service decides relaying (see above)."""
    svc = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    if svc is None:
        return
    wide = [w for w in list_words(ctx, "mynetworks", svc) if breadth(w) is Breadth.EVERYTHING]
    where = scope_of(ctx, hit, "mynetworks")
    if wide and len(wide) == len(list_words(ctx, "mynetworks", svc)):
        yield Change(Op.UNSET, "mynetworks", "", where)  # back to mynetworks_style
    for word in wide if len(wide) < len(list_words(ctx, "mynetworks", svc)) else ():
        yield Change(Op.REMOVE, "mynetworks", word, where)
    if _anonymous_sasl(ctx, svc):
        yield Change(Op.INSERT, "smtpd_sasl_security_options", "noanonymous",
                     scope_of(ctx, hit, "smtpd_sasl_security_options"))
    name = RELAY
    if not ctx.restrictions(RELAY, svc):
        if not any(r.name in RELAY_GUARDS for r in ctx.restrictions(RECIPIENT, svc)):
            where = scope_of(ctx, hit, RELAY)
            yield Change(Op.SET, RELAY, _list_text(GUARD.split(", "), where is not None),
                         where)
            return
        name = RECIPIENT
    where = scope_of(ctx, hit, name)
    value = guard_first(ctx, name, svc, on_service=where is not None)
    if value is not None:
        yield Change(Op.SET, name, value, where)


@rule(id="RELAY-001", title="No relay guard: smtpd refuses to start",
      severity=Severity.CRITICAL, parameters=(RELAY, RECIPIENT),
      rationale="smtpd exits with a fatal error unless smtpd_relay_restrictions or "
                "smtpd_recipient_restrictions holds a working reject_unauth_destination, "
                "defer_unauth_destination, reject, defer, defer_if_permit or "
                "check_relay_domains (one after permit or warn_if_reject does not count); "
                "postconf does not check this, so the outage shows only at run time.",
      fix=f"Set {GUARD_FIX}, or put reject_unauth_destination right after the "
          "permit_mynetworks and permit_sasl_authenticated of the list that has one.",
      references=(f"{P5} smtpd_relay_restrictions", "Postfix smtpd/smtpd_check.c"),
      remedy=_close_relay)
def no_guard(ctx: Context) -> Iterator[Hit]:
    for svc in smtpd_services(ctx):
        if has_guard(ctx, RELAY, svc) or has_guard(ctx, RECIPIENT, svc):
            continue
        name = RELAY if ctx.overridden(RELAY, svc) or not ctx.overridden(RECIPIENT, svc) \
            else RECIPIENT
        yield Hit(f"{svc.key}: {RELAY} = {ctx.value(RELAY, svc) or '(empty)'}; "
                  f"{RECIPIENT} = {ctx.value(RECIPIENT, svc) or '(empty)'}",
                  parameter=name, service=svc.key)


@rule(id="RELAY-002", title="Open relay: a stranger can send mail to any domain",
      severity=Severity.CRITICAL, parameters=(RELAY, RECIPIENT, "mynetworks"),
      rationale="Each restriction list runs until the first decision and its end permits; "
                "a permit, or a table, allowlist or policy answer the sender can obtain, "
                "placed before the relay guard lets outside clients relay, and so does a "
                "mynetworks that spans the internet (SMTPD_ACCESS_README, dangerous use of "
                "smtpd_recipient_restrictions).",
      fix="Put reject_unauth_destination right after the permit_mynetworks and "
          "permit_sasl_authenticated of smtpd_relay_restrictions, keep spam and policy checks "
          "after it or in smtpd_recipient_restrictions, include noanonymous in "
          "smtpd_sasl_security_options, and narrow mynetworks (harden drops entries that "
          "span the internet; permit_mx_backup and permit_tls_all_clientcerts need the "
          "operator's relay_domains or relay_clientcerts).",
      references=(ACC, f"{P5} smtpd_relay_restrictions",
                  f"{P5} smtpd_relay_before_recipient_restrictions"),
      remedy=_close_relay)
def open_relay(ctx: Context) -> Iterator[Hit]:
    for svc in exposed(ctx):
        for parameter, description in open_paths(ctx, svc):
            yield Hit(f"{svc.key}: {description}", parameter=parameter, service=svc.key)


@rule(id="RELAY-003", title="Relay control left to smtpd_recipient_restrictions",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.SUBMISSION), parameters=(RELAY,),
      rationale="Since Postfix 2.10 smtpd_relay_restrictions holds the relay policy and "
                "smtpd_recipient_restrictions the spam policy; with the first empty, every "
                "permissive spam rule in the second also decides relaying.",
      fix=f"Set {GUARD_FIX} (on a submission service: permit_sasl_authenticated, reject).",
      references=(f"{P5} smtpd_relay_restrictions", "COMPATIBILITY_README"))
def relay_list_empty(ctx: Context) -> Iterator[Hit]:
    for svc in exposed(ctx):
        if ctx.restrictions(RELAY, svc):
            continue
        recipient = ctx.restrictions(RECIPIENT, svc)
        if recipient and recipient[-1].name == "reject":
            continue  # 'permit_sasl_authenticated, reject': nothing else is let through
        yield Hit(f"{svc.key}: {RELAY} is empty; {RECIPIENT} = "
                  f"{ctx.value(RECIPIENT, svc) or '(empty)'}", parameter=RELAY,
                  service=svc.key)


def _before_guard(items: list[Restriction]) -> list[Restriction]:
    found: list[Restriction] = []
    for item in items:
        if item.name in RELAY_GUARDS:
            return found
        found.append(item)
    return []


@rule(id="RELAY-004", title="Policy or access check before the relay guard",
      severity=Severity.HIGH, roles=(Role.MX,), parameters=(RECIPIENT,),
      rationale="With smtpd_relay_restrictions empty, a check_policy_service or access "
                "table placed before reject_unauth_destination can answer OK and so permit "
                "relaying (SMTPD_POLICY_README: place the policy check after "
                "reject_unauth_destination, or your system could become an open relay).",
      fix="Move policy services and access tables after reject_unauth_destination, or give "
          "the relay decision its own smtpd_relay_restrictions.",
      references=("SMTPD_POLICY_README", ACC), remedy=_close_relay)
def check_before_guard(ctx: Context) -> Iterator[Hit]:
    for svc in exposed(ctx):
        if ctx.restrictions(RELAY, svc):
            continue
        early = [str(r) for r in _before_guard(expand(ctx, RECIPIENT, svc))
                 if r.name == "check_policy_service"
                 or (r.name.startswith("check_") and r.name.endswith("_access"))]
        if early:
            yield Hit(f"{svc.key}: {', '.join(early)} before the relay guard in {RECIPIENT}",
                      parameter=RECIPIENT, service=svc.key)


@rule(id="RELAY-005", title="master.cf override removes the relay protection of main.cf",
      severity=Severity.CRITICAL, parameters=(RELAY, RECIPIENT),
      rationale="An -o override replaces the whole list for that service; overriding one "
                "of the two relay lists can drop the guard main.cf had or open the relay on "
                "just that port.",
      fix="Give the service complete lists: on a submission service "
          "-o smtpd_relay_restrictions=permit_sasl_authenticated,reject.",
      references=("master(5)", f"{P5} smtpd_relay_restrictions"), remedy=_close_relay)
def override_opens(ctx: Context) -> Iterator[Hit]:
    main_guarded = has_guard(ctx, RELAY, None) or has_guard(ctx, RECIPIENT, None)
    main_closed = not open_paths(ctx, None)
    for svc in smtpd_services(ctx):
        changed = [n for n in (RELAY, RECIPIENT) if ctx.overridden(n, svc)]
        if not changed:
            continue
        shown = ", ".join(f"-o {n}={svc.overrides()[n]}" for n in changed)
        if main_guarded and not (has_guard(ctx, RELAY, svc) or has_guard(ctx, RECIPIENT, svc)):
            yield Hit(f"{svc.key}: {shown} leaves no relay guard (smtpd will not start)",
                      parameter=changed[0], service=svc.key)
        elif main_closed and svc in exposed(ctx) and open_paths(ctx, svc):
            yield Hit(f"{svc.key}: {shown} opens the relay on this service",
                      parameter=changed[0], service=svc.key)


@rule(id="RELAY-006", title="Relay domains without a list of valid recipients",
      severity=Severity.MEDIUM, roles=(Role.MX,),
      parameters=("relay_domains", "relay_recipient_maps"),
      rationale="Without relay_recipient_maps Postfix accepts any address in the relay "
                "domains and bounces the unknown ones later: backscatter to forged senders "
                "and free address harvesting.",
      fix="Set relay_recipient_maps to the valid addresses of the relay domains.",
      references=(f"{P5} relay_recipient_maps", "ADDRESS_VERIFICATION_README"))
def relay_without_recipients(ctx: Context) -> Iterator[Hit]:
    if ctx.explicit("relay_domains") and ctx.value("relay_domains") \
            and not ctx.value("relay_recipient_maps"):
        yield Hit(f"relay_domains = {ctx.value('relay_domains')}; relay_recipient_maps is "
                  "empty", parameter="relay_domains")


@rule(id="RELAY-007", title="permit_mx_backup in use",
      severity=Severity.MEDIUM, roles=(Role.MX,), parameters=(RELAY, RECIPIENT),
      rationale="permit_mx_backup relays for any domain whose DNS names this host as MX, "
                "which anyone can arrange; Postfix deprecates it for relay_domains.",
      fix="Remove permit_mx_backup; list backup domains in relay_domains with "
          "relay_recipient_maps.",
      references=(f"{P5} permit_mx_backup",))
def mx_backup(ctx: Context) -> Iterator[Hit]:
    for svc in exposed(ctx):
        for name in (RELAY, RECIPIENT):
            if any(r.name == "permit_mx_backup" for r in expand(ctx, name, svc)):
                yield Hit(f"{svc.key}: permit_mx_backup in {name}", parameter=name,
                          service=svc.key)


@rule(id="RELAY-008", title="Sender-specified routing allowed",
      severity=Severity.HIGH, roles=(Role.MX,), parameters=("allow_untrusted_routing",),
      rationale="With allow_untrusted_routing = yes, addresses such as user@elsewhere@domain "
                "or user%elsewhere@domain from untrusted clients are forwarded on: relaying "
                "through a permitted domain.",
      fix="allow_untrusted_routing = no (the default).",
      references=(f"{P5} allow_untrusted_routing",))
def untrusted_routing(ctx: Context) -> Iterator[Hit]:
    if ctx.yes("allow_untrusted_routing"):
        yield Hit("allow_untrusted_routing = yes", parameter="allow_untrusted_routing")


@rule(id="RELAY-009", title="Recipient restriction used before a recipient is known",
      severity=Severity.HIGH, parameters=(*EARLY, "smtpd_delay_reject"),
      rationale="With smtpd_delay_reject = no the client, helo and sender lists run before "
                "RCPT TO, so restrictions about the recipient there have nothing to test and "
                "do not protect as written.",
      fix="Keep smtpd_delay_reject = yes (the default), or move the restriction to "
          "smtpd_relay_restrictions or smtpd_recipient_restrictions.",
      references=(f"{P5} smtpd_delay_reject", ACC))
def recipient_too_early(ctx: Context) -> Iterator[Hit]:
    for svc in smtpd_services(ctx):
        if ctx.yes("smtpd_delay_reject", svc):
            continue
        for name in EARLY:
            early = [str(r) for r in expand(ctx, name, svc) if r.name in RECIPIENT_ONLY]
            if early:
                yield Hit(f"{svc.key}: {', '.join(early)} in {name} with "
                          "smtpd_delay_reject = no", parameter=name, service=svc.key)


@rule(id="RELAY-010", title="Inbound service accepts only mynetworks",
      severity=Severity.HIGH, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_client_restrictions",),
      rationale="smtpd_client_restrictions = permit_mynetworks, reject (a hardening "
                "benchmark setting for hosts that receive no mail) refuses every internet "
                "sender and every authenticated user on an MX or submission port.",
      fix="Use that setting only on null clients and internal relays; on an MX, rely on "
          "the relay guard and spam restrictions instead.",
      references=("DISA STIG RHEL-08-040290", f"{P5} smtpd_client_restrictions"))
def mynetworks_only(ctx: Context) -> Iterator[Hit]:
    seen = set()
    for svc in [*ctx.mx_services(), *ctx.submission_services()]:
        if svc.key in seen or svc.process_name != "smtpd":
            continue
        seen.add(svc.key)
        items = [r.name for r in ctx.restrictions("smtpd_client_restrictions", svc)]
        if items[:2] == ["permit_mynetworks", "reject"]:
            yield Hit(f"{svc.key}: smtpd_client_restrictions = "
                      f"{ctx.value('smtpd_client_restrictions', svc)}",
                      parameter="smtpd_client_restrictions", service=svc.key)
