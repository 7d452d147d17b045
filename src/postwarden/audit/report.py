"""Audit reports: text for people, JSON for scripts, SARIF for code-scanning tools.

Security: output only. Evidence quotes configuration text, which may contain anything the
file contains; the text renderer prints it as plain text (rich markup is escaped).
Standards: SARIF 2.1.0 (OASIS, sarif-v2.1.0: ``runs[].tool.driver.rules``, ``results[]``
with ``ruleId``, ``level``, ``message.text``, ``locations[].physicalLocation``); the JSON
schema is documented in docs/audit.md.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from postwarden import __version__
from postwarden.audit.engine import Report, catalogue
from postwarden.audit.model import Finding, Rule, Severity

SARIF_LEVEL = {Severity.CRITICAL: "error", Severity.HIGH: "error", Severity.MEDIUM: "warning",
               Severity.LOW: "note", Severity.INFO: "note"}
# GitHub code scanning reads "security-severity" (0-10) to rank security alerts.
SECURITY_SEVERITY = {Severity.CRITICAL: "9.5", Severity.HIGH: "8.0", Severity.MEDIUM: "5.5",
                     Severity.LOW: "3.0", Severity.INFO: "1.0"}
INFORMATION_URI = "https://pypi.org/project/postwarden/"


def counts(report: Report) -> dict[str, int]:
    return {s.value: sum(1 for f in report.findings if f.severity is s) for s in Severity}


def to_json(report: Report) -> str:
    return json.dumps({
        "postwarden_version": __version__,
        "config_directory": report.config_directory,
        "roles": sorted(r.value for r in report.roles),
        "role_reasons": list(report.role_reasons),
        "score": report.score,
        "counts": counts(report),
        "rules_run": report.rules_run,
        "findings": [f.to_json() for f in report.findings],
    }, indent=2, ensure_ascii=False)


def _rule_json(rule: Rule) -> dict[str, object]:
    return {
        "id": rule.id, "category": rule.category, "title": rule.title,
        "severity": rule.severity.value,
        "severity_by_role": {r.value: s.value for r, s in rule.by_role.items()},
        "roles": sorted(r.value for r in rule.roles), "parameters": list(rule.parameters),
        "rationale": rule.rationale, "fix": rule.fix, "references": list(rule.references),
        "harden": rule.remedy is not None, "harden_inputs": list(rule.takes),
    }


def list_rules(fmt: str) -> str:
    rules = catalogue()
    if fmt == "json":
        return json.dumps([_rule_json(r) for r in rules], indent=2, ensure_ascii=False)
    lines = [f"{r.id:10} {r.severity.value:8} {','.join(sorted(x.value for x in r.roles)):38} "
             f"{'H' if r.remedy else ' '} {r.title}" for r in rules]
    fixed = sum(1 for r in rules if r.remedy)
    return "\n".join([*lines, f"{len(rules)} rules; {fixed} marked H are fixed by harden"])


def to_sarif(report: Report) -> str:
    rules = catalogue()
    index = {rule.id: position for position, rule in enumerate(rules)}
    driver = {
        "name": "postwarden", "version": __version__, "informationUri": INFORMATION_URI,
        "rules": [{
            "id": rule.id, "name": rule.title.title().replace(" ", ""),
            "shortDescription": {"text": rule.title},
            "fullDescription": {"text": rule.rationale},
            "help": {"text": f"{rule.fix}\nReferences: {'; '.join(rule.references)}"},
            "defaultConfiguration": {"level": SARIF_LEVEL[rule.severity]},
            "properties": {"tags": ["security", "postfix", rule.category.lower()],
                           "security-severity": SECURITY_SEVERITY[rule.severity]},
        } for rule in rules],
    }
    results = []
    for finding in report.findings:
        result: dict[str, object] = {
            "ruleId": finding.id, "ruleIndex": index[finding.id],
            "level": SARIF_LEVEL[finding.severity],
            "message": {"text": f"{finding.title}: {finding.evidence}. Fix: {finding.fix}"},
            "properties": {"severity": finding.severity.value,
                           "parameter": finding.parameter, "service": finding.service},
        }
        if finding.file is not None:
            location: dict[str, object] = {"artifactLocation": {"uri": _uri(finding.file)}}
            if finding.line is not None:
                location["region"] = {"startLine": finding.line}
            result["locations"] = [{"physicalLocation": location}]
        results.append(result)
    return json.dumps({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{"tool": {"driver": driver}, "results": results}],
    }, indent=2, ensure_ascii=False)


def _uri(path: str) -> str:
    """Relative paths stay relative (code scanning resolves them against the checkout)."""
    return Path(path).as_posix()


def _where(finding: Finding) -> str:
    if finding.file is None:
        return "-"
    return f"{finding.file}:{finding.line}" if finding.line is not None else finding.file


def to_text(report: Report, terminal: bool = False, width: int = 100) -> str:
    """Findings grouped by severity, each with where, evidence and fix; a summary at the end."""
    buffer = io.StringIO()
    # On a terminal the table fits the real window; elsewhere lines are not wrapped at all.
    columns = shutil.get_terminal_size((width, 24)).columns if terminal else width
    console = Console(file=buffer, force_terminal=terminal, width=columns,
                      no_color=not terminal, highlight=False, soft_wrap=not terminal)
    roles = ", ".join(sorted(r.value for r in report.roles))
    console.print(f"postwarden audit of {escape(report.config_directory)} as {roles}")
    for reason in report.role_reasons:
        console.print(f"  {escape(reason)}")
    for severity in Severity:
        found = [f for f in report.findings if f.severity is severity]
        if not found:
            continue
        console.print()
        console.print(f"{severity.value.upper()} ({len(found)})", style="bold")
        if terminal:
            table = Table(show_header=True, header_style="bold", expand=True)
            for column in ("id", "where", "finding", "fix"):
                table.add_column(column, overflow="fold")
            for f in found:
                table.add_row(f.id, escape(_where(f)), escape(f"{f.title}: {f.evidence}"),
                              escape(f.fix))
            console.print(table)
        else:
            for f in found:
                service = f" [{f.service}]" if f.service else ""
                console.print(f"  {f.id} {escape(_where(f))}{escape(service)}: "
                              f"{escape(f.title)}")
                console.print(f"      {escape(f.evidence)}")
                console.print(f"      fix: {escape(f.fix)}")
    console.print()
    summary = ", ".join(f"{n} {s}" for s, n in counts(report).items() if n)
    console.print(f"score {report.score}/100 ({summary or 'no findings'}; "
                  f"{report.rules_run} rules run)")
    return buffer.getvalue().rstrip("\n")
