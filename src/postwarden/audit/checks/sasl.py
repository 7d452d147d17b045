"""SASL: authentication on the submission service and towards a relay host.

Security: reads the parsed configuration and, for SASL-007 and SASL-011, the metadata of
the Dovecot auth socket and of the client password tables (through ``Context.file``);
never opens a socket or reads a password.
Standards: SASL_README ("Postfix to Dovecot SASL communication", "Enabling SASL
authentication in the Postfix SMTP client", "Envelope sender address authorization");
postconf(5) smtpd_sasl_*, smtp_sasl_*, smtpd_tls_auth_only, smtpd_client_auth_rate_limit;
RFC 4954 section 4 (no plaintext mechanisms without a protected session); RFC 8314.

Remedies change the submission services through their own ``-o`` and never switch SASL on
or off: which port users authenticate on (SASL-002), the AUTH rate their network needs
(SASL-004), the sender/login map (SASL-005), a running Dovecot (SASL-007), the relay
host's TLS (SASL-010), file modes (SASL-011) and a header a filter may read (SASL-012) are
the operator's. ``smtpd_tls_auth_only`` needs a certificate smtpd can load: without TLS it
would hide AUTH altogether.
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.checks.relay import EARLY, RECIPIENT, RELAY, expand, walk
from postwarden.audit.checks.tlsfix import certificate, certificate_loads, hit_service
from postwarden.audit.context import Context
from postwarden.audit.fixes import (
    Change,
    Inputs,
    Needs,
    Op,
    Outcome,
    chain,
    scope,
    service_setting,
    unset,
)
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
SUBMISSION_PORTS = (465, 587)
LOGIN_MISMATCH = ("reject_sender_login_mismatch", "reject_authenticated_sender_login_mismatch")
# smtp_tls_security_level values that refuse to send without TLS (postconf(5)).
MANDATORY_TLS = ("encrypt", "dane-only", "fingerprint", "verify", "secure")
INDEXED = ("", ".db", ".lmdb", ".cdb")
# RFC 6409 4.3 / SASL_README: a submission service takes mail from logged-in users only.
AUTHENTICATED_ONLY = "permit_sasl_authenticated,reject"


def sasl_services(ctx: Context) -> list[Service]:
    """Public smtpd services with SASL switched on."""
    return [s for s in ctx.public_smtpd_services()
            if s.process_name == "smtpd" and ctx.yes("smtpd_sasl_auth_enable", s)]


def submission_ports(ctx: Context) -> list[Service]:
    """Public smtpd services on 587/465: ports meant for authenticated clients only."""
    return [s for s in ctx.public_smtpd_services()
            if s.process_name == "smtpd" and ctx.port(s) in SUBMISSION_PORTS]


def requires_auth(ctx: Context, svc: Service) -> bool:
    """Whether some list refuses an unauthenticated outside client writing to a local
    recipient (see ``relay.walk``)."""
    return any(walk(ctx, name, svc, remote=False).blocks
               for name in (*EARLY, RELAY, RECIPIENT))


def _auth_only(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    svc = hit_service(ctx, hit)
    if svc is None:
        return  # run for a given --tls-cert: TLS-012 places the certificate
    if not certificate_loads(ctx, svc):
        outcomes = list(certificate(ctx, hit, inputs))
        yield from outcomes
        if any(isinstance(o, Needs) for o in outcomes):
            return
    name = "smtpd_tls_auth_only"
    yield Change(Op.SET, name, "yes", scope(ctx, hit, name))


def _no_anonymous(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    svc = hit_service(ctx, hit)
    if name is None or (name == "smtpd_sasl_tls_security_options"
                        and not ctx.explicit(name, svc)):
        return  # its default, $smtpd_sasl_security_options, gets noanonymous itself
    yield Change(Op.INSERT, name, "noanonymous", scope(ctx, hit, name))


def _drop_local_domain(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if all(ctx.value("smtpd_sasl_type", s) == "dovecot" for s in ctx.all_smtpd()):
        yield Change(Op.UNSET, "smtpd_sasl_local_domain")


@rule(id="SASL-001", title="AUTH offered on unencrypted sessions",
      severity=Severity.HIGH, roles=(Role.SUBMISSION, Role.MX),
      parameters=("smtpd_tls_auth_only", "smtpd_sasl_security_options"),
      rationale="Unless TLS is required first, PLAIN and LOGIN passwords can cross the "
                "network in clear, and a man in the middle can strip STARTTLS to make that "
                "happen (RFC 4954 section 4).",
      fix="smtpd_tls_auth_only = yes (or smtpd_tls_security_level = encrypt on the "
          "submission service).",
      references=("TLS_README", "SASL_README", "RFC 4954 section 4"),
      remedy=_auth_only, takes=("tls-cert", "tls-key"))

def auth_in_clear(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        if (ctx.enforces_tls(svc) or ctx.yes("smtpd_tls_auth_only", svc)
                or "noplaintext" in ctx.words("smtpd_sasl_security_options", svc)):
            continue
        yield Hit(f"{svc.key}: SASL on, smtpd_tls_security_level = "
                  f"{ctx.value('smtpd_tls_security_level', svc) or '(none)'}, "
                  "smtpd_tls_auth_only = no", parameter="smtpd_tls_auth_only",
                  service=svc.key)


def _mx_smtpds(ctx: Context) -> list[Service]:
    found = []
    for svc in ctx.mx_services():
        if svc.process_name == "smtpd":
            found.append(svc)
        else:  # postscreen hands port 25 connections to the smtpd 'pass' service
            found.extend(s for s in ctx.services
                         if s.type == "pass" and s.process_name == "smtpd")
    return found


@rule(id="SASL-002", title="SASL enabled on the MX port",
      severity=Severity.MEDIUM, roles=(Role.MX,), parameters=("smtpd_sasl_auth_enable",),
      rationale="AUTH on port 25 invites password guessing on the busiest port and ties "
                "mail reception to the authentication backend: when it fails, smtpd fails "
                "every connection.",
      fix="Set smtpd_sasl_auth_enable = no in main.cf and -o smtpd_sasl_auth_enable=yes on "
          "the submission services only.",
      references=("SASL_README", "RFC 8314"))
def sasl_on_mx(ctx: Context) -> Iterator[Hit]:
    for svc in _mx_smtpds(ctx):
        if ctx.yes("smtpd_sasl_auth_enable", svc):
            yield Hit(f"{svc.key}: smtpd_sasl_auth_enable = yes",
                      parameter="smtpd_sasl_auth_enable", service=svc.key)


@rule(id="SASL-003", title="Anonymous SASL login allowed",
      severity=Severity.CRITICAL, roles=(Role.SUBMISSION,),
      parameters=("smtpd_sasl_security_options", "smtpd_sasl_tls_security_options"),
      rationale="Without noanonymous, the ANONYMOUS mechanism counts as authenticated, so "
                "permit_sasl_authenticated lets anyone relay.",
      fix="Include noanonymous in smtpd_sasl_security_options and "
          "smtpd_sasl_tls_security_options.",
      references=("SASL_README", f"{P5} smtpd_sasl_security_options"),
      remedy=_no_anonymous)

def anonymous(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        for name in ("smtpd_sasl_security_options", "smtpd_sasl_tls_security_options"):
            if "noanonymous" not in ctx.words(name, svc):
                yield Hit(f"{svc.key}: {name} = {ctx.value(name, svc) or '(empty)'}",
                          parameter=name, service=svc.key)


@rule(id="SASL-004", title="No limit on AUTH attempts",
      severity=Severity.MEDIUM, roles=(Role.SUBMISSION,),
      parameters=("smtpd_client_auth_rate_limit",),
      rationale="With smtpd_client_auth_rate_limit = 0 one client may try passwords as "
                "fast as the server answers.",
      fix="Set smtpd_client_auth_rate_limit (per anvil_rate_time_unit), e.g. 10, and watch "
          "the log with fail2ban.",
      references=(f"{P5} smtpd_client_auth_rate_limit",))
def auth_rate(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        if ctx.number("smtpd_client_auth_rate_limit", svc) == 0:
            yield Hit(f"{svc.key}: smtpd_client_auth_rate_limit = 0",
                      parameter="smtpd_client_auth_rate_limit", service=svc.key)


@rule(id="SASL-005", title="Authenticated users may send as anyone",
      severity=Severity.MEDIUM, roles=(Role.SUBMISSION,),
      parameters=("smtpd_sender_restrictions", "smtpd_sender_login_maps"),
      rationale="Without a sender/login match, one stolen password lets the thief send as "
                "every address of the domain.",
      fix="Set smtpd_sender_login_maps and add reject_sender_login_mismatch (or "
          "reject_authenticated_sender_login_mismatch) to the service's sender restrictions.",
      references=("SASL_README Envelope sender address authorization",
                  f"{P5} smtpd_sender_login_maps"))
def sender_mismatch(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        used = any(r.name in LOGIN_MISMATCH
                   for name in (*EARLY, RELAY, RECIPIENT) for r in expand(ctx, name, svc))
        if used and ctx.value("smtpd_sender_login_maps", svc):
            continue
        why = ("smtpd_sender_login_maps is empty" if used
               else "no reject_sender_login_mismatch in its restrictions")
        yield Hit(f"{svc.key}: {why}", parameter="smtpd_sender_restrictions",
                  service=svc.key)


@rule(id="SASL-006", title="Submission port accepts mail without authentication",
      severity=Severity.HIGH, roles=(Role.SUBMISSION,),
      parameters=("smtpd_client_restrictions", RELAY, RECIPIENT),
      rationale="When no list of the submission service ends in a reject for clients "
                "that did not log in, port 587/465 is a second MX without the MX's filters.",
      fix="-o smtpd_relay_restrictions=permit_sasl_authenticated,reject and "
          "-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject on the "
          "submission service.",
      references=("SASL_README", "RFC 8314 section 3.3", "RFC 6409 section 4"),
      remedy=chain(service_setting(RELAY, AUTHENTICATED_ONLY),
                   service_setting(RECIPIENT, AUTHENTICATED_ONLY)))

def submission_open(ctx: Context) -> Iterator[Hit]:
    for svc in submission_ports(ctx):
        if not requires_auth(ctx, svc):
            yield Hit(f"{svc.key}: no restriction list refuses clients that did not "
                      f"authenticate ({RECIPIENT} = {ctx.value(RECIPIENT, svc) or '(empty)'})",
                      parameter=RECIPIENT, service=svc.key)


def _queue_path(ctx: Context, path: str) -> list[str]:
    """smtpd_sasl_path as smtpd opens it: relative names from queue_directory; absolute
    names as given, or inside queue_directory when smtpd is chrooted."""
    queue = ctx.value("queue_directory").rstrip("/")
    if path.startswith("/"):
        return [path, f"{queue}{path}"]
    return [f"{queue}/{path}"]


@rule(id="SASL-007", title="Dovecot auth socket missing",
      severity=Severity.HIGH, roles=(Role.SUBMISSION,), parameters=("smtpd_sasl_path",),
      rationale="smtpd connects to the socket per session; when it is absent every "
                "connection ends in 'fatal: no SASL authentication mechanisms' and master "
                "throttles the service.",
      fix="Define the Dovecot unix_listener at queue_directory/private/auth (user postfix, "
          "mode 0660) and point smtpd_sasl_path at private/auth.",
      references=("SASL_README Postfix to Dovecot SASL communication",))
def dovecot_socket(ctx: Context) -> Iterator[Hit]:
    done = set()
    for svc in sasl_services(ctx):
        if ctx.value("smtpd_sasl_type", svc) != "dovecot":
            continue
        path = ctx.value("smtpd_sasl_path", svc)
        if not path or path.startswith("inet:") or path in done:
            continue  # XXX: an inet endpoint needs a connect test, which audit never does
        done.add(path)
        candidates = _queue_path(ctx, path.removeprefix("unix:"))
        if not any(ctx.file(p).exists for p in candidates):
            yield Hit(f"{svc.key}: smtpd_sasl_path = {path}; {candidates[-1]} does not exist",
                      parameter="smtpd_sasl_path", service=svc.key)


@rule(id="SASL-008", title="smtpd_sasl_local_domain set with Dovecot",
      severity=Severity.INFO, roles=(Role.SUBMISSION,),
      parameters=("smtpd_sasl_local_domain",),
      rationale="Postfix's Dovecot client only logs the realm, so the setting does nothing; "
                "switched to Cyrus it would append a realm to login names.",
      fix="Remove smtpd_sasl_local_domain.", references=("SASL_README",),
      remedy=_drop_local_domain)

def local_domain(ctx: Context) -> Iterator[Hit]:
    if ctx.value("smtpd_sasl_type") == "dovecot" and ctx.value("smtpd_sasl_local_domain"):
        yield Hit(f"smtpd_sasl_local_domain = {ctx.value('smtpd_sasl_local_domain')} with "
                  "smtpd_sasl_type = dovecot", parameter="smtpd_sasl_local_domain")


@rule(id="SASL-009", title="Legacy AUTH= advertisement",
      severity=Severity.LOW, roles=(Role.SUBMISSION,),
      parameters=("broken_sasl_auth_clients",),
      rationale="The second, non-standard AUTH= line exists for Outlook Express 4 and "
                "Exchange 5; today it only advertises more than needed.",
      fix="Remove broken_sasl_auth_clients (the default is no).",
      references=(f"{P5} broken_sasl_auth_clients",),
      remedy=unset("broken_sasl_auth_clients"))

def broken_clients(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        if ctx.yes("broken_sasl_auth_clients", svc):
            yield Hit(f"{svc.key}: broken_sasl_auth_clients = yes",
                      parameter="broken_sasl_auth_clients", service=svc.key)


@rule(id="SASL-010", title="Relay host password sent without required TLS",
      severity=Severity.HIGH, roles=(Role.NULL_CLIENT, Role.RELAY),
      parameters=("smtp_sasl_auth_enable", "smtp_tls_security_level",
                  "smtp_sasl_security_options"),
      rationale="With opportunistic TLS and plaintext mechanisms allowed, anyone on the path "
                "can strip STARTTLS and read the password the SMTP client sends.",
      fix="smtp_tls_security_level = encrypt (or a policy entry for the relay host) and "
          "smtp_sasl_tls_security_options = noanonymous.",
      references=("SASL_README Enabling SASL authentication in the Postfix SMTP client",
                  "RFC 4954 section 4"))
def client_password_in_clear(ctx: Context) -> Iterator[Hit]:
    svc = ctx.service("smtp", "unix")
    if not ctx.yes("smtp_sasl_auth_enable", svc):
        return
    level = ctx.value("smtp_tls_security_level", svc)
    if (level in MANDATORY_TLS or ctx.value("smtp_tls_policy_maps", svc)
            or "noplaintext" in ctx.words("smtp_sasl_security_options", svc)):
        return
    yield Hit(f"smtp_sasl_auth_enable = yes, smtp_tls_security_level = {level or '(none)'}, "
              f"smtp_sasl_security_options = "
              f"{ctx.value('smtp_sasl_security_options', svc) or '(empty)'}",
              parameter="smtp_tls_security_level")


@rule(id="SASL-011", title="Relay host password table readable by others",
      severity=Severity.HIGH, parameters=("smtp_sasl_password_maps",),
      rationale="The table holds plaintext credentials; SASL_README asks for a file "
                "readable and writable by root only (the SMTP client opens it before "
                "dropping privileges).",
      fix="chown root:root and chmod 0600 the table and its indexed file.",
      references=("SASL_README Enabling SASL authentication in the Postfix SMTP client",))
def password_map_mode(ctx: Context) -> Iterator[Hit]:
    for table in ctx.words("smtp_sasl_password_maps"):
        path = ctx.table_path(table)
        if path is None:
            continue
        for suffix in INDEXED:
            facts = ctx.file(path + suffix)
            if not facts.exists or (facts.uid == 0 and not facts.mode & 0o077):
                continue
            yield Hit(f"{facts.path}: owner uid {facts.uid}, mode {facts.mode:04o}",
                      parameter="smtp_sasl_password_maps")


@rule(id="SASL-012", title="Login name written into Received headers",
      severity=Severity.LOW, roles=(Role.SUBMISSION,),
      parameters=("smtpd_sasl_authenticated_header",),
      rationale="Every recipient learns the account name the sender logged in with, which "
                "helps password guessing.",
      fix="smtpd_sasl_authenticated_header = no (the default), unless a filter needs it.",
      references=(f"{P5} smtpd_sasl_authenticated_header",))
def login_in_header(ctx: Context) -> Iterator[Hit]:
    for svc in sasl_services(ctx):
        if ctx.yes("smtpd_sasl_authenticated_header", svc):
            yield Hit(f"{svc.key}: smtpd_sasl_authenticated_header = yes",
                      parameter="smtpd_sasl_authenticated_header", service=svc.key)
