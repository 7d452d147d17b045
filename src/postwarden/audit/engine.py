"""Run the rule catalogue over one configuration; score the result.

Security: rules are pure functions of the ``Context``; the engine only collects.
Standards: the report contract of DESIGN.md (findings and exit codes).

Score: each rule that reports something takes a share of what is left, by the most severe
of its findings: a quarter for critical, a tenth for high, 4% for medium, 1% for low,
nothing for info; score = round(100 x product of (1 - share)). A rule counts once however
many lines it points at, so one open relay scores at most 75, two critical rules at most 56,
and the score never reaches 0 while something could still be fixed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from postwarden.audit import checks  # noqa: F401 - registers the rules
from postwarden.audit.context import Context
from postwarden.audit.model import RULES, Finding, Hit, Role, Rule, Severity
from postwarden.audit.roles import infer
from postwarden.postfix.config import PostfixConfig

WEIGHTS = {Severity.CRITICAL: 0.25, Severity.HIGH: 0.10, Severity.MEDIUM: 0.04,
           Severity.LOW: 0.01, Severity.INFO: 0.0}


@dataclass(frozen=True)
class Report:
    config_directory: str
    roles: frozenset[Role]
    role_reasons: tuple[str, ...]
    findings: tuple[Finding, ...]
    rules_run: int

    @property
    def score(self) -> int:
        worst: dict[str, Severity] = {}
        for f in self.findings:
            if f.id not in worst or f.severity.rank < worst[f.id].rank:
                worst[f.id] = f.severity
        remaining = 100.0
        for severity in worst.values():
            remaining *= 1 - WEIGHTS[severity]
        return round(remaining)


def catalogue() -> list[Rule]:
    return [RULES[key] for key in sorted(RULES)]


def applicable(roles: frozenset[Role], rules: Iterable[Rule] | None = None) -> list[Rule]:
    return [r for r in (rules if rules is not None else catalogue()) if r.roles & roles]


def hits(ctx: Context, rules: Iterable[Rule]) -> Iterator[tuple[Rule, Hit]]:
    """Each rule's hits, in catalogue order (harden remedies them one by one)."""
    for rule in rules:
        for hit in rule.check(ctx):
            yield rule, hit


def finding(ctx: Context, rule: Rule, hit: Hit) -> Finding:
    service = ctx.service(*hit.service.split("/", 1)) if hit.service else None
    file, line = (hit.file, hit.line) if hit.file else ctx.where(hit.parameter, service)
    return Finding(
        id=rule.id, severity=hit.severity or rule.severity_for(ctx.roles), title=rule.title,
        evidence=hit.evidence, fix=hit.fix or rule.fix, references=rule.references,
        parameter=hit.parameter, service=hit.service, file=file, line=line)


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
    chosen = applicable(roles, rules)
    findings = [finding(ctx, rule, hit) for rule, hit in hits(ctx, chosen)]
    findings.sort(key=lambda f: (f.severity.rank, f.id, f.file or "", f.line or 0))
    return Report(config.config_dir, roles, tuple(reasons), tuple(findings), len(chosen))
