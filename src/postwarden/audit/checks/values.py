"""CFG (values): settings postconf accepts but the daemons reject, ignore or misread.

Security: reads the parsed configuration only (values, physical lines, ``-o`` overrides);
every value is matched against small fixed patterns, and one that does not parse is a
finding, never an exception.
Standards: postconf(5) "main.cf file format" and its value types (boolean, time with the
units s/m/h/d/w, integer, byte count, TLS security levels) with each parameter's "available
in Postfix version" note; Postfix 3.7 ``global/mail_conf_bool.c``, ``mail_conf_int.c``,
``mail_conf_long.c``, ``mail_conf_time.c`` and ``util/conv_time.c`` (what makes a daemon stop
with "bad boolean/numerical/time configuration"), ``tls/tls_level.c`` (TLS level names),
``util/readlline.c`` (continuation lines), ``postlogd/postlogd.c`` and ``util/msg_logger.c``
(start-up warnings with maillog_file); COMPATIBILITY_README.

Theory of operation
-------------------
postconf only checks names; the daemons check values when they start, and a bad one stops
every process that reads it (``fatal: bad numerical configuration``). ``KINDS`` is a typed
table of the security-relevant names (plus name-suffix rules such as ``*_rate_limit``), and
the checks test each value set in main.cf or by an ``-o`` override against its kind, only
for names the installed Postfix knows (an unknown name is CFG-003's business). Values that
still hold a ``$`` after expansion cannot be judged and are skipped.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterator

from postwarden.audit.context import Context, parse_version, service_key
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.model import Hit, Severity, rule
from postwarden.postfix import lexer
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"


class Kind(enum.Enum):
    BOOLEAN = "boolean"
    INTEGER = "integer"
    TIME = "time"
    SIZE = "size"
    TLS_LEVEL_SERVER = "server TLS level"
    TLS_LEVEL_CLIENT = "client TLS level"


# postconf(5) value types of the names whose misreading matters for security or uptime.
KINDS: dict[str, Kind] = {
    **dict.fromkeys((
        "smtpd_helo_required", "smtpd_delay_reject", "disable_vrfy_command",
        "smtpd_tls_auth_only", "smtpd_sasl_auth_enable", "smtpd_tls_wrappermode",
        "smtpd_forbid_unauth_pipelining", "smtpd_reject_unlisted_recipient",
        "smtpd_reject_unlisted_sender", "smtpd_enforce_tls", "smtpd_use_tls",
        "smtp_use_tls", "smtp_enforce_tls", "smtp_sasl_auth_enable", "smtp_tls_wrappermode",
        "smtpd_tls_received_header", "smtpd_tls_ask_ccert", "smtpd_tls_req_ccert",
        "tls_preempt_cipherlist", "smtpd_sasl_authenticated_header",
        "allow_untrusted_routing", "strict_rfc821_envelopes", "smtpd_peername_lookup",
        "smtpd_relay_before_recipient_restrictions", "postscreen_enforce_tls",
        "postscreen_use_tls", "postscreen_pipelining_enable",
        "postscreen_non_smtp_command_enable", "postscreen_bare_newline_enable",
        "soft_bounce", "smtputf8_enable", "smtpd_client_port_logging",
        "smtp_tls_note_starttls_offer", "smtpd_sasl_exceptions_networks_enable",
        "tls_fast_shutdown_enable", "smtp_tls_connection_reuse",
    ), Kind.BOOLEAN),
    **dict.fromkeys((
        "smtpd_soft_error_limit", "smtpd_hard_error_limit", "smtpd_junk_command_limit",
        "smtpd_recipient_limit", "smtpd_recipient_overshoot_limit",
        "smtpd_history_flush_threshold", "default_process_limit", "smtpd_tls_loglevel",
        "smtp_tls_loglevel", "postscreen_dnsbl_threshold", "smtpd_policy_service_try_limit",
        "smtpd_sasl_response_limit", "max_use",
    ), Kind.INTEGER),
    **dict.fromkeys((
        "smtpd_error_sleep_time", "smtpd_timeout", "smtpd_starttls_timeout",
        "smtpd_policy_service_timeout", "smtpd_policy_service_max_idle",
        "smtpd_policy_service_max_ttl", "smtpd_policy_service_retry_delay",
        "anvil_rate_time_unit", "smtpd_tls_session_cache_timeout",
        "smtp_tls_session_cache_timeout", "postscreen_greet_wait",
        "postscreen_cache_retention_time", "maximal_queue_lifetime", "bounce_queue_lifetime",
        "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout",
        "smtpd_proxy_timeout", "smtp_connect_timeout", "smtp_helo_timeout",
        "daemon_timeout", "ipc_timeout", "max_idle",
    ), Kind.TIME),
    **dict.fromkeys((
        "message_size_limit", "mailbox_size_limit", "virtual_mailbox_limit",
        "queue_minfree", "header_size_limit", "bounce_size_limit", "body_checks_size_limit",
    ), Kind.SIZE),
    **dict.fromkeys(("smtpd_tls_security_level", "postscreen_tls_security_level",
                     "tlsproxy_tls_security_level"), Kind.TLS_LEVEL_SERVER),
    **dict.fromkeys(("smtp_tls_security_level", "lmtp_tls_security_level",
                     "tlsproxy_client_security_level"), Kind.TLS_LEVEL_CLIENT),
}
# postconf(5): every *_rate_limit and *_count_limit is a count; *_time_limit (also the
# service-defined X_time_limit) is a time.
SUFFIX_KINDS = (("_rate_limit", Kind.INTEGER), ("_count_limit", Kind.INTEGER),
                ("_time_limit", Kind.TIME))

INTEGER = re.compile(r"[ \t]*[+-]?[0-9]+")
TIME = re.compile(r"[0-9]+[smhdw]?")  # conv_time(): a number, at most one unit letter
INT_MAX = 2**31 - 1
LONG_MAX = 2**63 - 1
BOOLEANS = ("yes", "no")
# tls/tls_level.c: the names tls_level_lookup() knows; smtpd supports up to "encrypt".
TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify",
              "secure")
SERVER_TLS_LEVELS = ("", "none", "may", "encrypt")


def kind_of(name: str) -> Kind | None:
    if name in KINDS:
        return KINDS[name]
    for suffix, kind in SUFFIX_KINDS:
        if name.endswith(suffix):
            return kind
    return None


def _settings(ctx: Context) -> Iterator[tuple[str, str, Service | None]]:
    """(name, effective value, service) for every name main.cf or an ``-o`` sets."""
    seen: set[str] = set()
    for definition in ctx.config.main:
        if definition.name not in seen:
            seen.add(definition.name)
            yield definition.name, ctx.value(definition.name), None
    for service in ctx.services:
        for name in service.overrides():
            yield name, ctx.value(name, service), service


def _typed(ctx: Context, kinds: tuple[Kind, ...]) -> Iterator[tuple[str, str, Service | None]]:
    for name, value, service in _settings(ctx):
        kind = kind_of(name)
        if kind in kinds and ctx.config.known(name) and "$" not in value:
            yield name, value, service


def _shown(name: str, value: str, service: Service | None) -> str:
    where = f" (-o in {service.key})" if service is not None else ""
    return f"{name} = {value}{where}"




@rule(id="CFG-101", title="Unknown parameter in a master.cf -o override",
      severity=Severity.MEDIUM,
      rationale="master(5) -o overrides are not checked when the daemon starts; a misspelt "
                "name is an override that is silently not applied (postconf only prints "
                "'unused parameter' for it).",
      fix="Correct the parameter name in the -o option, or remove it.",
      references=("master(5) -o name=value", "postconf(1) unused parameter"))
def unknown_override(ctx: Context) -> Iterator[Hit]:
    names = ctx.config.names
    for service in ctx.services:
        local = names.local.get(service.key, set())
        for name in service.overrides():
            if ctx.config.known(name) or name in local:
                continue
            close = difflib.get_close_matches(name, sorted(names.builtin), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            yield Hit(f"{service.key}: -o {name} is not a Postfix parameter{hint}",
                      parameter=name, service=service.key,
                      fix=f"Write -o {close[0]}=..." if close else None)


@rule(id="CFG-102", title="Boolean parameter not 'yes' or 'no'",
      severity=Severity.CRITICAL,
      rationale="postconf accepts any text, but every daemon that reads the parameter stops "
                "with 'bad boolean configuration' (mail_conf_bool.c accepts only yes and no): "
                "the service does not start.",
      fix="Write yes or no.",
      references=(f"{P5} boolean values", "Postfix global/mail_conf_bool.c"))
def bad_boolean(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _typed(ctx, (Kind.BOOLEAN,)):
        if value.lower() not in BOOLEANS:
            yield Hit(_shown(name, value, service) + ": not yes or no", parameter=name,
                      service=service_key(service))


@rule(id="CFG-103", title="Count parameter that is not a whole number",
      severity=Severity.CRITICAL,
      rationale="Limits such as *_rate_limit and *_count_limit are integers; postconf "
                "accepts anything, and the daemon stops with 'bad numerical configuration'.",
      fix="Write a plain non-negative whole number (no units, no separators).",
      references=(f"{P5} integer values", "Postfix global/mail_conf_int.c"))
def bad_integer(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _typed(ctx, (Kind.INTEGER,)):
        reason = _integer_problem(value, INT_MAX)
        if reason:
            yield Hit(f"{_shown(name, value, service)}: {reason}", parameter=name,
                      service=service_key(service))


def _integer_problem(value: str, limit: int) -> str | None:
    if not INTEGER.fullmatch(value):
        return "not a whole number"
    number = int(value.strip())
    if number < 0:
        return "negative"
    if number > limit:
        return "too large for the daemon"
    return None


@rule(id="CFG-104", title="Time parameter with an invalid value or unit",
      severity=Severity.CRITICAL,
      rationale="A time is a number with at most one unit letter s, m, h, d or w "
                "(conv_time.c); anything else ('1.5h', '10 s', '2min') passes postconf and "
                "stops the daemon with 'bad time configuration'.",
      fix="Write a whole number followed by s, m, h, d or w, e.g. 3600s or 1h.",
      references=(f"{P5} time values", "Postfix util/conv_time.c"))
def bad_time(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _typed(ctx, (Kind.TIME,)):
        if not TIME.fullmatch(value):
            yield Hit(f"{_shown(name, value, service)}: not a number with an optional "
                      "s/m/h/d/w unit", parameter=name, service=service_key(service))


@rule(id="CFG-105", title="Size parameter written with units or not a number",
      severity=Severity.CRITICAL,
      rationale="Byte sizes such as message_size_limit are plain byte counts; '10MB' or "
                "'50M' is accepted by postconf but makes smtpd, cleanup and local stop with "
                "'bad numerical configuration'.",
      fix="Write the size in bytes, e.g. message_size_limit = 52428800 for 50 MiB.",
      references=(f"{P5} message_size_limit", "Postfix global/mail_conf_long.c"))
def bad_size(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _typed(ctx, (Kind.SIZE,)):
        reason = _integer_problem(value, LONG_MAX)
        if reason:
            yield Hit(f"{_shown(name, value, service)}: {reason} (sizes are in bytes)",
                      parameter=name, service=service_key(service))


@rule(id="CFG-106", title="TLS security level the daemon does not accept",
      severity=Severity.CRITICAL,
      rationale="tls_level.c knows none, may, encrypt, dane, dane-only, fingerprint, verify "
                "and secure; any other word stops the daemon ('Invalid TLS level'). The SMTP "
                "server supports only none, may and encrypt and treats a client-side level "
                "as encrypt, which forces TLS on every client.",
      fix="smtpd_tls_security_level: none, may or encrypt; smtp_tls_security_level: one of "
          "none, may, encrypt, dane, dane-only, fingerprint, verify, secure.",
      references=(f"{P5} smtpd_tls_security_level", f"{P5} smtp_tls_security_level",
                  "TLS_README", "Postfix tls/tls_level.c"))
def bad_tls_level(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _typed(ctx, (Kind.TLS_LEVEL_SERVER, Kind.TLS_LEVEL_CLIENT)):
        shown = _shown(name, value, service)
        if value and value not in TLS_LEVELS:
            yield Hit(f"{shown}: not a TLS security level", parameter=name,
                      service=service_key(service))
        elif kind_of(name) is Kind.TLS_LEVEL_SERVER and value not in SERVER_TLS_LEVELS:
            yield Hit(f"{shown}: the SMTP server does not support it and uses encrypt",
                      parameter=name, service=service_key(service), severity=Severity.MEDIUM)


@rule(id="CFG-107", title="Continuation line after a blank or comment line",
      severity=Severity.MEDIUM,
      rationale="Blank and comment lines do not end a logical line: an indented line after "
                "them is still appended to the parameter above, however far up it is "
                "(readlline.c), which is rarely what the layout suggests.",
      fix="Remove the blank line, or the indentation if the line is meant to stand alone.",
      references=(f"{P5} main.cf file format", "Postfix util/readlline.c"))
def continuation_after_gap(ctx: Context) -> Iterator[Hit]:
    lines = ctx.config.main.lines
    for definition in ctx.config.main:
        blank = comment = False
        for index in range(definition.first + 1, min(definition.last + 1, len(lines))):
            text = lexer.strip_newline(lines[index])
            if not text.strip(lexer.SPACE):
                blank = True
            elif lexer.is_ignored(text):
                comment = True
            elif blank or comment:
                gap = "a blank line" if blank else "a comment line"
                yield Hit(f"line {index + 1} ({text.strip()[:40]!r}) follows {gap} but "
                          f"still continues {definition.name} (line {definition.lineno})",
                          parameter=definition.name, file=ctx.main_path, line=index + 1,
                          severity=None if blank else Severity.LOW)
                break


@rule(id="CFG-108", title="compatibility_level above the installed Postfix",
      severity=Severity.LOW, parameters=("compatibility_level",),
      rationale="Postfix accepts a level it does not know yet without a word; the setting "
                "claims defaults that the running version does not provide.",
      fix="Set compatibility_level to the installed major.minor version.",
      references=("COMPATIBILITY_README", f"{P5} compatibility_level"))
def compat_high(ctx: Context) -> Iterator[Hit]:
    level = parse_version(ctx.value("compatibility_level"))
    version = parse_version(ctx.value("mail_version"))
    if level is not None and version is not None and level > version[:2]:
        yield Hit(f"compatibility_level = {ctx.value('compatibility_level')}; Postfix is "
                  f"{ctx.value('mail_version')}", parameter="compatibility_level")




# postconf(5): the parameters that replaced these; an old one still set alongside its
# successor is ignored or overrides it in ways only the release notes explain.
OBSOLETE = {
    "smtpd_use_tls": "smtpd_tls_security_level = may",
    "smtpd_enforce_tls": "smtpd_tls_security_level = encrypt",
    "smtp_use_tls": "smtp_tls_security_level = may",
    "smtp_enforce_tls": "smtp_tls_security_level = encrypt",
    "smtp_tls_enforce_peername": "smtp_tls_security_level = verify",
    "smtpd_tls_dh512_param_file": "nothing (export ciphers are gone; remove it)",
    "disable_dns_lookups": "smtp_dns_support_level",
    "smtp_tls_per_site": "smtp_tls_policy_maps",
    "virtual_maps": "virtual_alias_maps",
    "fallback_relay": "smtp_fallback_relay",
    "authorized_verp_clients": "smtpd_authorized_verp_clients",
    "smtpd_client_connection_limit_exceptions": "smtpd_client_event_limit_exceptions",
    "postscreen_blacklist_action": "postscreen_denylist_action",
    "postscreen_whitelist_interfaces": "postscreen_allowlist_interfaces",
    "postscreen_dnsbl_whitelist_threshold": "postscreen_dnsbl_allowlist_threshold",
    "tlsproxy_client_level": "tlsproxy_client_security_level",
    "tlsproxy_client_policy": "tlsproxy_client_policy_maps",
}


@rule(id="CFG-109", title="Obsolete parameter",
      severity=Severity.LOW, parameters=tuple(OBSOLETE),
      rationale="These names were superseded; their interaction with the newer parameter "
                "(which one wins when both are set) is easy to get wrong and they may be "
                "removed in a later release.",
      fix="Replace the parameter with its successor and remove the old line.",
      references=(f"{P5} (each parameter's 'obsolete' note)", "TLS_README"))
def obsolete(ctx: Context) -> Iterator[Hit]:
    for name, value, service in _settings(ctx):
        successor = OBSOLETE.get(name)
        if successor is not None:
            yield Hit(f"{_shown(name, value, service)} is obsolete", parameter=name,
                      service=service_key(service), fix=f"Use {successor} instead of {name}.")


# postconf(5) "This feature is available in Postfix >= ...": per stable branch where a
# feature was back-ported (the highest entry is the one for newer branches).
FIRST_VERSIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "tls_ffdhe_auto_groups": ((3, 8),),
    "smtpd_forbid_unauth_pipelining": ((3, 7, 6), (3, 8, 1)),
    "smtpd_forbid_bare_newline": ((3, 5, 23), (3, 6, 13), (3, 7, 9), (3, 8, 4)),
    "smtpd_forbid_bare_newline_exclusions": ((3, 5, 23), (3, 6, 13), (3, 7, 9), (3, 8, 4)),
    "smtpd_client_auth_rate_limit": ((3, 1),),
    "smtpd_tls_chain_files": ((3, 4),),
    "smtp_tls_chain_files": ((3, 4),),
    "tls_server_sni_maps": ((3, 4),),
    "maillog_file": ((3, 4),),
    "smtpd_relay_before_recipient_restrictions": ((3, 6),),
    "smtpd_sasl_mechanism_filter": ((3, 6),),
    "tls_fast_shutdown_enable": ((3, 6),),
    "postscreen_denylist_action": ((3, 6),),
    "smtp_tls_connection_reuse": ((3, 4),),
    "tlsproxy_client_security_level": ((3, 4),),
    "smtpd_relay_restrictions": ((2, 10),),
    "smtp_dns_support_level": ((2, 11),),
    "tls_ssl_options": ((2, 11),),
    "tls_config_file": ((3, 9),),
    "tls_config_name": ((3, 9),),
}
# postconf(5) smtpd_tls_protocols: the ">=TLSv1.2" form is understood from Postfix 3.6.
RANGE_SYNTAX = (3, 6)


def available(firsts: tuple[tuple[int, ...], ...], version: tuple[int, ...]) -> bool:
    if version >= max(firsts):
        return True
    return any(version[:2] == first[:2] and version >= first for first in firsts)


@rule(id="CFG-110", title="Parameter newer than the installed Postfix",
      severity=Severity.MEDIUM,
      rationale="An older Postfix does not know the name and ignores it (only postconf "
                "mentions 'unused parameter'): hardening copied from a newer guide, such as "
                "SMTP smuggling protection, is silently not in force.",
      fix="Upgrade Postfix, or use the equivalent setting the installed version has.",
      references=(f"{P5} 'available in Postfix version' notes",))
def newer_than_installed(ctx: Context) -> Iterator[Hit]:
    version = parse_version(ctx.value("mail_version"))
    if version is None:
        return
    live = ctx.config.table.source.startswith("live")
    shown = ctx.value("mail_version")
    for name, value, service in _settings(ctx):
        firsts = FIRST_VERSIONS.get(name)
        if firsts and not (live and name in ctx.config.table.defaults):
            if not available(firsts, version):
                needed = " or ".join(".".join(map(str, f)) for f in firsts)
                yield Hit(f"{_shown(name, value, service)} needs Postfix {needed}; "
                          f"installed is {shown}", parameter=name, service=service_key(service))
        elif (name.endswith("_protocols") and "tls" in name and version < RANGE_SYNTAX
              and (">=" in value or "<=" in value)):
            yield Hit(f"{_shown(name, value, service)}: the >=/<= form needs Postfix 3.6; "
                      f"installed is {shown}", parameter=name, service=service_key(service))


# XXX: daemons log more start-up warnings than "overriding earlier entry" (undefined
# parameters among them), but only that one is verified to fill postlogd's socket; the
# count is therefore a lower bound.
DEADLOCK_SEEN = 5  # conflicting duplicates that hung `postfix reload` on 3.7.11


def _dedup_all(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Keep only the effective definition of each name main.cf defines more than once."""
    for name in sorted({o.name for o in ctx.config.main.overrides()}):
        yield Change(Op.DEDUP, name)


@rule(id="CFG-111", title="Start-up warnings while logging through maillog_file",
      severity=Severity.MEDIUM, parameters=("maillog_file",),
      rationale="With maillog_file, postlogd logs its own start-up warnings to its datagram "
                "socket before it reads from it, and that socket blocks (Linux queues 10 "
                "datagrams): a main.cf that makes every daemon warn can hang logging and "
                "with it every Postfix process.",
      fix="Remove the duplicate definitions so that main.cf loads without warnings.",
      references=(f"{P5} maillog_file", "MAILLOG_README", "Postfix postlogd/postlogd.c",
                  "Postfix util/msg_logger.c"), remedy=_dedup_all)
def maillog_warnings(ctx: Context) -> Iterator[Hit]:
    if not ctx.value("maillog_file"):
        return
    overrides = ctx.config.main.overrides()
    if overrides:
        names = ", ".join(sorted({o.name for o in overrides}))
        yield Hit(f"maillog_file = {ctx.value('maillog_file')} and main.cf makes every "
                  f"daemon log {len(overrides)} 'overriding earlier entry' warning(s) at "
                  f"start-up ({names})", parameter="maillog_file",
                  severity=Severity.HIGH if len(overrides) >= DEADLOCK_SEEN else None)
