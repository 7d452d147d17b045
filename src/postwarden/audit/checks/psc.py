"""PSC: postscreen(8), where it runs, what it needs beside it and whether its tests act.

Security: reads the parsed configuration only.
Standards: POSTSCREEN_README ("Turning on postscreen(8) without blocking mail",
"Configuring the postscreen(8) service"); postconf(5) postscreen_* parameters,
smtpd_service_name, dnsblog_service_name, tlsproxy_service_name; master(5).

Theory of operation
-------------------
postscreen(8) listens on port 25 in place of smtpd, runs its tests, and hands clean clients
to the ``smtpd pass`` service named by smtpd_service_name; DNSBL lookups go through the
dnsblog(8) service and STARTTLS through tlsproxy(8). Values are read as the postscreen
service sees them (main.cf plus its ``-o``).
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.fixes import scope as scope_of
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

PSC = "POSTSCREEN_README"
P5 = "postconf(5)"
SMTP_PORT = 25
RESTRICTION_LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                     "smtpd_sender_restrictions", "smtpd_relay_restrictions",
                     "smtpd_recipient_restrictions", "smtpd_data_restrictions")


def _postscreens(ctx: Context) -> list[Service]:
    return [s for s in ctx.smtpd_services() if s.process_name == "postscreen"]


def _companion(ctx: Context, name: str, type_: str, command: str) -> bool:
    service = ctx.service(name, type_)
    return service is not None and service.process_name == command


@rule(id="PSC-001", title="MX without zombie or DNSBL screening", severity=Severity.INFO,
      roles=(Role.MX,), parameters=("postscreen_dnsbl_sites", "smtpd_client_restrictions"),
      rationale="A plain smtpd on port 25 with no reject_rbl_client spends a process on "
                "every bot and accepts the first spam wave from known-bad addresses.",
      fix="Run postscreen(8) on port 25 with postscreen_dnsbl_sites, or add "
          "reject_rbl_client to smtpd_client_restrictions.",
      references=(f"{PSC} Introduction", f"{P5} reject_rbl_client"))
def no_screening(ctx: Context) -> Iterator[Hit]:
    for service in ctx.mx_services():
        if service.process_name != "smtpd":
            continue
        if any(r.name == "reject_rbl_client"
               for name in RESTRICTION_LISTS for r in ctx.restrictions(name, service)):
            continue
        yield Hit(f"{service.key} runs smtpd directly and uses no DNS blocklist",
                  parameter="smtpd_client_restrictions", service=service.key)


@rule(id="PSC-002", title="postscreen on a port that mail clients use", severity=Severity.HIGH,
      roles=(Role.SUBMISSION,), parameters=("postscreen_greet_action",),
      rationale="postscreen's tests assume a mail server on the other end; POSTSCREEN_README "
                "says not to use it on ports for end-user clients, whose MUAs and addresses "
                "(dynamic, often listed in DNSBLs) fail them.",
      fix="Run postscreen only on port 25; serve 587 and 465 with smtpd.",
      references=(f"{PSC} Configuring the postscreen(8) service", "RFC 6409 section 3.1"))
def mua_port(ctx: Context) -> Iterator[Hit]:
    for service in _postscreens(ctx):
        port = ctx.port(service)
        if port is not None and port != SMTP_PORT:
            yield Hit(f"{service.key} runs postscreen on port {port}", service=service.key)


# POSTSCREEN_README "Configuring the postscreen(8) service": the helper each parameter
# needs, as (parameter naming it, default name, type, maxproc, command).
COMPANIONS = {
    "smtpd_service_name": ("smtpd_service_name", "smtpd", "pass", "-", "smtpd"),
    "postscreen_dnsbl_sites": ("dnsblog_service_name", "dnsblog", "unix", "0", "dnsblog"),
    "postscreen_tls_security_level": ("tlsproxy_service_name", "tlsproxy", "unix", "0",
                                      "tlsproxy"),
}


def _add_companion(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """The master.cf entry of the missing helper, under the name postscreen uses."""
    postscreen = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    if hit.parameter not in COMPANIONS or postscreen is None:
        return
    name_parameter, default, type_, maxproc, command = COMPANIONS[hit.parameter]
    name = ctx.value(name_parameter, postscreen) or default
    yield Change(Op.SERVICE, f"{name}/{type_}",
                 f"{name:<9} {type_:<5} -       -       y       -       {maxproc:<7} {command}")


@rule(id="PSC-003", title="postscreen without the services it hands work to",
      severity=Severity.HIGH, roles=(Role.MX,),
      parameters=("smtpd_service_name", "postscreen_dnsbl_sites",
                  "postscreen_tls_security_level"),
      rationale="postscreen passes clean clients to the smtpd 'pass' service, queries "
                "DNSBLs through dnsblog(8) and does STARTTLS through tlsproxy(8); when one "
                "is missing from master.cf, mail is not accepted or the tests fail.",
      fix="Add the master.cf entries 'smtpd pass - - y - - smtpd', "
          "'dnsblog unix - - y - 0 dnsblog' and 'tlsproxy unix - - y - 0 tlsproxy'.",
      references=(f"{PSC} Configuring the postscreen(8) service", "master(5)"),
      remedy=_add_companion)
def missing_companions(ctx: Context) -> Iterator[Hit]:
    for service in _postscreens(ctx):
        name = ctx.value("smtpd_service_name", service) or "smtpd"
        if not _companion(ctx, name, "pass", "smtpd"):
            yield Hit(f"{service.key} runs postscreen but master.cf has no '{name} pass' "
                      "smtpd service", parameter="smtpd_service_name", service=service.key)
        if ctx.words("postscreen_dnsbl_sites", service):
            name = ctx.value("dnsblog_service_name", service) or "dnsblog"
            if not _companion(ctx, name, "unix", "dnsblog"):
                yield Hit(f"postscreen_dnsbl_sites is set but master.cf has no '{name} unix' "
                          "dnsblog service", parameter="postscreen_dnsbl_sites",
                          service=service.key)
        level = ctx.value("postscreen_tls_security_level", service)
        if level not in ("", "none"):
            name = ctx.value("tlsproxy_service_name", service) or "tlsproxy"
            if not _companion(ctx, name, "unix", "tlsproxy"):
                yield Hit(f"postscreen offers TLS (level {level}) but master.cf has no "
                          f"'{name} unix' tlsproxy service",
                          parameter="postscreen_tls_security_level", service=service.key)


def _mynetworks_first(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = "postscreen_access_list"
    postscreen = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    first = tuple(ctx.words(name, postscreen)[:1])
    yield Change(Op.INSERT, name, "permit_mynetworks", scope_of(ctx, hit, name), before=first)


@rule(id="PSC-004", title="postscreen access list does not exempt mynetworks",
      severity=Severity.LOW, roles=(Role.MX,), parameters=("postscreen_access_list",),
      rationale="Without permit_mynetworks, the site's own hosts and relays go through the "
                "greeting and DNSBL tests and are delayed or rejected like strangers.",
      fix="Put permit_mynetworks first in postscreen_access_list.",
      references=(f"{P5} postscreen_access_list", PSC), remedy=_mynetworks_first)
def no_mynetworks(ctx: Context) -> Iterator[Hit]:
    for service in _postscreens(ctx):
        words = ctx.words("postscreen_access_list", service)
        if "permit_mynetworks" not in words:
            shown = " ".join(words) or "(empty)"
            yield Hit(f"postscreen_access_list = {shown}", parameter="postscreen_access_list",
                      service=service.key)


@rule(id="PSC-005", title="postscreen tests only logged", severity=Severity.INFO,
      roles=(Role.MX,), parameters=("postscreen_greet_action", "postscreen_dnsbl_action"),
      rationale="With the action 'ignore' (the default) a failed pregreet or DNSBL test is "
                "only logged and the client gets through; postscreen then costs latency "
                "and blocks nothing.",
      fix="After watching the logs, set postscreen_greet_action = enforce and "
          "postscreen_dnsbl_action = enforce.",
      references=(f"{PSC} Turning on postscreen(8) without blocking mail",
                  f"{P5} postscreen_greet_action"))
def tests_ignored(ctx: Context) -> Iterator[Hit]:
    for service in _postscreens(ctx):
        if ctx.value("postscreen_greet_action", service).lower() == "ignore":
            yield Hit("postscreen_greet_action = ignore", parameter="postscreen_greet_action",
                      service=service.key)
        if (ctx.words("postscreen_dnsbl_sites", service)
                and ctx.value("postscreen_dnsbl_action", service).lower() == "ignore"):
            yield Hit("postscreen_dnsbl_action = ignore", parameter="postscreen_dnsbl_action",
                      service=service.key)
