"""What ``postconf`` prints for a config directory: the same lines in the same order.

Security: output only; values are printed as read (whitespace normalised as postconf does).
Standards: postconf(1) (-n, -x, -d, -h, -M, -P, -f); Postfix 3.7
``postconf/postconf_print.c`` (whitespace normalisation, folding),
``postconf/postconf_main.c`` (parameter order), ``postconf/postconf_master.c`` (-M columns,
-P order, service patterns).

Theory of operation
-------------------
Each ``show_*`` function returns ``Output``: the stdout lines and the warnings postconf
would print on stderr. Whitespace runs (space, tab, CR, LF) inside a printed line become one
space, as pcf_print_line() does; with ``fold`` long lines wrap at 80 columns with a
four-space indent. ``-M`` puts the eight fields at postconf's preferred columns and each
``-o`` on its own line when folding; ``-P`` prints each service's ``-o`` names sorted, in
master.cf order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postwarden.errors import PostwardenError
from postwarden.postfix import lexer
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.mastercf import Service

SEPARATORS = " \t\r\n"
LINE_LIMIT = 80
INDENT = "    "
COLUMNS = (0, 11, 17, 25, 33, 41, 49, 57)


class PatternError(PostwardenError):
    """A service pattern postconf would refuse."""


@dataclass
class Output:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def print_line(text: str, fold: bool = False) -> str:
    """pcf_print_line(): words joined by one space, optionally folded at 80 columns."""
    out: list[str] = []
    length = 0
    for word in lexer.tokens(text, SEPARATORS):
        if length > 0:
            if not fold or length + len(word) < LINE_LIMIT:
                out.append(" ")
                length += 1
            else:
                out.append("\n" + INDENT)
                length = len(INDENT)
        out.append(word)
        length += len(word)
    return "".join(out)


def show_main(config: PostfixConfig, names: list[str], *, nondefault: bool = False,
              evaluate: bool = False, defaults: bool = False, hide_name: bool = False,
              fold: bool = False) -> Output:
    """``postconf [-n] [-x] [-d] [-h] [name...]``."""
    output = Output()
    if names:
        chosen = []
        for name in names:
            if _in_table(config, name, defaults):
                chosen.append(name)
            else:
                output.warnings.append(f"{name}: unknown parameter")
    else:
        chosen = sorted(_listed(config, defaults), key=_c_order)
    for name in chosen:
        if defaults:
            value = config.default(name, pure=True)
        elif nondefault:
            value = config.params.get(name)
        else:
            value = config.lookup(name)
        if value is None:
            continue
        if evaluate and name not in config.table.raw:
            value = config.expand(value, pure=defaults).text
        text = value if hide_name else f"{name} = {value}"
        output.lines.append(print_line(text, fold))
    return output


def _c_order(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _in_table(config: PostfixConfig, name: str, defaults: bool) -> bool:
    if defaults:
        return (name in config.table.defaults or name in config.table.readonly
                or name in config.table.legacy or name in config.names.service
                or name in ("myhostname", "mydomain", "mynetworks"))
    return config.known(name)


def _listed(config: PostfixConfig, defaults: bool) -> set[str]:
    """Names postconf lists without arguments: built-in, service and (unless -d) user ones."""
    names = set(config.names.builtin) | set(config.names.service)
    if not defaults:
        names |= config.names.user
    return names


def parse_pattern(text: str, max_parts: int) -> list[str]:
    """pcf_parse_service_pattern(): 'name[/type[/param]]', '*' allowed only alone."""
    if text.startswith("/"):
        raise PatternError(f'bad service pattern: "{text}"')
    parts = [p for p in text.split("/") if p]
    if not 1 <= len(parts) <= max_parts or any(p != "*" and "*" in p for p in parts):
        raise PatternError(f'bad service pattern: "{text}"')
    return parts + ["*"] * (max_parts - len(parts))


def _matches(pattern: list[str], service: Service) -> bool:
    return all(p in ("*", value) for p, value in zip(pattern, (service.name, service.type),
                                                     strict=False))


def format_entry(config: PostfixConfig, service: Service, *, evaluate: bool = False,
                 fold: bool = False) -> str:
    """pcf_print_master_entry(): one master.cf entry as ``postconf -M`` prints it."""
    out: list[str] = []
    length = 0
    for index, text in enumerate(service.fields):
        if length > 0:
            out.append(" ")
            length += 1
            while length < COLUMNS[index]:
                out.append(" ")
                length += 1
        out.append(text)
        length += len(text)
    args = list(service.args)
    in_options = True
    i = 0
    while i < len(args):
        arg = args[i]
        value: str | None = None
        parens = False
        size = len(arg)
        if in_options:
            if not arg.startswith("-") or arg == "--":
                in_options = False
            elif arg[1:2] == "o" and i + 1 < len(args):
                value = args[i + 1]
                length = LINE_LIMIT  # an option with a value starts a new line
                if arg == "-o" and evaluate:
                    value = config.expand(value, service=service).text
                size += len(value) + 3
                parens = any(ch in SEPARATORS for ch in value)
                size += 2 if parens else 0
        else:
            parens = any(ch in SEPARATORS for ch in arg)
        if length > len(INDENT):
            if not fold or length + 1 + size < LINE_LIMIT:
                out.append(" ")
                length += 1
            else:
                out.append("\n" + INDENT)
                length = len(INDENT)
        shown = f"{{{arg}}}" if not in_options and parens else arg
        out.append(shown)
        length += len(shown)
        if value is not None:
            shown = f"{{{value}}}" if parens else value
            out.append(" " + shown)
            length += 1 + len(shown)
            i += 1
            length = LINE_LIMIT  # and ends it
        i += 1
    return "".join(out)


def show_master(config: PostfixConfig, patterns: list[str], *, evaluate: bool = False,
                fold: bool = False) -> Output:
    """``postconf -M [-x] [-f] [service[/type]...]``."""
    output = Output()
    parsed = [parse_pattern(p, 2) for p in patterns]
    counts = [0] * len(parsed)
    for service in config.services:
        if not parsed:
            output.lines.append(format_entry(config, service, evaluate=evaluate, fold=fold))
            continue
        for index, pattern in enumerate(parsed):
            if _matches(pattern, service):
                counts[index] += 1
                output.lines.append(format_entry(config, service, evaluate=evaluate,
                                                 fold=fold))
    output.warnings += [f'unmatched request: "{p}"' for p, n in zip(patterns, counts,
                                                                    strict=True) if not n]
    return output


def show_master_params(config: PostfixConfig, patterns: list[str], *, evaluate: bool = False,
                       hide_name: bool = False, fold: bool = False) -> Output:
    """``postconf -P [-x] [-h] [service[/type[/parameter]]...]``."""
    output = Output()
    parsed = [parse_pattern(p, 3) for p in patterns]
    counts = [0] * len(parsed)

    def emit(service: Service, name: str, value: str) -> None:
        if evaluate:
            value = config.expand(value, service=service).text
        text = value if hide_name else f"{service.key}/{name} = {value}"
        output.lines.append(print_line(text, fold))

    for index, service in enumerate(config.services):
        space = config.namespaces.get(service.key)
        if not space or index not in config.with_params:
            continue
        if not parsed:
            for name in sorted(space, key=_c_order):
                emit(service, name, space[name])
            continue
        for index, pattern in enumerate(parsed):
            if not _matches(pattern, service):
                continue
            if pattern[2] == "*":
                for name in sorted(space, key=_c_order):
                    emit(service, name, space[name])
                counts[index] += 1
            elif pattern[2] in space:
                emit(service, pattern[2], space[pattern[2]])
                counts[index] += 1
    output.warnings += [f'unmatched request: "{p}"' for p, n in zip(patterns, counts,
                                                                    strict=True) if not n]
    return output
