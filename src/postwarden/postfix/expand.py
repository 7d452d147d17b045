"""Postfix ``$name`` expansion, exactly as ``postconf -x`` and the daemons do it.

Security: values come from configuration files a user may not fully trust (copied from a
blog post, say). Expansion is bounded: nesting deeper than Postfix's own limit of 100 is
an error, and so is total recursion through relational operands (where Postfix itself would
overflow its stack), so a self-referencing value can never hang or crash postwarden.
Standards: postconf(5) "main.cf file format" (``$name``, ``${name}``, ``$(name)``, ``$$``,
``${name?value}``, ``${name:value}``, ``${name?{A}:{B}}``, relational ``${{A} op {B}...}``);
Postfix 3.7 ``util/mac_parse.c``, ``util/mac_expand.c`` and ``global/compat_level.c``.

Theory of operation
-------------------
``_parse`` splits text into literal runs and macro expressions, as ``mac_parse()`` does:
``$$`` is a literal ``$``; ``${...}`` and ``$(...)`` end at the matching bracket of the same
kind; a bare ``$`` takes the longest run of ASCII letters, digits and ``_``. Each expression
goes to ``_Expander.expression``, which handles the named form and the relational form with
the ``?`` and ``:`` operators, and recurses into the chosen branch and into looked-up values.

Postfix's quirks are kept on purpose, because configurations depend on them:
``${name:value}`` gives ``value`` only when name is empty or undefined (it is not a shell
default); without ``{}`` the text after ``?`` runs to the end, ``:`` included (Postfix 2.11
compatibility); relational operators compare numbers when both sides are all digits, else
bytes; the ``level`` suffix (``<level``) compares compatibility levels ``major.minor.patch``.

In scan mode (``references``) every branch is visited and nothing is looked up, which is how
``postconf`` finds the user-defined names a configuration uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from postwarden.errors import PostwardenError, clip

Lookup = Callable[[str], str | None]

# mac_expand.c: "if (mc->level++ > 100)": nesting deeper than this is an error.
MAX_NESTING = 100
# Relational operands start a fresh mac_expand() in Postfix, with a fresh nesting count, so
# a value that refers to itself through an operand recurses without end there (until its
# stack overflows). We stop at a total depth no real configuration comes near, and at a
# number of expansions that bounds the work a value like a=$b$b, b=$c$c, ... can cause.
MAX_DEPTH = 150
MAX_CALLS = 200_000

ASCII_SPACE = " \t\n\v\f\r"
OPERATOR_CHARS = "<>!=?+-*/~&|%"
RELATIONAL = ("==", "!=", "<", "<=", ">=", ">")
TRUE = "true"


class ExpansionError(PostwardenError):
    """A value Postfix cannot expand (it would stop with 'macro processing error')."""


def is_name_char(ch: str) -> bool:
    """ASCII letter, digit or underscore, as Postfix's ISALNUM(ch) || ch == '_'."""
    return ch == "_" or (ch.isascii() and ch.isalnum())


def _all_digits(text: str) -> bool:
    return bool(text) and all("0" <= ch <= "9" for ch in text)


@dataclass
class Expansion:
    """The expanded text and the names that were referenced but defined nowhere."""

    text: str
    undefined: list[str] = field(default_factory=list)


def _parse(value: str) -> Iterator[tuple[bool, str]]:
    """Yield (is_expression, text) pieces of a value, as mac_parse() does."""
    literal: list[str] = []
    i, end = 0, len(value)
    while i < end:
        ch = value[i]
        if ch != "$":
            literal.append(ch)
            i += 1
            continue
        if i + 1 < end and value[i + 1] == "$":
            literal.append("$")
            i += 2
            continue
        if literal:
            yield False, "".join(literal)
            literal = []
        i += 1
        if i < end and value[i] in "({":
            open_ch = value[i]
            close_ch = ")" if open_ch == "(" else "}"
            level, j = 1, i + 1
            while level > 0:
                if j >= end:
                    raise ExpansionError(f'truncated macro reference: "{clip(value)}"')
                if value[j] == open_ch:
                    level += 1
                elif value[j] == close_ch:
                    level -= 1
                j += 1
            name = value[i + 1 : j - 1]
            i = j
        else:
            j = i
            while j < end and is_name_char(value[j]):
                j += 1
            name = value[i:j]
            i = j
        if not name:
            raise ExpansionError(f'empty macro name: "{clip(value)}"')
        yield True, name
    if literal:
        yield False, "".join(literal)


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in ASCII_SPACE:
        i += 1
    return i


def _curly_payload(text: str, i: int) -> tuple[str, int]:
    """text[i] is '{': return the balanced payload and the index after trailing space."""
    level, j = 1, i + 1
    while True:
        if j >= len(text):
            raise ExpansionError(f'unbalanced {{}} in attribute expression: "{clip(text[i:])}"')
        if text[j] == "{":
            level += 1
        elif text[j] == "}":
            level -= 1
            if level <= 0:
                break
        j += 1
    return text[i + 1 : j], _skip_space(text, j + 1)


def compat_level(text: str) -> int:
    """Encode a compatibility level 'major[.minor[.patch]]' as compat_level.c does."""
    parts = text.split(".")
    if len(parts) > 3 or not all(_all_digits(part) for part in parts):
        raise ExpansionError(f'malformed compatibility level syntax: "{clip(text)}"')
    numbers = [int(part) for part in parts] + [0] * (3 - len(parts))
    major, minor, patch = numbers
    if minor > 0x3FF or patch > 0x3FF or major > (2**63 - 1) >> 20:
        raise ExpansionError(f'malformed compatibility level syntax: "{clip(text)}"')
    return (major << 20) | (minor << 10) | patch


