"""Rules, findings and roles: the data of the audit.

Security: records only; no I/O.
Standards: severities and the finding fields of postwarden's report contract (DESIGN.md).

Theory of operation
-------------------
A ``Rule`` is a frozen record: a stable id (``TLS-003``), what it checks and why (with the
postconf(5), README or RFC clause it rests on), the fix, the roles it applies to and the
parameters it reads, plus ``check``: a small pure function from the audit ``Context`` to the
``Hit`` s it sees. The engine turns each hit into a ``Finding`` with the rule's words, the
role-dependent severity and the file and line of the parameter the hit names. ``remedy`` is
the fix again as changes ``postwarden harden`` can apply (``audit.fixes``); a rule without
one is left to the operator.

Rules register themselves with ``@rule(...)`` in the modules of ``audit.checks``; ``RULES``
is the catalogue, in id order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postwarden.audit.context import Context
    from postwarden.audit.fixes import Remedy


class Severity(enum.Enum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for critical ... 4 for info."""
        return list(Severity).index(self)


class Role(enum.Enum):
    MX = "mx"                    # receives mail from the internet on port 25
    SUBMISSION = "submission"    # authenticated clients on 587/465
    RELAY = "relay"              # relays for its own networks (smarthost)
    NULL_CLIENT = "null-client"  # sends only; no public SMTP service


ALL_ROLES = frozenset(Role)


@dataclass(frozen=True)
class Hit:
    """What a check saw. The engine fills in the rest from the rule."""

    evidence: str
    parameter: str | None = None
    service: str | None = None  # "submission/inet"; None for main.cf-wide
    file: str | None = None     # when the check knows better than the parameter's location
    line: int | None = None
    fix: str | None = None
    severity: Severity | None = None


Check = Callable[["Context"], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: Severity
    roles: frozenset[Role]
    parameters: tuple[str, ...]
    rationale: str
    fix: str
    references: tuple[str, ...]
    check: Check
    by_role: Mapping[Role, Severity] = field(default_factory=dict)
    remedy: Remedy | None = None  # the fix as changes, for harden (audit.fixes)
    takes: tuple[str, ...] = ()   # inputs the remedy consumes (audit.fixes.INPUT_KEYS)

    @property
    def category(self) -> str:
        return self.id.split("-", 1)[0]

    def severity_for(self, roles: frozenset[Role]) -> Severity:
        """The most severe of the role-specific severities that apply, else the default."""
        found = [self.by_role[r] for r in roles if r in self.by_role]
        return min(found, key=lambda s: s.rank) if found else self.severity


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    evidence: str
    fix: str
    references: tuple[str, ...]
    parameter: str | None = None
    service: str | None = None
    file: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "severity": self.severity.value, "title": self.title,
            "parameter": self.parameter, "service": self.service, "file": self.file,
            "line": self.line, "evidence": self.evidence, "fix": self.fix,
            "references": list(self.references),
        }


RULES: dict[str, Rule] = {}


def rule(*, id: str, title: str, severity: Severity, rationale: str, fix: str,
         references: Iterable[str], roles: Iterable[Role] = ALL_ROLES,
         parameters: Iterable[str] = (), by_role: Mapping[Role, Severity] | None = None,
         remedy: Remedy | None = None, takes: Iterable[str] = (),
         ) -> Callable[[Check], Check]:
    """Register the decorated check as a rule of the catalogue."""

    def register(check: Check) -> Check:
        if id in RULES:
            raise ValueError(f"duplicate rule id {id}")
        RULES[id] = Rule(id=id, title=title, severity=severity, roles=frozenset(roles),
                         parameters=tuple(parameters), rationale=rationale, fix=fix,
                         references=tuple(references), check=check,
                         by_role=dict(by_role or {}), remedy=remedy, takes=tuple(takes))
        return check

    return register
