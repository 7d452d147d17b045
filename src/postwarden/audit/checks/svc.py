"""SVC: master.cf services, how each daemon runs and what a service override turns off.

Security: reads the parsed configuration; SVC-004 also reads (bounded, through
``Context.read``) the copies of resolv.conf, hosts, services and localtime inside the
chroot jail and their originals in /etc, to compare them.
Standards: master(5) (the unpriv and chroot columns, -o overrides); COMPATIBILITY_README
(chroot default); postconf(5) qmqpd_authorized_clients, smtpd_tls_security_level;
pipe(8) and spawn(8) (user=); Postfix ``conf/postfix-script`` (check-warn on the jail);
RFC 8314 and RFC 6409 (submission ports).

Duplicate master.cf entries are CFG-007's; this module does not repeat them.
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.checks.net import Breadth, breadth, list_words
from postwarden.audit.checks.sasl import SUBMISSION_PORTS, requires_auth
from postwarden.audit.context import Context, parse_version
from postwarden.audit.fixes import Change, Inputs, Needs, Op, Outcome
from postwarden.audit.model import Hit, Role, Severity, rule

P5 = "postconf(5)"
NETWORK_DAEMONS = ("smtpd", "postscreen", "smtp", "lmtp", "tlsproxy", "dnsblog", "qmqpd")
JAIL_FILES = ("etc/resolv.conf", "etc/hosts", "etc/services", "etc/localtime")
CLEARED = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
           "smtpd_sender_restrictions", "smtpd_relay_restrictions",
           "smtpd_recipient_restrictions", "smtpd_data_restrictions", "smtpd_milters")


# The path smtpd_sasl_path names per SASL type: Dovecot's listener inside the queue
# directory (SASL_README), Cyrus's application name (smtpd.conf).
SASL_PATHS = {"dovecot": "private/auth", "cyrus": "smtpd"}
SUBMISSION_SERVICES = (("submission", 587), ("submissions", 465))


def _add_submission(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """The submission (587) and submissions (465) services, with SASL when the operator
    names a backend. The other rules complete them: TLS-003 enforces TLS, SASL-006 refuses
    clients that did not log in, MILT-006 marks their mail as originating."""
    if inputs.sasl is not None:
        yield Change(Op.SET, "smtpd_sasl_type", inputs.sasl)
        yield Change(Op.SET, "smtpd_sasl_path", SASL_PATHS[inputs.sasl])
    ports = {ctx.port(s) for s in ctx.public_smtpd_services()}
    smtp = ctx.service("smtp")
    chroot = smtp.chroot if smtp is not None else "-"
    for name, port in SUBMISSION_SERVICES:
        if port in ports or ctx.service(name) is not None:
            continue
        lines = [f"{name} inet n       -       {chroot}       -       -       smtpd",
                 f"  -o syslog_name=postfix/{name}"]
        if inputs.sasl is not None:
            lines.append("  -o smtpd_sasl_auth_enable=yes")
        yield Change(Op.SERVICE, f"{name}/inet", "\n".join(lines) + "\n")
    existing = [s for s in ctx.public_smtpd_services()
                if s.process_name == "smtpd" and ctx.port(s) in SUBMISSION_PORTS]
    if inputs.sasl is not None:
        for svc in existing:
            if not ctx.yes("smtpd_sasl_auth_enable", svc):
                yield Change(Op.SET, "smtpd_sasl_auth_enable", "yes", svc.key)
    elif not any(ctx.yes("smtpd_sasl_auth_enable", s) for s in existing):
        yield Needs("sasl", "smtpd_sasl_auth_enable on the submission services")


@rule(id="SVC-001", title="No dedicated submission service",
      severity=Severity.MEDIUM, roles=(Role.SUBMISSION,),
      parameters=("smtpd_sasl_auth_enable",),
      rationale="Without a service on 587 (STARTTLS) or 465 (implicit TLS) users log in on "
                "port 25, which many networks block and where the MX's spam checks get in "
                "their way (RFC 8314 section 3.3, RFC 6409).",
      fix="Enable the submission service (-o smtpd_tls_security_level=encrypt) and/or "
          "submissions (-o smtpd_tls_wrappermode=yes) in master.cf, with "
          "-o smtpd_sasl_auth_enable=yes and the SASL backend in smtpd_sasl_type and "
          "smtpd_sasl_path (harden --sasl dovecot|cyrus).",
      references=("RFC 8314 section 3.3", "RFC 6409", "SASL_README"),
      remedy=_add_submission, takes=("sasl",))
def no_submission(ctx: Context) -> Iterator[Hit]:
    public = ctx.public_smtpd_services()
    if any(ctx.port(s) in SUBMISSION_PORTS for s in public):
        return
    sasl = [s for s in public if ctx.yes("smtpd_sasl_auth_enable", s)]
    if sasl:
        yield Hit(f"SASL is enabled on {', '.join(s.key for s in sasl)} but no service "
                  "listens on 587 or 465", parameter="smtpd_sasl_auth_enable",
                  service=sasl[0].key)
    else:
        yield Hit("no public smtpd service listens on 587 or 465",
                  parameter="smtpd_sasl_auth_enable")


@rule(id="SVC-002", title="Network daemon runs with root privileges",
      severity=Severity.HIGH,
      rationale="The unpriv column 'n' keeps a daemon that talks to the network as root, so "
                "one memory-safety bug in it is a root compromise (master(5)).",
      fix="Set the unpriv column of the service to '-'.", references=("master(5)",))
def privileged(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.services:
        if svc.process_name in NETWORK_DAEMONS and svc.unpriv == "n":
            yield Hit(f"{svc.key}: {svc.process_name} with unpriv = n", service=svc.key)


def _level(ctx: Context) -> tuple[int, ...]:
    return parse_version(ctx.value("compatibility_level")) or (0,)


@rule(id="SVC-003", title="Public smtpd not chrooted",
      severity=Severity.INFO, roles=(Role.MX, Role.SUBMISSION),
      rationale="A chroot jail limits what a compromised smtpd can read; it is defence in "
                "depth only (upstream ships chroot off, Debian on) and needs the jail's "
                "files kept current.",
      fix="Optionally set the chroot column to 'y' and keep the jail up to date.",
      references=("master(5)", "COMPATIBILITY_README chroot"))
def not_chrooted(ctx: Context) -> Iterator[Hit]:
    dash_means_no = _level(ctx) >= (1,)  # COMPATIBILITY_README: '-' is 'y' below level 1
    for svc in ctx.public_smtpd_services():
        if svc.chroot == "n" or (svc.chroot == "-" and dash_means_no):
            yield Hit(f"{svc.key}: chroot = {svc.chroot}", service=svc.key)


def _chrooted(ctx: Context) -> bool:
    dash_means_yes = _level(ctx) < (1,)
    return any(s.chroot == "y" or (s.chroot == "-" and dash_means_yes) for s in ctx.services)


@rule(id="SVC-004", title="Chroot jail copies differ from /etc",
      severity=Severity.LOW, parameters=("queue_directory",),
      rationale="Chrooted daemons read resolv.conf, hosts, services and localtime from the "
                "jail; stale copies mean wrong DNS servers, host names or times there.",
      fix="Copy the files into the jail again (Debian's init script does this on start).",
      references=("Postfix conf/postfix-script check-warn",))
def jail_stale(ctx: Context) -> Iterator[Hit]:
    if not _chrooted(ctx):
        return
    queue = ctx.value("queue_directory").rstrip("/")
    for name in JAIL_FILES:
        jail = ctx.read(f"{queue}/{name}")
        host = ctx.read(f"/{name}")
        if jail is not None and host is not None and jail != host:
            yield Hit(f"{queue}/{name} and /{name} differ", parameter="queue_directory")


def _runs_as_root(args: tuple[str, ...]) -> str | None:
    for arg in args:
        if arg.startswith("user="):
            user = arg.removeprefix("user=").split(":", 1)[0]
            if user in ("root", "0"):
                return arg
    return None


@rule(id="SVC-005", title="pipe or spawn service runs as root",
      severity=Severity.HIGH,
      rationale="Postfix refuses user=root for pipe and spawn (a fatal error at delivery), "
                "and the intent, running an external command as root on mail input, is "
                "the real danger.",
      fix="Run the command as a dedicated unprivileged user (user=name).",
      references=("pipe(8)", "spawn(8)", "Postfix pipe/pipe.c"))
def pipe_root(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.services:
        if svc.process_name in ("pipe", "spawn"):
            found = _runs_as_root(svc.args)
            if found:
                yield Hit(f"{svc.key}: {svc.process_name} {found}", service=svc.key)


@rule(id="SVC-006", title="QMQP server open to broad networks",
      severity=Severity.HIGH, parameters=("qmqpd_authorized_clients",),
      rationale="The QMQP server relays mail to any destination for the clients it "
                "authorises; broad or public entries make it an open relay.",
      fix="List only the hosts that submit by QMQP, or remove the qmqpd service.",
      references=(f"{P5} qmqpd_authorized_clients", "QMQP_README"))
def qmqp_open(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.services:
        if svc.process_name != "qmqpd":
            continue
        wide = [w for w in list_words(ctx, "qmqpd_authorized_clients", svc)
                if breadth(w) in (Breadth.EVERYTHING, Breadth.BROAD, Breadth.NEIGHBOURS)]
        if wide:
            yield Hit(f"{svc.key}: qmqpd_authorized_clients includes {', '.join(wide)}",
                      parameter="qmqpd_authorized_clients", service=svc.key)


def _drop_override(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Remove the -o that turns TLS off: the service then uses main.cf's TLS settings."""
    if hit.parameter and hit.service:
        yield Change(Op.UNSET, hit.parameter, "", hit.service)


