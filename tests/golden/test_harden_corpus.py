"""harden over every configuration of the differential corpus and the examples.

The corpus holds the odd configurations the parser was proved on (continuations, duplicate
names, NUL-free binary bytes, every -o spelling, restriction classes, compatibility
levels). For each, and for three role sets with every input given, the plan must settle
(no error, no tug of war between rules) and a second plan over its result must be empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from postwarden.audit.fixes import Inputs
from postwarden.audit.roles import parse_roles
from postwarden.harden.plan import make_plan
from postwarden.postfix import lexer
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.debian import build, needs_debian

ROOT = Path(__file__).resolve().parents[2]
DIRS = sorted(p for base in (ROOT / "tests/differential/corpus", ROOT / "examples")
              for p in base.iterdir() if p.is_dir())
ROLES = ("mx,submission", "relay", "null-client")
INPUTS = Inputs(hostname="mx.example.org", domain="example.org", sasl="dovecot",
                extras=frozenset({"policy", "milter"}))


@pytest.mark.parametrize("source", DIRS, ids=[f"{p.parent.name}/{p.name}" for p in DIRS])
def test_plan_settles_and_is_idempotent(source: Path, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    shutil.copytree(source, etc)
    if needs_debian(source):
        build(source, etc)
    original = {name: (etc / name).read_bytes() for name in ("main.cf", "master.cf")
                if (etc / name).exists()}
    for role in ROLES:
        roles = parse_roles(role) or frozenset()
        plan = make_plan(PostfixConfig.load(etc), roles, INPUTS)
        for name, text in plan.new.items():
            (etc / name).write_bytes(lexer.encode(text))
        again = make_plan(PostfixConfig.load(etc), roles, INPUTS)
        assert not again.pending, f"{role}: second plan is not empty:\n{again.diff()}"
        for name, data in original.items():
            (etc / name).write_bytes(data)
