"""Probe results: what one behavioural check of a live server saw, and what it means.

Security: records only. Evidence lines are transcript lines as the server sent them
(clipped by the transcript); they are shown, never interpreted again.
Standards: the report contract of DESIGN.md (id, title, verdict, severity, evidence).

Theory of operation
-------------------
A ``Verdict`` says how the server behaved: ``pass`` (it refused what it should refuse),
``fail`` (it accepted what it should not), ``warn`` (accepted, but acceptable in some
setups) or ``not-testable`` (the probe could not observe it honestly, with the reason: a
trusted vantage point, a port that does not answer). A ``not-testable`` is never counted as
a pass or a fail. Severity is the check's, as in the audit, and can depend on the port.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postwarden.audit.model import Severity


class Verdict(enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict word, not a password
    FAIL = "fail"
    WARN = "warn"
    NOT_TESTABLE = "not-testable"


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    verdict: Verdict
    severity: Severity
    summary: str
    evidence: tuple[str, ...] = ()
    port: int | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "title": self.title, "verdict": self.verdict.value,
                "severity": self.severity.value, "port": self.port,
                "summary": self.summary, "evidence": list(self.evidence)}
