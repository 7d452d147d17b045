"""CFG: configuration integrity, what Postfix reads differently from what the admin wrote.

Security: reads the parsed configuration only.
Standards: postconf(5) "main.cf file format"; postconf(1) warnings; Postfix 3.7
``util/dict.c`` (last definition wins), ``util/readlline.c``; COMPATIBILITY_README.
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.context import Context, parse_version
from postwarden.audit.fixes import Change, Inputs, Op, Outcome
from postwarden.audit.model import Hit, Severity, rule
from postwarden.postfix import check as config_check

P5 = "postconf(5)"

# Names whose silent loss (a duplicate, a typo) changes security, not just behaviour.
SECURITY_WORDS = ("restrictions", "milters", "tls", "sasl", "mynetworks", "inet_interfaces",
                  "relay", "smtpd_", "policy")


def _dedup(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Keep the definition Postfix uses (the last); the rules then judge its value."""
    if hit.parameter:
        yield Change(Op.DEDUP, hit.parameter)


def _config_findings(ctx: Context, finding_id: str) -> Iterator[config_check.Finding]:
    return (f for f in ctx.config_findings if f.id == finding_id)


@rule(id="CFG-001", title="Parameter defined more than once with different values",
      severity=Severity.MEDIUM,
      rationale="The last definition wins and Postfix warns only in postconf's output; the "
                "earlier lines, often the ones the admin meant, are silently ignored.",
      fix="Keep one definition with the intended value; delete the others (harden keeps "
          "the effective, last one).",
      references=(f"{P5} main.cf file format", "Postfix util/dict.c"), remedy=_dedup)
def duplicate_different(ctx: Context) -> Iterator[Hit]:
    for finding in _config_findings(ctx, "CFG-DUP"):
        name = finding.parameter or ""
        security = any(word in name for word in SECURITY_WORDS)
        yield Hit(finding.evidence, parameter=name,
                  severity=Severity.HIGH if security else None)


@rule(id="CFG-002", title="Parameter defined more than once with the same value",
      severity=Severity.INFO,
      rationale="Silent in Postfix, but a later edit of one copy is undone by the other.",
      fix="Delete all but one definition.", references=(f"{P5} main.cf file format",),
      remedy=_dedup)
def duplicate_same(ctx: Context) -> Iterator[Hit]:
    for finding in _config_findings(ctx, "CFG-DUP-SAME"):
        yield Hit(finding.evidence, parameter=finding.parameter)


@rule(id="CFG-003", title="Parameter that Postfix does not use",
      severity=Severity.MEDIUM,
      rationale="A misspelt name, or a service-dependent name without its master.cf service, "
                "is ignored: the setting the admin thinks is in force is not.",
      fix="Fix the name, or add the master.cf service it belongs to.",
      references=("postconf(1) unused parameter", f"{P5} service-defined parameters"))
def unused(ctx: Context) -> Iterator[Hit]:
    # Unknown master.cf -o names are CFG-101, which points at the -o line itself.
    for finding in _config_findings(ctx, "CFG-UNUSED"):
        if finding.file == ctx.main_path:
            yield Hit(f"{finding.evidence}. {finding.fix}", parameter=finding.parameter,
                      file=finding.file, line=finding.line)


@rule(id="CFG-004", title="Reference to a parameter defined nowhere",
      severity=Severity.MEDIUM,
      rationale="An undefined $name expands to nothing, which can empty a restriction list "
                "or a map list without any error.",
      fix="Define the parameter or correct the reference.",
      references=(f"{P5} main.cf file format",))
def undefined(ctx: Context) -> Iterator[Hit]:
    for finding in _config_findings(ctx, "CFG-UNDEF"):
        yield Hit(finding.evidence, parameter=finding.parameter, file=finding.file,
                  line=finding.line)


@rule(id="CFG-005", title="Value containing '#' after whitespace",
      severity=Severity.HIGH,
      rationale="'#' starts a comment only at the start of a line; after a value it is part "
                "of the value (in mynetworks, '#' and the words after it become list members).",
      fix="Move the comment to a line of its own.",
      references=(f"{P5} main.cf file format",))
def inline_comment(ctx: Context) -> Iterator[Hit]:
    for definition in ctx.config.main:
        text = " " + definition.value
        if " #" in text or "\t#" in text:
            yield Hit(f"{definition.name} = {definition.value}", parameter=definition.name)


@rule(id="CFG-006", title="Indented line with nothing to continue",
      severity=Severity.LOW,
      rationale="Postfix ignores a continuation line at the top of the file, with a warning.",
      fix="Remove the leading whitespace, or join the line to a definition.",
      references=("Postfix util/readlline.c",))
def orphan_line(ctx: Context) -> Iterator[Hit]:
    for finding in (f for f in ctx.config_findings if f.id in ("CFG-CONT", "SVC-CONT")):
        yield Hit(finding.evidence, file=finding.file, line=finding.line)


@rule(id="CFG-007", title="Duplicate master.cf service",
      severity=Severity.MEDIUM,
      rationale="postconf is silent; master(8) uses only the last entry of a name and type.",
      fix="Merge the entries into one.", references=("master(5)", "Postfix master_conf.c"))
def duplicate_service(ctx: Context) -> Iterator[Hit]:
    for finding in _config_findings(ctx, "SVC-DUP"):
        yield Hit(finding.evidence, file=finding.file, line=finding.line)


@rule(id="CFG-008", title="compatibility_level below the installed Postfix",
      severity=Severity.MEDIUM, parameters=("compatibility_level",),
      rationale="Below the running version Postfix keeps backwards-compatible defaults: an "
                "empty smtpd_relay_restrictions below level 1, mynetworks_style = subnet and "
                "relay_domains = $mydestination below 2.",
      fix="Review COMPATIBILITY_README, then set compatibility_level to the installed "
          "major.minor version.", references=("COMPATIBILITY_README",))
def compat_low(ctx: Context) -> Iterator[Hit]:
    level = parse_version(ctx.value("compatibility_level") or "0")
    version = parse_version(".".join(ctx.value("mail_version").split(".")[:2]))
    if level is not None and version is not None and level < version:
        shown = (ctx.value("compatibility_level") if ctx.explicit("compatibility_level")
                 else "unset (0)")
        yield Hit(f"compatibility_level = {shown}; Postfix is {ctx.value('mail_version')}",
                  parameter="compatibility_level")

