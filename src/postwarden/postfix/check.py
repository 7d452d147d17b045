"""``postwarden config check``: what postconf warns about, with file:line, and more.

Security: reads the parsed configuration only; the one file-system look is whether a
master.cf command exists in ``daemon_directory``.
Standards: postconf(1) warnings ("overriding earlier entry", "unused parameter",
"undefined parameter", "read-only parameter assignment", "logical line must not start with
whitespace"); master(8) ("duplicate master.cf entry ... using the last entry");
postconf(5) on service-defined parameter names.

Theory of operation
-------------------
Each finding is a frozen ``Finding`` with a stable id, the file and line it is about, and a
fix. The checks reproduce postconf's own warnings, then add what postconf stays silent on:
identical duplicate definitions (a later edit of one is silently undone by the other),
duplicate master.cf services, values the daemons could not expand, ``-oname=value`` words
that postconf itself misreads, master.cf commands missing from ``daemon_directory``, and for
an unknown name the closest known one or the master.cf service it would need.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.expand import ExpansionError, expand
from postwarden.severity import SEVERITIES


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str
    title: str
    evidence: str
    fix: str
    file: str
    line: int | None = None
    parameter: str | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id, "severity": self.severity, "title": self.title,
            "evidence": self.evidence, "fix": self.fix, "file": self.file,
            "line": self.line, "parameter": self.parameter,
        }


def check(config: PostfixConfig) -> list[Finding]:
    findings: list[Finding] = []
    findings += _main_lines(config)
    findings += _duplicates(config)
    findings += _unused(config)
    findings += _undefined(config)
    findings += _expansion(config)
    findings += _master(config)
    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.file, f.line or 0, f.id))


def _main_file(config: PostfixConfig) -> str:
    return str(config.main.path)


def _main_lines(config: PostfixConfig) -> list[Finding]:
    found = []
    for dropped in config.main.dropped:
        found.append(Finding(
            "CFG-CONT", "high", "continuation line with nothing to continue",
            f'logical line must not start with whitespace: "{dropped.text[:40]}"',
            "Remove the leading whitespace, or join the line to the definition above it.",
            _main_file(config), dropped.first + 1))
    for warning in config.warnings:
        if warning.code == "read-only":
            name = warning.message.split(": ", 1)[1].split("=", 1)[0]
            found.append(Finding(
                "CFG-READONLY", "medium", "read-only parameter assigned", warning.message,
                f"Remove {name}: Postfix sets it itself and ignores this line.",
                _main_file(config), config.main.find(name)[-1].lineno, name))
        elif warning.code == "missing-master":
            found.append(Finding(
                "CFG-NOMASTER", "high", "master.cf is missing", warning.render(),
                "Restore master.cf; without it Postfix starts no service.",
                warning.file))
    return found


def _duplicates(config: PostfixConfig) -> list[Finding]:
    found = []
    for name, definitions in config.main.duplicates().items():
        lines = ", ".join(str(d.lineno) for d in definitions)
        last = definitions[-1]
        differs = len({d.value for d in definitions}) > 1
        if differs:
            earlier = [d for d in definitions[:-1] if d.value != last.value]
            evidence = (f"{name} is defined on lines {lines}; only line {last.lineno} "
                        f"counts, so line(s) {', '.join(str(d.lineno) for d in earlier)} "
                        f"are ignored (postconf: overriding earlier entry)")
            found.append(Finding(
                "CFG-DUP", "high", "parameter defined more than once with different values",
                evidence,
                f"Keep one definition of {name} with the value you mean; delete the others.",
                _main_file(config), last.lineno, name))
        else:
            found.append(Finding(
                "CFG-DUP-SAME", "low", "parameter defined more than once with the same value",
                f"{name} is defined on lines {lines} with the same value; postconf is silent, "
                f"but a later edit of one definition is undone by the other",
                f"Delete all but one definition of {name}.",
                _main_file(config), last.lineno, name))
    return found


def _closest(config: PostfixConfig, name: str) -> str | None:
    """The Postfix name a misspelling most likely meant (similarity 0.8 or more).

    Only Postfix's own names are candidates: the user's own names are as likely to be the
    misspelling as the target.
    """
    known = config.names.builtin | config.names.legacy | set(config.names.service)
    # difflib is slow on a thousand candidates times a thousand unknown names. A ratio of
    # 0.8 needs lengths within a quarter of each other, and a misspelling nearly always
    # keeps its first two letters (smptd_..., not tmspd_...): filter on both first.
    near = sorted(k for k in known if k[:2] == name[:2]
                  and abs(len(k) - len(name)) <= len(name) // 4 + 1)
    close = difflib.get_close_matches(name, near, n=1, cutoff=0.8)
    return close[0] if close else None


def _service_hint(config: PostfixConfig, name: str) -> str | None:
    """For 'X_time_limit' and friends: the master.cf service X the name would need."""
    for suffix in sorted({s for table in config.table.service_suffixes.values() for s in table},
                         key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            programs = sorted(p for p, table in config.table.service_suffixes.items()
                              if suffix in table)
            service = name[: -len(suffix)]
            return (f"{name} is only valid when master.cf has a service named {service!r} "
                    f"running {' or '.join(programs)}; there is none")
    return None


def _unused(config: PostfixConfig) -> list[Finding]:
    found = []
    for warning in config.unused():
        name = warning.message.split(": ", 1)[1].split("=", 1)[0]
        hint = _service_hint(config, name)
        closest = _closest(config, name)
        if hint is not None:
            fix = hint + ". Define the service or remove the line."
        elif closest is not None:
            fix = f"Did you mean {closest}? Postfix ignores {name}."
        else:
            fix = f"Remove {name}, or reference it as ${name} where it is meant to be used."
        found.append(Finding(
            "CFG-UNUSED", "medium", "parameter that Postfix does not use", warning.render(),
            fix, warning.file, warning.line, name))
    return found


def _undefined(config: PostfixConfig) -> list[Finding]:
    found = []
    seen: set[str] = set()
    for warning in config.warnings:
        if warning.code != "undefined" or warning.message in seen:
            continue
        seen.add(warning.message)
        name = warning.message.rsplit(": ", 1)[1]
        users = [d for d in config.main if f"${name}" in d.value or f"{{{name}" in d.value
                 or f"({name}" in d.value]
        line = users[-1].lineno if users else None
        closest = _closest(config, name)
        fix = (f"Did you mean ${closest}?" if closest else f"Define {name} or remove ${name}.")
        found.append(Finding(
            "CFG-UNDEF", "medium", "reference to a parameter defined nowhere",
            warning.render() + " (it expands to nothing)", fix, warning.file, line, name))
    return found


def _expansion(config: PostfixConfig) -> list[Finding]:
    found = []
    for definition in config.main:
        if definition.name in config.table.raw:
            continue
        try:
            expand(definition.value, lambda n: config.lookup(n))
        except ExpansionError as exc:
            found.append(Finding(
                "CFG-EXPAND", "critical", "value Postfix cannot expand",
                f"{definition.name}: {exc}; every Postfix program that reads it stops with "
                f"'macro processing error'", "Fix the $ syntax (a literal $ is written $$).",
                _main_file(config), definition.lineno, definition.name))
    return found


def _master(config: PostfixConfig) -> list[Finding]:
    if config.master is None:
        return []
    path = str(config.master.path)
    found = []
    for dropped in config.master.dropped:
        found.append(Finding(
            "SVC-CONT", "high", "continuation line with nothing to continue",
            f'logical line must not start with whitespace: "{dropped.text[:40]}"',
            "Remove the leading whitespace or join the line to the service above.",
            path, dropped.first + 1))
    for key, entries in config.master.duplicates().items():
        lines = ", ".join(str(e.lineno) for e in entries)
        found.append(Finding(
            "SVC-DUP", "high", "service defined more than once",
            f"{key} is defined on lines {lines}; master(8) uses only the last entry",
            "Merge the entries into one.", path, entries[-1].lineno))
    for service in config.services:
        if service.postconf_params() != service.overrides():
            found.append(Finding(
                "SVC-GLUED-O", "low", "-o option glued to its value",
                f"{service.key}: postconf reads {' '.join(service.words)!r} differently "
                f"from the daemon (it splits '-oNAME=VALUE' at any later 'o')",
                "Write '-o name=value' with a space after -o.", path, service.lineno))
    daemon_dir = config.value("daemon_directory")
    if daemon_dir and os.path.isdir(daemon_dir):
        for service in config.services:
            command = service.command
            target = command if command.startswith("/") else f"{daemon_dir}/{command}"
            if not os.path.exists(target):
                found.append(Finding(
                    "SVC-COMMAND", "high", "service command not found",
                    f"{service.key} runs {command!r}, but {target} does not exist; master(8) "
                    f"cannot start it", "Fix the command name (see daemon_directory).",
                    path, service.lineno))
    return found
