"""Run the rule catalogue over one configuration; score the result.

Security: rules are pure functions of the ``Context``; the engine only collects.
Standards: the report contract of DESIGN.md (findings and exit codes).

Score: 100 minus 25 per critical, 10 per high, 4 per medium and 1 per low finding, never
below 0; info findings cost nothing. A configuration with one open relay therefore scores
at most 75, and one with four critical findings scores 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from postwarden.audit import checks  # noqa: F401 - registers the rules
from postwarden.audit.context import Context
from postwarden.audit.model import RULES, Finding, Role, Rule, Severity
from postwarden.audit.roles import infer
from postwarden.postfix.config import PostfixConfig

WEIGHTS = {Severity.CRITICAL: 25, Severity.HIGH: 10, Severity.MEDIUM: 4, Severity.LOW: 1,
           Severity.INFO: 0}


@dataclass(frozen=True)
class Report:
    config_directory: str
    roles: frozenset[Role]
    role_reasons: tuple[str, ...]
    findings: tuple[Finding, ...]
    rules_run: int

    @property
    def score(self) -> int:
        return max(0, 100 - sum(WEIGHTS[f.severity] for f in self.findings))


def catalogue() -> list[Rule]:
    return [RULES[key] for key in sorted(RULES)]


def audit(config: PostfixConfig, roles: frozenset[Role] | None = None,
          rules: Iterable[Rule] | None = None) -> Report:
    """Every applicable rule's findings, most severe first, then by file and line."""
    ctx = Context(config, frozenset())
    reasons: list[str] = []
    if roles is None:
        roles, reasons = infer(ctx)
    else:
        reasons = ["given with --role"]
    ctx = Context(config, roles)
    findings: list[Finding] = []
    chosen = [r for r in (rules if rules is not None else catalogue()) if r.roles & roles]
    for rule in chosen:
        severity = rule.severity_for(roles)
        for hit in rule.check(ctx):
            service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
            file, line = (hit.file, hit.line) if hit.file else ctx.where(hit.parameter, service)
            findings.append(Finding(
                id=rule.id, severity=hit.severity or severity, title=rule.title,
                evidence=hit.evidence, fix=hit.fix or rule.fix, references=rule.references,
                parameter=hit.parameter, service=hit.service, file=file, line=line))
    findings.sort(key=lambda f: (f.severity.rank, f.id, f.file or "", f.line or 0))
    return Report(config.config_dir, roles, tuple(reasons), tuple(findings), len(chosen))
