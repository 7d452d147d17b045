"""RATE: per-client rate limits, error throttling and size limits of the SMTP server.

Security: reads the parsed configuration only; numbers that do not parse are skipped here
(CFG-103/CFG-104/CFG-105 report them).
Standards: postconf(5) smtpd_client_*_limit, anvil_rate_time_unit, smtpd_error_sleep_time,
smtpd_soft_error_limit, smtpd_hard_error_limit, smtpd_junk_command_limit,
message_size_limit, mailbox_size_limit; anvil(8) (the limits need the anvil service);
TUNING_README; Postfix 3.7 ``local/local.c`` (mailbox smaller than message is fatal).

Theory of operation
-------------------
The limits are smtpd settings and may differ per master.cf service (``-o``), so the checks
walk the smtpd process of each public MX and submission service (postscreen hands over to
``smtpd pass``) and report a value from main.cf once, one from an override on its service.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from postwarden.audit.context import Context, service_key
from postwarden.audit.fixes import Change, Inputs, Op, Outcome, setting, unset
from postwarden.audit.fixes import scope as scope_of
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
LIMITS = ("smtpd_client_connection_count_limit", "smtpd_client_connection_rate_limit",
          "smtpd_client_message_rate_limit", "smtpd_client_recipient_rate_limit",
          "smtpd_client_new_tls_session_rate_limit", "smtpd_client_auth_rate_limit")
# postconf(5) defaults of the error counters; "far above" is more than five times these.
ERROR_DEFAULTS = {"smtpd_soft_error_limit": 10, "smtpd_hard_error_limit": 20,
                  "smtpd_junk_command_limit": 100}
FAR_ABOVE = 5
TIME = re.compile(r"([0-9]+)([smhdw]?)")
TLS_RATE = 100  # RATE-004's value; never below the per-client concurrency limit
ANVIL = "anvil     unix  -       -       y       -       1       anvil"




def _public(ctx: Context) -> list[Service]:
    """The smtpd processes behind the public MX and submission services, once each."""
    found: dict[str, Service] = {}
    for service in ctx.mx_services() + ctx.submission_services():
        smtpd = ctx.smtpd_behind(service)
        found[smtpd.key] = smtpd
    return list(found.values())




def _zero(ctx: Context, name: str, service: Service) -> bool:
    return ctx.number(name, service) == 0


@rule(id="RATE-001", title="No per-client connection rate limit",
      severity=Severity.LOW, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_client_connection_rate_limit",),
      rationale="With the limit at 0 one client may open connections as fast as it likes "
                "and tie up every smtpd process.",
      fix="smtpd_client_connection_rate_limit = 30 (per anvil_rate_time_unit); exempt "
          "trusted hosts with smtpd_client_event_limit_exceptions.",
      references=(f"{P5} smtpd_client_connection_rate_limit", "anvil(8)", "TUNING_README"),
      remedy=setting("smtpd_client_connection_rate_limit", "30"))
def connection_rate(ctx: Context) -> Iterator[Hit]:
    name = "smtpd_client_connection_rate_limit"
    for scope, service in ctx.scopes(_public(ctx), (name,)):
        if _zero(ctx, name, service):
            yield Hit(f"{name} = 0 on {service.key}", parameter=name, service=service_key(scope))


@rule(id="RATE-002", title="No per-client message or recipient rate limit",
      severity=Severity.INFO, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_client_message_rate_limit", "smtpd_client_recipient_rate_limit"),
      rationale="A compromised account or a spam bot can send at full speed until someone "
                "notices; a generous limit costs legitimate senders nothing.",
      fix="Set smtpd_client_message_rate_limit and/or smtpd_client_recipient_rate_limit "
          "to what the busiest legitimate client needs.",
      references=(f"{P5} smtpd_client_message_rate_limit",
                  f"{P5} smtpd_client_recipient_rate_limit"))
def message_rate(ctx: Context) -> Iterator[Hit]:
    names = ("smtpd_client_message_rate_limit", "smtpd_client_recipient_rate_limit")
    for scope, service in ctx.scopes(_public(ctx), names):
        if all(_zero(ctx, n, service) for n in names):
            yield Hit(f"{names[0]} and {names[1]} are both 0 on {service.key}",
                      parameter=names[0], service=service_key(scope))


@rule(id="RATE-003", title="Per-client concurrency limit off or too high",
      severity=Severity.LOW, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_client_connection_count_limit", "default_process_limit"),
      rationale="If one client may hold more than half of the smtpd processes (or any "
                "number, at 0), a single host can lock everyone else out.",
      fix="Keep smtpd_client_connection_count_limit at the default 50 or lower, and below "
          "half of the service's process limit.",
      references=(f"{P5} smtpd_client_connection_count_limit", "master(5) maxproc"))
def concurrency(ctx: Context) -> Iterator[Hit]:
    name = "smtpd_client_connection_count_limit"
    for scope, service in ctx.scopes(_public(ctx), (name,)):
        limit = ctx.number(name, service)
        processes = (int(service.maxproc) if service.maxproc.isdigit()
                     else ctx.number("default_process_limit"))
        if limit == 0:
            yield Hit(f"{name} = 0 on {service.key}: no limit", parameter=name,
                      service=service_key(scope))
        elif limit is not None and processes and limit > processes // 2:
            yield Hit(f"{name} = {limit} on {service.key}, more than half of its "
                      f"{processes} processes", parameter=name, service=service_key(scope))


def _tls_rate(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = "smtpd_client_new_tls_session_rate_limit"
    service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    count = ctx.number("smtpd_client_connection_count_limit", service) or 0
    yield Change(Op.SET, name, str(max(TLS_RATE, count)), scope_of(ctx, hit, name))


@rule(id="RATE-004", title="TLS handshake rate unlimited",
      severity=Severity.LOW, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_client_new_tls_session_rate_limit",),
      rationale="A full TLS handshake is expensive; without a limit one client can keep "
                "the CPU busy negotiating new sessions.",
      fix="smtpd_client_new_tls_session_rate_limit = 100 (not below the concurrency limit).",
      references=(f"{P5} smtpd_client_new_tls_session_rate_limit",), remedy=_tls_rate)
def tls_rate(ctx: Context) -> Iterator[Hit]:
    name = "smtpd_client_new_tls_session_rate_limit"
    tls = ("smtpd_tls_security_level", "smtpd_tls_wrappermode", "smtpd_use_tls")
    for _scope, service in ctx.scopes(_public(ctx), (name, *tls)):
        offers = (ctx.value(tls[0], service) not in ("", "none")
                  or ctx.yes(tls[1], service) or ctx.yes(tls[2], service))
        if offers and _zero(ctx, name, service):
            key = service.key if ctx.overridden(name, service) else None
            yield Hit(f"{name} = 0 on {service.key}, which offers TLS", parameter=name,
                      service=key)


def _anvil(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    yield Change(Op.SERVICE, "anvil/unix", ANVIL)


@rule(id="RATE-005", title="Client limits set but no anvil service",
      severity=Severity.HIGH, parameters=LIMITS,
      rationale="smtpd counts connections and rates through anvil(8); without the anvil "
                "service in master.cf it cannot reach it and the limits are not enforced.",
      fix="Restore the master.cf line 'anvil unix - - y - 1 anvil'.",
      references=("anvil(8)", f"{P5} smtpd_client_connection_count_limit", "master(5)"),
      remedy=_anvil)
def no_anvil(ctx: Context) -> Iterator[Hit]:
    if ctx.master_path is None or ctx.service("anvil", "unix") is not None:
        return
    for service in (s for s in ctx.services if s.process_name == "smtpd"):
        active = [n for n in LIMITS if (ctx.number(n, service) or 0) > 0]
        if active:
            yield Hit(f"{service.key} uses {', '.join(active)} but master.cf has no anvil "
                      "service", parameter=active[0],
                      service=service.key if ctx.overridden(active[0], service) else None)
            return


def _back_to_default(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if hit.parameter:
        yield from unset(hit.parameter)(ctx, hit, inputs)


@rule(id="RATE-006", title="Error throttling weakened",
      severity=Severity.LOW, roles=(Role.MX,),
      parameters=("smtpd_error_sleep_time", *ERROR_DEFAULTS),
      rationale="The error delay and counters slow down and disconnect clients that probe "
                "addresses or send junk; at 0 seconds or far above the defaults, address "
                "harvesting goes at full speed.",
      fix="Keep the defaults: smtpd_error_sleep_time = 1s, smtpd_soft_error_limit = 10, "
          "smtpd_hard_error_limit = 20, smtpd_junk_command_limit = 100.",
      references=(f"{P5} smtpd_error_sleep_time", f"{P5} smtpd_hard_error_limit"),
      remedy=_back_to_default)
def error_throttling(ctx: Context) -> Iterator[Hit]:
    names = ("smtpd_error_sleep_time", *ERROR_DEFAULTS)
    mx = {s.key: s for s in (ctx.smtpd_behind(m) for m in ctx.mx_services())}
    for _scope, service in ctx.scopes(list(mx.values()), names):
        sleep = TIME.fullmatch(ctx.value(names[0], service))
        if sleep and int(sleep.group(1)) == 0:
            yield Hit(f"smtpd_error_sleep_time = 0 on {service.key}", parameter=names[0],
                      service=_own(ctx, names[0], service))
        for name, default in ERROR_DEFAULTS.items():
            value = ctx.number(name, service)
            if value is not None and value > default * FAR_ABOVE:
                yield Hit(f"{name} = {value} on {service.key} (default {default})",
                          parameter=name, service=_own(ctx, name, service))


def _own(ctx: Context, name: str, service: Service) -> str | None:
    return service.key if ctx.overridden(name, service) else None


@rule(id="RATE-007", title="Message size unlimited or larger than the mailbox limit",
      severity=Severity.MEDIUM, parameters=("message_size_limit", "mailbox_size_limit"),
      rationale="message_size_limit = 0 lets one message fill the queue file system; a "
                "mailbox_size_limit below message_size_limit makes local(8) stop with a "
                "fatal error instead of delivering.",
      fix="Set a finite message_size_limit and keep mailbox_size_limit at 0 or above it.",
      references=(f"{P5} message_size_limit", f"{P5} mailbox_size_limit",
                  "Postfix local/local.c"))
def message_size(ctx: Context) -> Iterator[Hit]:
    message = ctx.number("message_size_limit")
    mailbox = ctx.number("mailbox_size_limit")
    if message == 0:
        yield Hit("message_size_limit = 0: no limit", parameter="message_size_limit")
    elif message is not None and mailbox and mailbox < message:
        yield Hit(f"mailbox_size_limit = {mailbox} is smaller than message_size_limit = "
                  f"{message}; local delivery stops with a fatal error",
                  parameter="mailbox_size_limit", severity=Severity.HIGH)
