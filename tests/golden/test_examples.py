"""The bundled examples audit to exactly the findings pinned here.

The examples that start from Debian's own files are built from the installed package into a
temporary directory, as scripts/build_examples.py builds them. Findings that depend on the
host rather than on the configuration (file modes of the checkout and of the system, the
chroot's copies of /etc files) are left out of the comparison.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from postwarden.audit.engine import audit
from postwarden.audit.roles import parse_roles
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.debian import build

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"
HOST_DEPENDENT = ("PERM-", "SVC-004")

# Every mistake of the seed guide that Postfix acts on, as the audit names it:
GUIDE_MISTAKES = {
    "CFG-001",    # smtpd_recipient_restrictions three times, smtpd_milters twice: last wins
    "CFG-003",    # policyd-spf_time_limit without a policyd-spf service: unused
    "RESTR-001",  # the literal "..." placeholder: every RCPT answered 451
    "RESTR-002",  # postgrey / policyd-spf sockets that nothing serves: 451 for all mail
    "MILT-001",   # milter_default_action = accept: mail passes unsigned when a milter fails
    "MILT-002",   # milter_protocol = 2
    "MILT-003",   # absolute unix: milter socket a chrooted smtpd cannot reach
    "NET-002",    # loopback-only while configuring SASL and policy services
    "NET-008",    # myhostname never set: the machine's name is used
}

PINNED = {
    ("guide", "auto"): GUIDE_MISTAKES | {"CFG-002", "CFG-008", "TLS-019"},
    ("guide", "mx,submission"): GUIDE_MISTAKES | {
        "CFG-002", "CFG-008", "TLS-019", "OUT-003", "OUT-005", "RESTR-004", "SASL-008",
        "SVC-001"},
    ("guide-only", "auto"): GUIDE_MISTAKES | {"RELAY-001", "CFG-008", "TLS-019"},
    ("guide-only", "mx,submission"): GUIDE_MISTAKES | {
        "RELAY-001", "CFG-008", "TLS-019", "OUT-003", "OUT-005", "RESTR-004", "SASL-008",
        "SVC-001"},
    ("debian-default", "auto"): {
        "CFG-008", "NET-008", "LEAK-001", "MAUTH-001", "MAUTH-003", "OUT-003", "OUT-005", "PSC-001",
        "RATE-001", "RATE-002", "RATE-004", "RESTR-005", "RESTR-006", "RESTR-007",
        "RESTR-008", "RESTR-009", "RESTR-013", "TLS-006", "TLS-009", "TLS-010", "TLS-012",
        "TLS-019"},
    ("debian-internet-site", "auto"): {
        "CFG-008", "LEAK-001", "MAUTH-001", "MAUTH-003", "OUT-003", "OUT-005", "PSC-001",
        "RATE-001", "RATE-002", "RATE-004", "RESTR-005", "RESTR-006", "RESTR-007",
        "RESTR-008", "RESTR-009", "RESTR-013", "TLS-006", "TLS-009", "TLS-010", "TLS-012",
        "TLS-019"},
    ("weak", "auto"): {
        "CFG-008", "CFG-105", "LEAK-001", "LEAK-002", "LEAK-004", "MAUTH-001", "MAUTH-003",
        "MILT-001", "MILT-002", "MILT-003", "MILT-005", "MILT-006", "NET-003", "OUT-001",
        "OUT-003", "OUT-005", "PSC-001", "RATE-001", "RATE-002", "RELAY-001", "RELAY-002",
        "RELAY-003", "RELAY-008", "RESTR-005", "RESTR-006", "RESTR-007", "RESTR-008",
        "RESTR-009", "RESTR-012", "RESTR-013", "SASL-001", "SASL-002", "SASL-003",
        "SASL-004", "SASL-005", "SASL-006", "SASL-007", "TLS-001", "TLS-003"},
    ("hardened-mx", "auto"): {
        "CFG-008", "LEAK-004", "MAUTH-001", "MAUTH-002", "MAUTH-003", "MILT-004", "OUT-003",
        "OUT-005", "PSC-001", "RATE-004", "RESTR-002", "RESTR-008", "SASL-007", "TLS-009",
        "TLS-012", "TLS-019"},
}


@pytest.mark.parametrize(("example", "role"), sorted(PINNED), ids=lambda v: str(v))
def test_example_findings_are_pinned(example: str, role: str, tmp_path: Path) -> None:
    target = tmp_path / example
    shutil.copytree(EXAMPLES / example, target, symlinks=False)
    build(EXAMPLES / example, target)
    report = audit(PostfixConfig.load(target), parse_roles(role))
    found = {f.id for f in report.findings if not f.id.startswith(HOST_DEPENDENT)}
    expected = PINNED[(example, role)]
    assert found == expected, (
        f"unexpected: {sorted(found - expected)}; missing: {sorted(expected - found)}")


def test_weak_scores_lowest_and_hardened_has_no_config_flaws(tmp_path: Path) -> None:
    scores = {}
    for example in ("weak", "hardened-mx"):
        target = tmp_path / example
        shutil.copytree(EXAMPLES / example, target, symlinks=False)
        build(EXAMPLES / example, target)
        scores[example] = audit(PostfixConfig.load(target))
    weak = scores["weak"]
    assert sum(1 for f in weak.findings if f.severity.value == "critical") >= 5
    assert weak.score < 10
    # The hardened example's critical and high findings are all about files and sockets
    # this machine does not have (its certificate, Dovecot, the milter), never its settings.
    hardened = [f for f in scores["hardened-mx"].findings
                if f.severity.value in ("critical", "high")]
    assert {f.id for f in hardened} <= {"TLS-012", "SASL-007", "MILT-004", "RESTR-002",
                                        "PERM-004"}
