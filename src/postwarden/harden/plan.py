"""The hardening plan: audit, apply the rules' remedies, audit again, until nothing changes.

Security: works on in-memory copies of main.cf and master.cf; nothing is written here. The
loop is bounded (``MAX_ROUNDS``) and refuses a plan in which rules undo each other.
Standards: the rule catalogue (``audit.checks``) and its remedies (``audit.fixes``).

Theory of operation
-------------------
Each round audits the configuration for the chosen roles and collects the remedy of every
hit, plus the remedies of rules that take an input the operator gave (so that a given
``--hostname`` is written even where a host name is already set; such remedies must
change nothing once their input is in place). The changes are applied
in catalogue order; a change that leaves the text as it was is dropped (another rule made
it already, or it was already so). The configuration is then loaded again from the new
text and audited again: a remedy can make a new hit appear (a new submission service is
then checked for TLS, restrictions and milter macros, and those rules complete it). The
loop ends when a round changes nothing; a round that brings back an earlier text means two
rules disagree, which is a bug in the catalogue and an error here, never a silent flip.

What is left afterwards at high or critical is what only the operator can clear (a
certificate from a public CA, a SASL backend that must run); the plan lists it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from postwarden.audit.context import Context
from postwarden.audit.engine import applicable, audit, hits
from postwarden.audit.fixes import Change, Inputs, Needs, Outcome
from postwarden.audit.model import Finding, Hit, Role, Rule, Severity
from postwarden.harden import edit
from postwarden.harden.edit import HardenError
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.maincf import MainCf
from postwarden.postfix.mastercf import MasterCf

MAX_ROUNDS = 10
FILES = ("main.cf", "master.cf")


@dataclass
class Step:
    change: Change
    rules: list[str]


@dataclass(frozen=True)
class Missing:
    setting: str
    parameter: str
    rules: tuple[str, ...]


@dataclass
class Plan:
    config_dir: str
    roles: frozenset[Role]
    old: dict[str, str]   # file name -> text before
    new: dict[str, str]   # file name -> text after
    steps: list[Step]
    missing: list[Missing]
    unused_inputs: list[str]
    remaining: list[Finding] = field(default_factory=list)

    @property
    def pending(self) -> bool:
        return self.old != self.new

    def changed_files(self) -> list[str]:
        return [name for name in FILES if self.old.get(name) != self.new.get(name)]

    def diff(self) -> str:
        out: list[str] = []
        for name in self.changed_files():
            out.extend(difflib.unified_diff(
                self.old[name].splitlines(keepends=True),
                self.new[name].splitlines(keepends=True),
                fromfile=f"{self.config_dir}/{name}",
                tofile=f"{self.config_dir}/{name} (hardened)"))
        return "".join(line if line.endswith("\n") else line + "\n" for line in out)


def _reload(config: PostfixConfig, main: str, master: str | None) -> PostfixConfig:
    return PostfixConfig(config.config_dir, MainCf(main, config.main.path),
                         MasterCf(master, config.master.path) if config.master and
                         master is not None else None, config.table, config.facts)


def _texts(config: PostfixConfig) -> tuple[str, str | None]:
    return config.main.render(), config.master.render() if config.master else None


def _outcomes(ctx: Context, rules: list[Rule], inputs: Inputs,
              ) -> list[tuple[Rule, Outcome]]:
    found: list[tuple[Rule, Outcome]] = []
    for rule, hit in hits(ctx, rules):
        if rule.remedy is not None:
            found.extend((rule, o) for o in rule.remedy(ctx, hit, inputs))
    for rule in rules:
        if rule.remedy is not None and any(inputs.get(k) for k in rule.takes):
            found.extend((rule, o) for o in rule.remedy(ctx, Hit("input given"), inputs))
    return found


def make_plan(config: PostfixConfig, roles: frozenset[Role], inputs: Inputs) -> Plan:
    """The changes that bring config to the roles' profile; config itself is not changed."""
    rules = applicable(roles)
    old_main, old_master = _texts(config)
    work = _reload(config, old_main, old_master)
    steps: list[Step] = []
    missing: dict[tuple[str, str], list[str]] = {}
    seen = {(old_main, old_master)}
    for _ in range(MAX_ROUNDS):
        changed = False
        for rule, outcome in _outcomes(Context(work, roles), rules, inputs):
            if isinstance(outcome, Needs):
                ids = missing.setdefault((outcome.setting, outcome.parameter), [])
                if rule.id not in ids:
                    ids.append(rule.id)
                continue
            changed |= _record(steps, rule, outcome, work)
        if not changed:
            break
        state = _texts(work)
        if state in seen:
            raise HardenError("the rules' remedies undo each other (" + ", ".join(
                sorted({r for s in steps for r in s.rules})) + "); please report this")
        seen.add(state)
        work = _reload(work, *state)
    else:
        raise HardenError(f"the plan did not settle after {MAX_ROUNDS} rounds")
    given = inputs.given()
    used = {k for r in rules for k in r.takes}
    new_main, new_master = _texts(work)
    old = {"main.cf": old_main} | ({"master.cf": old_master} if old_master is not None else {})
    new = {"main.cf": new_main} | ({"master.cf": new_master} if new_master is not None else {})
    remaining = [f for f in audit(work, roles).findings
                 if f.severity in (Severity.CRITICAL, Severity.HIGH)]
    return Plan(config.config_dir, roles, old, new, steps,
                [Missing(s, p, tuple(ids)) for (s, p), ids in missing.items()
                 if inputs.get(s) is None],
                [k for k in given if k not in used], remaining)


def _record(steps: list[Step], rule: Rule, change: Change, work: PostfixConfig) -> bool:
    """Apply one change; keep it (with the rule's id) when it changed the text.

    A change equal to an earlier step is applied again (a later change may have undone
    it within the round) and credited to that step.
    """
    before = _texts(work)
    edit.apply(change, work)
    changed = _texts(work) != before
    for step in steps:
        if step.change == change:
            if rule.id not in step.rules:
                step.rules.append(rule.id)
            return changed
    if changed:
        steps.append(Step(change, [rule.id]))
    return changed
