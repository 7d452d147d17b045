"""LEAK: what the SMTP greeting and submitted headers tell strangers about the system.

Security: reads the parsed configuration only.
Standards: postconf(5) smtpd_banner ("You MUST specify $myhostname at the start of the
text"), postscreen_greet_banner, cleanup_service_name, header_checks; RFC 5321 4.2 and
4.3.1 (the 220 greeting); RFC 5322 3.6.7 (Received trace fields).

Theory of operation
-------------------
Banners are judged twice: on the raw text (``$mail_name``, ``$mail_version``) and on the
expanded text with the host name removed (literal product, OS and version words). A banner
a service overrides with ``-o`` is reported on that service, one from main.cf once.
The remedy of LEAK-001 to LEAK-003 is the banner postconf(5) asks for, ``$myhostname
ESMTP``, where the finding points; postscreen_greet_banner goes back to its default,
``$smtpd_banner``. LEAK-004 needs a header_checks table only the operator can write.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
BANNERS = ("smtpd_banner", "postscreen_greet_banner")
PRODUCT_WORDS = re.compile(
    r"\b(postfix|debian|ubuntu|gnu|linux|centos|red ?hat|rhel|fedora|rocky|alma(linux)?|"
    r"suse|alpine|freebsd|openbsd|netbsd|gentoo|arch|raspbian|windows)\b", re.IGNORECASE)
VERSION = re.compile(r"(?<![\w.])v?[0-9]+\.[0-9]+(\.[0-9]+)?(?![\w.])")
HOSTNAME_REFS = ("$myhostname", "${myhostname}", "$(myhostname)")
PLAIN_BANNER = "$myhostname ESMTP"  # postconf(5) smtpd_banner, less $mail_name


def _banners(ctx: Context) -> Iterator[tuple[str, Service, str | None]]:
    """(banner name, service, service key to report) for each public service's banners."""
    seen: set[tuple[str, str | None]] = set()
    services = ctx.mx_services() + ctx.submission_services()
    for service in services:
        names = BANNERS if service.process_name == "postscreen" else BANNERS[:1]
        for name in names:
            key = service.key if ctx.overridden(name, service) else None
            if (name, key) not in seen:
                seen.add((name, key))
                yield name, service, key


def _visible(ctx: Context, name: str, service: Service) -> str:
    """The expanded banner with the host name taken out."""
    text = ctx.value(name, service)
    host = ctx.value("myhostname", service)
    return text.replace(host, " ") if host else text


def _refers(ctx: Context, name: str, service: Service, parameter: str) -> bool:
    raw = ctx.raw(name, service) or ""
    return any(ref in raw for ref in (f"${parameter}", f"${{{parameter}}}",
                                      f"$({parameter})"))


def _plain_banner(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """The hit's service is set only when it overrides the banner (``_banners``)."""
    if hit.parameter == "smtpd_banner":
        yield Change(Op.SET, "smtpd_banner", PLAIN_BANNER, hit.service)
    elif hit.parameter == "postscreen_greet_banner":
        yield Change(Op.UNSET, "postscreen_greet_banner", "", hit.service)


@rule(id="LEAK-001", title="Greeting names the software or operating system",
      severity=Severity.LOW, roles=(Role.MX, Role.SUBMISSION), parameters=BANNERS,
      rationale="The 220 greeting is shown to every client before any check; naming Postfix "
                "or the distribution only helps an attacker choose exploits.",
      fix="smtpd_banner = $myhostname ESMTP",
      references=(f"{P5} smtpd_banner", "RFC 5321 4.3.1"),
      remedy=_plain_banner)

def banner_product(ctx: Context) -> Iterator[Hit]:
    for name, service, key in _banners(ctx):
        words = PRODUCT_WORDS.findall(_visible(ctx, name, service))
        if _refers(ctx, name, service, "mail_name") or words:
            yield Hit(f"{name} = {ctx.raw(name, service)} (shown as "
                      f"'{ctx.value(name, service)}')", parameter=name, service=key)


@rule(id="LEAK-002", title="Greeting shows a version number",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.SUBMISSION), parameters=BANNERS,
      rationale="A version in the greeting tells scanners exactly which known "
                "vulnerabilities to try.",
      fix="Remove $mail_version and any version text from the banner: smtpd_banner = "
          "$myhostname ESMTP.",
      references=(f"{P5} smtpd_banner", f"{P5} mail_version"),
      remedy=_plain_banner)

def banner_version(ctx: Context) -> Iterator[Hit]:
    for name, service, key in _banners(ctx):
        visible = _visible(ctx, name, service)
        if _refers(ctx, name, service, "mail_version") or VERSION.search(visible):
            yield Hit(f"{name} = {ctx.raw(name, service)} (shown as "
                      f"'{ctx.value(name, service)}')", parameter=name, service=key)


@rule(id="LEAK-003", title="Greeting does not start with the host name",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.SUBMISSION),
      parameters=("smtpd_banner",),
      rationale="postconf(5) requires $myhostname at the start of smtpd_banner and RFC 5321 "
                "makes the server's name the first word of the 220 reply; clients and "
                "anti-spam checks compare it with the host's DNS name.",
      fix="Start smtpd_banner with $myhostname, e.g. smtpd_banner = $myhostname ESMTP",
      references=(f"{P5} smtpd_banner", "RFC 5321 4.3.1"),
      remedy=_plain_banner)

def banner_hostname(ctx: Context) -> Iterator[Hit]:
    for name, service, key in _banners(ctx):
        if name != "smtpd_banner":
            continue
        raw = (ctx.raw(name, service) or "").strip()
        host = ctx.value("myhostname", service)
        shown = ctx.value(name, service)
        if not (raw.startswith(HOSTNAME_REFS) or (host and shown.split()[:1] == [host])):
            yield Hit(f"smtpd_banner = {raw} does not begin with $myhostname",
                      parameter=name, service=key)


@rule(id="LEAK-004", title="Submission passes client details on to recipients",
      severity=Severity.LOW, roles=(Role.SUBMISSION,),
      parameters=("cleanup_service_name", "header_checks"),
      rationale="Mail submitted by a user carries a Received line with the client's IP "
                "address and often a User-Agent header; without a submission-only clean-up "
                "they reach every recipient and reveal where the user is.",
      fix="Give the submission service its own cleanup (-o cleanup_service_name=subcleanup) "
          "with header_checks that drop the client's Received and User-Agent headers, or a "
          "milter that does so.",
      references=(f"{P5} cleanup_service_name", f"{P5} header_checks", "RFC 5322 3.6.7"))
def submission_headers(ctx: Context) -> Iterator[Hit]:
    for service in ctx.submission_services():
        if not _cleans_headers(ctx, service):
            yield Hit(f"{service.key} has neither its own cleanup service with "
                      "header_checks nor its own milter", parameter="cleanup_service_name",
                      service=service.key)


def _cleans_headers(ctx: Context, service: Service) -> bool:
    if ctx.overridden("smtpd_milters", service) and ctx.words("smtpd_milters", service):
        return True
    if not ctx.overridden("cleanup_service_name", service):
        return False
    cleanup = ctx.service(ctx.value("cleanup_service_name", service), "unix")
    return (cleanup is not None and cleanup.process_name == "cleanup"
            and bool(ctx.words("header_checks", cleanup)))