def _compare(left: str, op: str, right: str, levels: bool) -> bool:
    if levels:
        delta = compat_level(left) - compat_level(right)
    elif _all_digits(left) and _all_digits(right):
        delta = int(left) - int(right)
    else:
        lb, rb = left.encode("utf-8", "surrogateescape"), right.encode("utf-8", "surrogateescape")
        delta = (lb > rb) - (lb < rb)
    return {
        "==": delta == 0, "!=": delta != 0, "<": delta < 0,
        "<=": delta <= 0, ">=": delta >= 0, ">": delta > 0,
    }[op]


class _Expander:
    def __init__(self, lookup: Lookup, scan: bool) -> None:
        self.lookup = lookup
        self.scan = scan
        self.out: list[str] = []
        self.referenced: list[str] = []
        self.undefined: list[str] = []
        self.calls = 0
        self.depth = 0

    def run(self, value: str, level: int) -> None:
        for is_expr, text in _parse(value):
            if is_expr:
                self.expression(text, level)
            elif not self.scan:
                self.out.append(text)

    def sub(self, value: str) -> str:
        """Expand a relational operand in a fresh context, as mac_exp_parse_relational."""
        saved, self.out = self.out, []
        try:
            self.run(value, 0)
            return "".join(self.out)
        finally:
            self.out = saved

    def expression(self, text: str, level: int) -> None:
        self.calls += 1
        self.depth += 1
        try:
            if level > MAX_NESTING or self.depth > MAX_DEPTH or self.calls > MAX_CALLS:
                raise ExpansionError(f'unreasonable macro call nesting: "{clip(text)}"')
            self._expression(text, level)
        finally:
            self.depth -= 1

    def _expression(self, text: str, level: int) -> None:
        i = _skip_space(text, 0)
        lookup: str | None
        if i < len(text) and text[i] == "{":
            lookup, i = self.relational(text, i)
            op = text[i] if i < len(text) else ""
            if op and op not in "?:":
                raise ExpansionError(f'"?" or ":" expected at: "...}}>>>{clip(text[i:], 20)}"')
            i += 1 if op else 0
        else:
            start = i
            while True:
                k = _skip_space(text, i)
                if k >= len(text):
                    name, op = text[start:i], ""
                    break
                if text[k] in "?:":
                    name, op = text[start:i], text[k]
                    i = k + 1
                    break
                if not is_name_char(text[i]):
                    raise ExpansionError(
                        f'attribute name syntax error at: "...{clip(text[:i])}>>>'
                        f'{clip(text[i:], 20)}"'
                    )
                i += 1
            lookup = None if self.scan else self.lookup(name)
            self.referenced.append(name)
            if lookup is None and not self.scan and not op:
                self.undefined.append(name)
        self.branches(text, i, op, lookup, level)

    def branches(self, text: str, i: int, op: str, lookup: str | None, level: int) -> None:
        if op == "?":
            k = _skip_space(text, i)
            if k < len(text) and text[k] == "{":
                if_true, i = _curly_payload(text, k)
            else:
                if_true, i = text[i:], len(text)
            if lookup or self.scan:
                self.run(if_true, level + 1)
            if i >= len(text):
                return
            if text[i] != ":":
                raise ExpansionError(
                    f'":" expected at: "...{clip(if_true)}}}>>>{clip(text[i:], 20)}"'
                )
            i += 1
            op = ":"
        if op == ":":
            k = _skip_space(text, i)
            if k < len(text) and text[k] == "{":
                if_false, i = _curly_payload(text, k)
            else:
                if_false, i = text[i:], len(text)
            if not lookup or self.scan:
                self.run(if_false, level + 1)
            if i < len(text):
                raise ExpansionError(
                    f'unexpected input at: "...{clip(if_false)}}}>>>{clip(text[i:], 20)}"'
                )
            return
        if lookup and not self.scan:
            self.run(lookup, level + 1)

    def relational(self, text: str, i: int) -> tuple[str | None, int]:
        left, i = _curly_payload(text, i)
        j = i
        while j < len(text) and text[j] in OPERATOR_CHARS:
            j += 1
        op = text[i:j]
        if op not in RELATIONAL:
            raise ExpansionError(
                f'"==" or "!=" or "<" or "<=" or ">=" or ">" expected at: '
                f'"...{clip(left)}}}>>>{clip(text[i:], 20)}"'
            )
        k = j
        while k < len(text) and text[k].isascii() and text[k].isalnum():
            k += 1
        suffix = text[j:k]
        if suffix and suffix != "level":
            raise ExpansionError(f'bad operator suffix at: "...{op}>>>{clip(suffix)}"')
        k = _skip_space(text, k)
        if k >= len(text) or text[k] != "{":
            raise ExpansionError(
                f'"{{expression}}" expected at: "...{{{clip(left)}}} {op}>>>'
                f'{clip(text[k:], 20)}"'
            )
        right, k = _curly_payload(text, k)
        left_value, right_value = self.sub(left), self.sub(right)
        if self.scan:
            return None, k
        return (TRUE if _compare(left_value, op, right_value, bool(suffix)) else ""), k


def expand(value: str, lookup: Lookup) -> Expansion:
    """Expand value recursively; raise ExpansionError where Postfix reports a syntax error."""
    expander = _Expander(lookup, scan=False)
    expander.run(value, 0)
    return Expansion("".join(expander.out), expander.undefined)


def references(value: str) -> list[str]:
    """The parameter names a value refers to, in every branch (postconf's scan mode).

    A value with a syntax error yields the names found before the error, as postconf's scan
    does (it warns and goes on).
    """
    expander = _Expander(lambda _name: None, scan=True)
    with contextlib.suppress(ExpansionError):
        expander.run(value, 0)
    return expander.referenced
