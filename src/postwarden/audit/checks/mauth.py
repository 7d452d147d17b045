"""MAUTH: whether SPF, DKIM and DMARC are wired into Postfix at all (info only).

Security: reads the parsed configuration only; endpoints are matched by name, nothing is
contacted.
Standards: RFC 7208 (SPF) section 2.4, RFC 6376 (DKIM) section 5, RFC 7489 (DMARC) section 6.6;
MILTER_README; SMTPD_POLICY_README; postconf(5) smtpd_milters, check_policy_service.

Theory of operation
-------------------
Postfix does none of the three itself; they come from a policy service (policyd-spf), a
milter (OpenDKIM, OpenDMARC, rspamd) or a content filter (amavis signs). A rule is quiet
when an endpoint of the right kind is named where the mail passes: the restriction lists and
milters of the smtpd that takes the mail (behind postscreen: the ``smtpd pass`` service), and
for signing also non_smtpd_milters and content_filter. Endpoints are recognised by the
words in their names or their conventional ports, so a filter under another name keeps a
rule firing: these rules are info for that reason. The DNS records are out of scope.
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.checks.milt import RESTRICTION_LISTS, SIGNER_WORDS, parse_milters
from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.audit.restrictions import KNOWN
from postwarden.postfix.mastercf import Service

# postwarden's own services (``harden --with policy|milter``): sockets in a directory of
# their own under queue_directory, named relative to it so that chrooted smtpd and
# unchrooted cleanup both reach them (MILTER_README, SMTPD_POLICY_README).
POLICY = "unix:postwarden/policy"
MILTER = "unix:postwarden/milter"
# Conventional ports: policyd-spf has none; OpenDMARC 8893; rspamd's milter proxy 11332.
SPF_WORDS = ("spf", "rspamd", ":11332", POLICY)
DMARC_WORDS = ("dmarc", "rspamd", ":8893", ":11332", MILTER)
DKIM_WORDS = (*SIGNER_WORDS, "amavis", MILTER)
# What postwarden's services replace (the guide's postgrey, policyd-spf, OpenDKIM, OpenDMARC).
REPLACED_POLICY = ("postgrey", ":10023", "policyd-spf", "spf")
REPLACED_MILTERS = ("opendkim", "opendmarc", ":8891", ":8892", ":8893", ":12301")
RELAY_GUARDS = ("reject_unauth_destination", "defer_unauth_destination")
# MILTER_README: what a milter list entry starts with ($name: a parameter reference).
ENDPOINTS = ("unix:", "inet:", "inet6:", "local:", "$", "{")
POLICY_SETTINGS = (("smtpd_policy_service_timeout", "10s"),
                   ("smtpd_policy_service_default_action", "451 4.3.5 Server configuration "
                    "problem"))
MILTER_SETTINGS = (("milter_protocol", "6"), ("milter_default_action", "tempfail"),
                   ("milter_connect_timeout", "10s"), ("milter_command_timeout", "30s"),
                   ("milter_content_timeout", "300s"))


def wire_policy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """--with policy: one check_policy_service after the relay guard (and one at DATA),
    the others gone.

    When nothing else would be left in smtpd_recipient_restrictions, the site's own
    clients (mynetworks, logged-in users) are let through first: greylisting and SPF are
    for mail from outside (the relay guard then lives in smtpd_relay_restrictions)."""
    if "policy" not in inputs.extras:
        return
    replaced = []
    for name in RESTRICTION_LISTS:
        for r in ctx.restrictions(name):
            if (r.name == "check_policy_service" and r.argument
                    and _any([r.argument], REPLACED_POLICY) and r.argument != POLICY):
                replaced.append(r)
                yield Change(Op.REMOVE, name, str(r))
    check = f"check_policy_service {POLICY}"
    kept = [r for r in ctx.restrictions("smtpd_recipient_restrictions")
            if r not in replaced and r.name in KNOWN]
    if not kept:
        check = f"permit_mynetworks, permit_sasl_authenticated, {check}"
    yield Change(Op.INSERT, "smtpd_recipient_restrictions", check,
                 after=RELAY_GUARDS, before=("permit",))
    # DATA: rate limits count accepted recipients there (recipient_count), and a second
    # header of the message (X-Greylist after Received-SPF) is added there.
    yield Change(Op.INSERT, "smtpd_data_restrictions", f"check_policy_service {POLICY}",
                 before=("permit",))
    for name, value in POLICY_SETTINGS:
        yield Change(Op.SET, name, value)


def wire_milter(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """--with milter: postwarden's milter in smtpd_milters and non_smtpd_milters, the
    milters it replaces gone, fail-closed default action and explicit time limits."""
    if "milter" not in inputs.extras:
        return
    for name in ("smtpd_milters", "non_smtpd_milters"):
        for endpoint, _ in parse_milters(ctx.value(name)):
            if _any([endpoint], REPLACED_MILTERS) or not endpoint.startswith(ENDPOINTS):
                yield Change(Op.REMOVE, name, endpoint)  # replaced, or not a milter at all
        yield Change(Op.INSERT, name, MILTER)
    for name, value in MILTER_SETTINGS:
        yield Change(Op.SET, name, value)




def _endpoints(ctx: Context, service: Service) -> list[str]:
    found = [e for e, _ in parse_milters(ctx.value("smtpd_milters", service))]
    for name in RESTRICTION_LISTS:
        found += [r.argument for r in ctx.restrictions(name, service)
                  if r.name == "check_policy_service" and r.argument]
    return found


def _any(endpoints: list[str], words: tuple[str, ...]) -> bool:
    return any(w in e.lower() for e in endpoints for w in words)


@rule(id="MAUTH-001", title="No SPF check on the MX", severity=Severity.INFO,
      roles=(Role.MX,), parameters=("smtpd_recipient_restrictions",),
      rationale="Without an SPF policy service or milter, mail whose envelope sender is "
                "forged is judged only by content filters (RFC 7208 section 2.4).",
      fix="Add an SPF check after reject_unauth_destination: postwarden's policy service "
          "(harden --with policy), policyd-spf, or a milter such as rspamd.",
      references=("RFC 7208 section 2.4", "SMTPD_POLICY_README"),
      remedy=wire_policy, takes=("policy",))
def no_spf(ctx: Context) -> Iterator[Hit]:
    for service in ctx.mx_services():
        if not _any(_endpoints(ctx, ctx.smtpd_behind(service)), SPF_WORDS):
            yield Hit(f"{service.key}: no SPF policy service or milter",
                      parameter="smtpd_recipient_restrictions", service=service.key)


@rule(id="MAUTH-002", title="Outbound mail not DKIM-signed", severity=Severity.INFO,
      roles=(Role.SUBMISSION, Role.NULL_CLIENT), parameters=("smtpd_milters",
                                                            "non_smtpd_milters"),
      rationale="Unsigned mail cannot pass DMARC by DKIM alignment and fails DMARC wherever "
                "SPF breaks, e.g. after forwarding (RFC 7489 section 4.2).",
      fix="Sign with a milter (postwarden's: harden --with milter; OpenDKIM, rspamd) in "
          "smtpd_milters and non_smtpd_milters.",
      references=("RFC 6376 section 5", "RFC 7489 section 4.2", "MILTER_README"),
      remedy=wire_milter, takes=("milter",))
def no_dkim(ctx: Context) -> Iterator[Hit]:
    found = [e for e, _ in parse_milters(ctx.value("non_smtpd_milters"))]
    found += [e for e, _ in parse_milters(ctx.value("smtpd_milters"))]
    found.append(ctx.value("content_filter"))
    for service in ctx.smtpd_services():
        receiver = ctx.smtpd_behind(service)
        found += [*_endpoints(ctx, receiver), ctx.value("content_filter", receiver)]
    if not _any(found, DKIM_WORDS):
        name = "smtpd_milters" if Role.SUBMISSION in ctx.roles else "non_smtpd_milters"
        yield Hit("no DKIM signing milter or content filter", parameter=name)


@rule(id="MAUTH-003", title="No DMARC check on the MX", severity=Severity.INFO,
      roles=(Role.MX,), parameters=("smtpd_milters",),
      rationale="Without a DMARC verifier the published policies of sender domains "
                "(p=reject) are ignored and exact-domain spoofing gets through "
                "(RFC 7489 section 6.6).",
      fix="Add a DMARC milter (postwarden's: harden --with milter; OpenDMARC, rspamd) to "
          "smtpd_milters.",
      references=("RFC 7489 section 6.6", "MILTER_README"),
      remedy=wire_milter, takes=("milter",))
def no_dmarc(ctx: Context) -> Iterator[Hit]:
    for service in ctx.mx_services():
        if not _any(_endpoints(ctx, ctx.smtpd_behind(service)), DMARC_WORDS):
            yield Hit(f"{service.key}: no DMARC milter", parameter="smtpd_milters",
                      service=service.key)
