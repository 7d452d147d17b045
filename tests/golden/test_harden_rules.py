"""Golden cases of the remedies: harden clears what each rule reports, and only once.

Every firing case of ``tests/golden/audit/*.toml`` whose rule has a remedy is planned with
the inputs below; the hardened text must no longer make that rule fire (unless the plan
says which input it needs, or the case says ``harden = "operator"``: a hit the remedy
leaves on purpose, which the plan must then list as remaining), and planning it again must
plan nothing. Planned without any
input, every input the plan asks for must be one the asking rule declares in ``takes``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from postwarden.audit.context import Context
from postwarden.audit.engine import audit, catalogue
from postwarden.audit.fixes import EXTRAS, Inputs
from postwarden.audit.model import RULES
from postwarden.audit.roles import infer, parse_roles
from postwarden.harden.plan import make_plan
from postwarden.postfix import defaults
from postwarden.postfix.config import PostfixConfig
from tests.golden.test_audit_rules import CASES, FACTS, Case, build

INPUTS = Inputs(hostname="mx.example.org", domain="example.org", sasl="dovecot")
REMEDIED = [c for c in CASES if c.fires and RULES[c.rule].remedy is not None]


def _load(root: Path) -> PostfixConfig:
    return PostfixConfig.load(root, table=defaults.shipped(), facts=FACTS)


@pytest.mark.parametrize("case", REMEDIED, ids=[c.id for c in REMEDIED])
def test_remedy_clears_the_rule(case: Case, tmp_path: Path) -> None:
    root = build(case, tmp_path / "etc")
    config = _load(root)
    roles = parse_roles(case.data.get("role", "auto")) or infer(Context(config, frozenset()))[0]
    extras = frozenset(k for k in RULES[case.rule].takes if k in EXTRAS)
    inputs = dataclasses.replace(INPUTS, extras=extras)
    plan = make_plan(config, roles, inputs)
    needed = {rule for m in plan.missing for rule in m.rules}
    for name, text in plan.new.items():
        (root / name).write_text(text)
    hardened = _load(root)
    fired = [f for f in audit(hardened, roles).findings if f.id == case.rule]
    if case.data.get("harden") == "operator":
        assert fired and any(f.id == case.rule for f in plan.remaining)
    else:
        assert not fired or case.rule in needed, (
            f"{case.rule} still fires after harden: {[f.evidence for f in fired]}\n"
            f"{plan.diff()}")
    again = make_plan(hardened, roles, inputs)
    assert not again.pending, f"second plan is not empty:\n{again.diff()}"


@pytest.mark.parametrize("case", REMEDIED, ids=[c.id for c in REMEDIED])
def test_needed_inputs_are_declared(case: Case, tmp_path: Path) -> None:
    config = _load(build(case, tmp_path / "etc"))
    roles = parse_roles(case.data.get("role", "auto")) or infer(Context(config, frozenset()))[0]
    for missing in make_plan(config, roles, Inputs()).missing:
        for rule in missing.rules:
            assert missing.setting in RULES[rule].takes, (rule, missing)


def test_every_remedy_has_a_firing_case() -> None:
    missing = [r.id for r in catalogue() if r.remedy is not None
               and not any(c.rule == r.id and c.fires for c in CASES)]
    assert not missing
