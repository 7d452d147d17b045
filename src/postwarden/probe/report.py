"""The probe report as text or JSON (the schema of docs/probe.md).

Security: evidence is server text; it is printed as one line each, control characters
escaped, so a server cannot move the cursor or forge report lines.
Standards: DESIGN.md report contract.
"""

from __future__ import annotations

import json

from postwarden.errors import clip
from postwarden.probe.model import Verdict
from postwarden.probe.runner import ProbeReport

MARK = {Verdict.PASS: "pass", Verdict.FAIL: "FAIL", Verdict.WARN: "warn",
        Verdict.NOT_TESTABLE: "n/t "}


def to_text(report: ProbeReport) -> str:
    out = [f"postwarden probe {report.target}", f"greeting: {clip(report.greeting, 200)}",
           f"vantage: {report.vantage}", ""]
    for r in report.results:
        out.append(f"{MARK[r.verdict]:4}  {r.id:24} {r.severity.value:8} {r.summary}")
        if r.verdict in (Verdict.FAIL, Verdict.WARN):
            out += [f"        {clip(line, 200)}" for line in r.evidence]
    counts = {v: sum(1 for r in report.results if r.verdict is v) for v in Verdict}
    out += ["", ", ".join(f"{n} {v.value}" for v, n in counts.items())
            + f"; {report.seconds:.2f} s"]
    return "\n".join(out)


def to_json(report: ProbeReport) -> str:
    return json.dumps({"target": report.target, "greeting": report.greeting,
                       "vantage": report.vantage, "seconds": round(report.seconds, 3),
                       "checks": [r.to_json() for r in report.results]}, indent=2)
