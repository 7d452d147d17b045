"""Golden cases of the audit rules: each rule fires on one case and stays quiet on another.

The cases live in ``tests/golden/audit/*.toml``, one file per category, each case a small
configuration with the expectation beside it::

    [[case]]
    rule = "CFG-001"          # the rule the case is about
    fires = true              # whether that rule must report it
    role = "mx"               # optional: the roles to audit as (default: inferred)
    main = '''...'''          # main.cf
    master_append = '''...''' # optional: lines added to the shared master.cf
    master = '''...'''        # optional: a whole master.cf instead
    [case.files]              # optional: files the configuration names, written beside it
    "tls/key.pem" = "..."     # ("{dir}" in main/master is replaced by their directory)
    [case.modes]              # optional: file modes, e.g. "tls/key.pem" = 0o644

A meta-test fails when a rule has no case that fires or none that stays quiet.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from postwarden.audit.engine import audit, catalogue
from postwarden.audit.roles import parse_roles
from postwarden.postfix import defaults
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.host import HostFacts, Interface

HERE = Path(__file__).parent / "audit"
BASE_MASTER = (HERE / "master.cf").read_text()
FACTS = HostFacts("mx", (Interface(ipaddress.ip_address("127.0.0.1"), 8, True),
                         Interface(ipaddress.ip_address("198.51.100.25"), 24, False)))


@dataclass(frozen=True)
class Case:
    source: str
    index: int
    rule: str
    fires: bool
    data: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.rule}-{'fires' if self.fires else 'quiet'}-{self.source}#{self.index}"


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(HERE.glob("*.toml")):
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
        for index, case in enumerate(data.get("case", [])):
            cases.append(Case(path.name, index, case["rule"], bool(case["fires"]), case))
    return cases


CASES = load_cases()


def build(case: Case, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in case.data.get("files", {}).items():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content.replace("{dir}", str(root)))
    for name, mode in case.data.get("modes", {}).items():
        os.chmod(root / name, mode)
    main = case.data.get("main", "").replace("{dir}", str(root))
    master = case.data.get("master", BASE_MASTER + case.data.get("master_append", ""))
    (root / "main.cf").write_text(main)
    (root / "master.cf").write_text(master.replace("{dir}", str(root)))
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_golden_case(case: Case, tmp_path: Path) -> None:
    root = build(case, tmp_path / "etc")
    config = PostfixConfig.load(root, table=defaults.shipped(), facts=FACTS)
    roles = parse_roles(case.data.get("role", "auto"))
    report = audit(config, roles)
    fired = [f for f in report.findings if f.id == case.rule]
    if case.fires:
        assert fired, f"{case.rule} did not fire; findings: {[f.id for f in report.findings]}"
        for finding in fired:
            assert finding.evidence
            assert finding.file is not None, f"{case.rule} finding has no file"
    else:
        assert not fired, f"{case.rule} fired: {[f.evidence for f in fired]}"


def test_every_rule_has_a_firing_and_a_quiet_case() -> None:
    missing = []
    for rule in catalogue():
        kinds = {c.fires for c in CASES if c.rule == rule.id}
        if kinds != {True, False}:
            missing.append(f"{rule.id} (has: {sorted(kinds)})")
    assert not missing, "rules without both golden cases: " + ", ".join(missing)


def test_cases_name_existing_rules() -> None:
    ids = {r.id for r in catalogue()}
    assert not [c.id for c in CASES if c.rule not in ids]
