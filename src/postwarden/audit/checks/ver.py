"""VER: whether the installed Postfix release still gets, and has, its security fixes.

Security: reads mail_version (a read-only parameter; main.cf may shadow it) only.
Standards: postconf(5) mail_version; www.postfix.org/smtp-smuggling.html (CVE-2023-51764);
the Postfix stable-release announcements (each x.y.0 ends support for the branch four
minor releases older, e.g. 3.6.0 ended 3.2).

Theory of operation
-------------------
A version is major.minor.patch; snapshots (3.8-20230213) have no patch level and are only
judged by branch. ``FIXES`` holds, per stable branch, the first patch level with a fix and
the reason; ``LAST_UNSUPPORTED`` is the newest branch whose support has ended. Both tables
are data with a date: update them when Postfix announces a release.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from postwarden.audit.context import Context
from postwarden.audit.model import Hit, Severity, rule

SMUG = "https://www.postfix.org/smtp-smuggling.html"
VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
SMUGGLING = ("CVE-2023-51764 SMTP smuggling: no smtpd_forbid_bare_newline "
             "(spoofed messages pass SPF/DMARC checks)")


@dataclass(frozen=True)
class Fix:
    branch: tuple[int, int]
    patch: int      # first patch level of the branch that has the fix
    reason: str


# As of 2024-01 (postfix.org announcements of 2023-12-22 and 2024-01-22).
FIXES = (
    Fix((3, 8), 4, SMUGGLING),
    Fix((3, 7), 9, SMUGGLING),
    Fix((3, 6), 13, SMUGGLING),
    Fix((3, 5), 23, SMUGGLING),
)
# 3.10.0 (2025) ended support for 3.6, the newest branch known here to be unsupported.
# XXX: by the four-branch pattern 3.11.0 ends 3.7; move this to (3, 7) once that release
# is confirmed, since it makes the default 3.7.11 of the golden tests fire.
LAST_UNSUPPORTED = (3, 6)


def _version(text: str) -> tuple[tuple[int, int], int | None] | None:
    found = VERSION.match(text.strip())
    if found is None:
        return None
    patch = int(found[3]) if found[3] is not None else None
    return (int(found[1]), int(found[2])), patch


@rule(id="VER-001", title="Postfix release lacks known security fixes",
      severity=Severity.HIGH, parameters=("mail_version",),
      rationale="Patch levels below the fix of their branch are exposed to published "
                "attacks; SMTP smuggling (CVE-2023-51764) lets anyone send mail that passes "
                "SPF and DMARC as the domains this server handles.",
      fix="Upgrade to the latest patch level of the branch (distribution security updates "
          "carry the fix).",
      references=(SMUG, "postconf(5) mail_version", "postconf(5) smtpd_forbid_bare_newline"))
def missing_fixes(ctx: Context) -> Iterator[Hit]:
    text = ctx.value("mail_version")
    parsed = _version(text)
    if parsed is None:
        return
    branch, patch = parsed
    if patch is None:
        return
    for fix in FIXES:
        if fix.branch == branch and patch < fix.patch:
            yield Hit(f"mail_version = {text}; {fix.reason} is fixed in "
                      f"{branch[0]}.{branch[1]}.{fix.patch}", parameter="mail_version")


@rule(id="VER-002", title="Postfix release branch no longer supported",
      severity=Severity.MEDIUM, parameters=("mail_version",),
      rationale="Postfix supports a stable branch for about four years; after that no "
                "security fixes are published for it, so future vulnerabilities stay open.",
      fix="Upgrade to a supported stable branch (or a distribution release that backports "
          "fixes to this one).",
      references=("postfix.org stable release announcements", "postconf(5) mail_version"))
def unsupported(ctx: Context) -> Iterator[Hit]:
    text = ctx.value("mail_version")
    parsed = _version(text)
    if parsed is not None and parsed[0] <= LAST_UNSUPPORTED:
        yield Hit(f"mail_version = {text}; the {parsed[0][0]}.{parsed[0][1]} branch gets "
                  "no more fixes", parameter="mail_version")
