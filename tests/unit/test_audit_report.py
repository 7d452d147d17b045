"""Audit reports: JSON schema, SARIF 2.1.0 shape, text grouping, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from postwarden.audit.engine import Report, audit, catalogue
from postwarden.audit.model import Role, Severity
from postwarden.audit.report import to_json, to_sarif, to_text
from postwarden.postfix import defaults
from postwarden.postfix.config import PostfixConfig

MAIN = """\
compatibility_level = 3.6
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = check_policy_service unix:private/policyd-spf
smtpd_tls_auth_onyl = yes
"""
MASTER = "smtp inet n - y - - smtpd\n"


def make(tmp_path: Path) -> Path:
    (tmp_path / "main.cf").write_text(MAIN)
    (tmp_path / "master.cf").write_text(MASTER)
    return tmp_path


def report_for(tmp_path: Path) -> Report:
    config = PostfixConfig.load(make(tmp_path), table=defaults.shipped())
    return audit(config, frozenset({Role.MX}))


def test_json_schema(tmp_path: Path) -> None:
    data = json.loads(to_json(report_for(tmp_path)))
    assert set(data) >= {"postwarden_version", "config_directory", "roles", "score", "counts",
                         "findings", "rules_run"}
    assert data["roles"] == ["mx"]
    dup = next(f for f in data["findings"] if f["id"] == "CFG-001")
    assert set(dup) == {"id", "severity", "title", "parameter", "service", "file", "line",
                        "evidence", "fix", "references"}
    assert dup["severity"] == "high"
    assert dup["parameter"] == "smtpd_recipient_restrictions"
    assert dup["file"].endswith("main.cf") and dup["line"] == 3
    assert 0 <= data["score"] < 100


def test_sarif_shape(tmp_path: Path) -> None:
    data = json.loads(to_sarif(report_for(tmp_path)))
    assert data["version"] == "2.1.0"
    run = data["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == [r.id for r in catalogue()]
    result = next(r for r in run["results"] if r["ruleId"] == "CFG-001")
    assert result["level"] == "error"
    assert rules[result["ruleIndex"]]["id"] == "CFG-001"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("main.cf")
    assert location["region"]["startLine"] == 3
    assert result["message"]["text"]


def test_text_groups_by_severity(tmp_path: Path) -> None:
    text = to_text(report_for(tmp_path))
    assert text.index("HIGH (") < text.index("MEDIUM (")
    assert "CFG-001" in text and "main.cf:3" in text
    assert "fix:" in text
    assert text.splitlines()[-1].startswith("score ")


def test_severity_depends_on_role() -> None:
    by_role = [r for r in catalogue() if r.by_role]
    for rule in by_role:
        for role, severity in rule.by_role.items():
            assert rule.severity_for(frozenset({role})) is severity
    assert Severity.CRITICAL.rank < Severity.INFO.rank


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postwarden", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_exit_codes(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert run("audit", "-c", str(d), "--role", "mx").returncode == 1
    assert run("audit", "-c", str(d), "--role", "mx", "--fail-on", "critical").returncode == 0
    bad = run("audit", "-c", str(d), "--role", "gateway")
    assert bad.returncode == 2 and "unknown role" in bad.stderr
    missing = run("audit", "-c", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_cli_list_rules_json() -> None:
    result = run("audit", "--list-rules", "--format", "json")
    assert result.returncode == 0
    rules = json.loads(result.stdout)
    assert {r["id"] for r in rules} == {r.id for r in catalogue()}
    assert all(r["rationale"] and r["fix"] and r["references"] for r in rules)


def test_score_formula() -> None:
    from postwarden.audit.engine import Report
    from postwarden.audit.model import Finding

    def finding(rule_id: str, severity: Severity) -> Finding:
        return Finding(rule_id, severity, "t", "e", "f", ())

    def score(*findings: Finding) -> int:
        return Report("d", frozenset(), (), tuple(findings), 1).score

    assert score() == 100
    assert score(finding("RELAY-002", Severity.CRITICAL)) == 75
    # One rule counts once, by its worst finding.
    assert score(finding("RELAY-002", Severity.CRITICAL),
                 finding("RELAY-002", Severity.HIGH)) == 75
    assert score(finding("A-1", Severity.CRITICAL), finding("B-1", Severity.CRITICAL)) == 56
    assert score(finding("A-1", Severity.INFO)) == 100
    assert score(finding("A-1", Severity.HIGH), finding("B-1", Severity.LOW)) == 89