@rule(id="SVC-007", title="Service override switches TLS off",
      severity=Severity.HIGH, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_tls_security_level",),
      rationale="An -o override that turns TLS off makes that port plaintext only, "
                "whatever main.cf says.",
      fix="Remove the override (submission: -o smtpd_tls_security_level=encrypt).",
      references=("master(5)", f"{P5} smtpd_tls_security_level", "RFC 3207"),
      remedy=_drop_override)
def tls_off(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.public_smtpd_services():
        overrides = svc.overrides()
        level = overrides.get("smtpd_tls_security_level")
        if level is not None and level.strip() in ("", "none"):
            yield Hit(f"{svc.key}: -o smtpd_tls_security_level={level}",
                      parameter="smtpd_tls_security_level", service=svc.key)
        elif level is None and overrides.get("smtpd_use_tls", "").strip() == "no":
            yield Hit(f"{svc.key}: -o smtpd_use_tls=no", parameter="smtpd_use_tls",
                      service=svc.key)


@rule(id="SVC-008", title="Public service clears its restrictions without requiring login",
      severity=Severity.MEDIUM, parameters=CLEARED,
      rationale="Emptying restriction lists or milters with -o is the submission idiom; "
                "on a port that does not demand authentication it is an unfiltered way in.",
      fix="Bind the service to loopback or an internal address, or require authentication "
          "(-o smtpd_recipient_restrictions=permit_sasl_authenticated,reject).",
      references=("master(5)", "SMTPD_ACCESS_README"))
def cleared(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.public_smtpd_services():
        if svc.process_name != "smtpd":
            continue
        empty = [n for n, v in svc.overrides().items() if n in CLEARED and not v.strip()]
        if empty and not requires_auth(ctx, svc):
            yield Hit(f"{svc.key} clears {', '.join(empty)} and accepts clients that did "
                      "not log in", parameter=empty[0], service=svc.key)
