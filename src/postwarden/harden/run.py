"""The harden command's steps: plan, show, apply, verify, reload, roll back.

Security: changes files only through ``apply.commit`` (backup, journal, atomic renames);
runs Postfix commands as argument lists on a pseudo-terminal (Postfix prints its errors only
there), with a time limit.
Standards: postfix(1) ``check``, ``status``, ``reload``; the exit codes of DESIGN.md.

Theory of operation
-------------------
Before anything is planned, an interrupted earlier run is finished (``apply.recover``), the
directory must be writable when ``--apply`` is asked for, and the inputs have been checked
(``settings``). ``--apply`` then commits the plan and verifies it: ``postfix -c DIR check``
(when Postfix is installed) and postwarden's configuration check, which must find nothing
at high or critical that it did not find before. A failed check commits the backup back
and the command fails, naming the check; the configuration is then as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from postwarden.audit.fixes import Inputs
from postwarden.audit.model import Role
from postwarden.harden import apply as tx
from postwarden.harden.plan import Plan, make_plan
from postwarden.postfix import check as config_check
from postwarden.postfix import lexer
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.instance import find_program
from postwarden.postfix.process import run_on_terminal

COMMAND_TIMEOUT = 120.0
BLOCKING = ("critical", "high")
RESTART_NEEDED = ("inet_interfaces", "inet_protocols")


def plan(config_dir: Path, roles: frozenset[Role], inputs: Inputs) -> tuple[Plan, str | None]:
    """The plan for config_dir, after finishing any interrupted earlier change."""
    recovered = None
    if (config_dir / tx.STATE).is_dir():
        with tx.lock(config_dir):
            recovered = tx.recover(config_dir)
    return make_plan(PostfixConfig.load(config_dir), roles, inputs), recovered


def writable(config_dir: Path) -> None:
    for path in (config_dir, config_dir / "main.cf", config_dir / "master.cf"):
        if path.is_symlink():
            raise tx.ApplyError(f"{path} is a symbolic link to {os.readlink(path)}; harden "
                                "replaces files in place and would replace the link: run "
                                "it where the file is, or replace the link by the file")
        if path.exists() and not os.access(path, os.W_OK):
            raise tx.ApplyError(f"{path}: not writable by this user; nothing was changed")


def _problems(config_dir: Path) -> set[tuple[str, str]]:
    findings = config_check.check(PostfixConfig.load(config_dir))
    return {(f.id, f.evidence) for f in findings if f.severity in BLOCKING}


def postfix_installed() -> bool:
    return find_program("postfix") is not None


def verify(config_dir: Path, before: set[tuple[str, str]]) -> str | None:
    """None when the written configuration passes the checks; else what failed."""
    postfix = find_program("postfix")
    if postfix is not None:
        result = run_on_terminal([postfix, "-c", str(config_dir), "check"], COMMAND_TIMEOUT)
        if result.returncode != 0:
            lines = [x for x in result.output.splitlines() if x.strip()]
            return (f"postfix -c {config_dir} check failed: "
                    f"{lines[-1] if lines else 'exit status ' + str(result.returncode)}")
    try:
        new = sorted(_problems(config_dir) - before)
    except Exception as exc:  # the check must not be the thing that leaves a bad config
        return f"configuration check failed: {exc}"
    if new:
        return f"configuration check: {new[0][0]}: {new[0][1]}"
    return None


def apply(plan: Plan, config_dir: Path) -> Path:
    """Commit the plan, verify it, and undo it when the check fails; returns the backup."""
    writable(config_dir)
    with tx.lock(config_dir):
        before = _problems(config_dir)
        files = {name: lexer.encode(text) for name, text in plan.new.items()
                 if plan.old.get(name) != text}
        backup = tx.commit(config_dir, files)
        problem = verify(config_dir, before)
        if problem:
            _, saved = tx.read_backup(backup)
            tx.commit(config_dir, saved, reason="rollback")
            tx.mark_restored(backup)
            again = verify(config_dir, before)
            why = ("; the previous configuration fails that check too, so the cause is "
                   "outside this change" if again else "")
            raise tx.ApplyError(f"{problem}; the previous configuration was restored from "
                                f"{backup}{why}")
    return backup


def reload(config_dir: Path) -> str:
    postfix = find_program("postfix")
    if postfix is None:
        return "Postfix is not installed here; nothing to reload"
    status = run_on_terminal([postfix, "-c", str(config_dir), "status"], COMMAND_TIMEOUT)
    if status.returncode != 0:
        return "Postfix is not running with this configuration; nothing to reload"
    result = run_on_terminal([postfix, "-c", str(config_dir), "reload"], COMMAND_TIMEOUT)
    if result.returncode != 0:
        raise tx.ApplyError(f"postfix -c {config_dir} reload failed: {result.output.strip()}")
    return "Postfix reloaded"


def restart_needed(plan: Plan) -> list[str]:
    return sorted({s.change.name for s in plan.steps if s.change.name in RESTART_NEEDED})


# -- output ----------------------------------------------------------------------------------

def to_text(plan: Plan, recovered: str | None = None) -> str:
    roles = ", ".join(sorted(r.value for r in plan.roles))
    out = [f"postwarden harden: {plan.config_dir} as {roles}"]
    if recovered:
        out.append(f"note: {recovered}")
    if plan.pending:
        out += ["", plan.diff().rstrip("\n"), "", "changes:"]
        width = max(len(", ".join(s.rules)) for s in plan.steps)
        out += [f"  {', '.join(s.rules):<{width}}  {s.change.describe()}" for s in plan.steps]
    for m in plan.missing:
        out.append(f"needs --{m.setting}: {m.parameter} ({', '.join(m.rules)}) left out")
    for key in plan.unused_inputs:
        flag = f"with {key}" if key in ("policy", "milter") else key
        out.append(f"ignored: --{flag} is not used by the {roles} profile")
    if plan.remaining:
        out.append("left for the operator (high or critical after hardening):")
        out += [f"  {f.severity.value}: {f.id} {f.title}: {f.evidence}" for f in plan.remaining]
    for name in restart_needed(plan):
        out.append(f"note: {name} changes only with 'postfix stop' and 'postfix start'")
    out.append(f"{len(plan.steps)} change(s) pending" if plan.pending
               else "nothing to change: the configuration already has the profile")
    return "\n".join(out)


def to_json(plan: Plan, recovered: str | None = None) -> str:
    return json.dumps({
        "config_directory": plan.config_dir,
        "recovered": recovered,
        "roles": sorted(r.value for r in plan.roles),
        "pending": plan.pending,
        "diff": plan.diff(),
        "changes": [{"change": s.change.describe(), "op": s.change.op.value,
                     "parameter": s.change.name, "value": s.change.value,
                     "service": s.change.service, "rules": s.rules} for s in plan.steps],
        "needs": [{"setting": m.setting, "parameter": m.parameter, "rules": list(m.rules)}
                  for m in plan.missing],
        "ignored_inputs": plan.unused_inputs,
        "remaining": [f.to_json() for f in plan.remaining],
    }, indent=2)
