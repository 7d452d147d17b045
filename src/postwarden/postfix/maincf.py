"""Lossless main.cf: read, query and edit without disturbing anything else in the file.

Security: main.cf is untrusted text (see ``lexer``). Edits refuse names and values that
would change the file's structure (a newline in a value would smuggle in a second
parameter), and writing is atomic: temp file, fsync, rename, so a crash leaves the old file
or the new one, never a mix.
Standards: postconf(5) "main.cf file format"; Postfix 3.7 ``util/dict.c`` (last definition
wins; "overriding earlier entry" only when the value differs), ``util/split_nameval.c``.

Theory of operation
-------------------
``MainCf`` keeps the physical lines. Parsing groups them into logical lines (``lexer``) and
splits each at the first ``=`` into a ``Definition`` with its line numbers, as
``split_nameval()`` does: the name ends at whitespace or ``=``, the value loses its leading
and trailing whitespace and keeps everything else (continuation lines are joined without a
separator, so the whitespace that indents them stays inside the value; ``postconf`` prints
runs of whitespace as one space).

Edits rewrite only the physical lines of the definition concerned. ``set`` replaces the
effective (last) definition with one line and keeps the comment lines that were inside it;
list edits (``add_to_list``, ``remove_from_list``) change the one physical line that holds
the item. After an edit the model re-parses itself, so its view always matches its text.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import ConfigError, PostwardenError, clip
from postwarden.postfix import lexer

WRAP = 80  # columns; longer list values are written over continuation lines by set(wrap=)


class EditError(PostwardenError):
    """An edit postwarden refuses because it would corrupt the file."""


@dataclass(frozen=True)
class Definition:
    """One ``name = value`` logical line; ``first``/``last`` are 0-based physical lines."""

    name: str
    value: str
    first: int
    last: int

    @property
    def lineno(self) -> int:
        return self.first + 1


@dataclass(frozen=True)
class Override:
    """A later definition of a name whose value differs from the earlier one's."""

    name: str
    lineno: int
    old_value: str


def split_nameval(text: str) -> tuple[str, str] | str:
    """Split 'name = value' as split_nameval.c does; return an error string on failure."""
    space = lexer.SPACE
    i = 0
    while i < len(text) and text[i] in space:
        i += 1
    if i == len(text) or text[i] == "=":
        return "missing attribute name"
    start = i
    while i < len(text) and text[i] not in space and text[i] != "=":
        i += 1
    name = text[start:i]
    while i < len(text) and text[i] in space:
        i += 1
    if i == len(text) or text[i] != "=":
        return "missing '=' after attribute name"
    return name, text[i + 1 :].strip(space)


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write data to path through a temp file in the same directory, fsync, rename."""
    directory = path.parent
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _check_name(name: str) -> None:
    if not name or any(ch in lexer.SPACE or ch == "=" for ch in name) or name[0] == "#":
        raise EditError(f'invalid parameter name: "{clip(name)}"')


def _check_value(value: str) -> None:
    if "\n" in value or "\0" in value or "\r" in value:
        raise EditError(f'a value must be one line without NUL: "{clip(value)}"')


def _list_items(value: str) -> list[str]:
    """Items of a Postfix list value: separated by commas and whitespace, {} kept whole."""
    items: list[str] = []
    current: list[str] = []
    level = 0
    for ch in value:
        if ch == "{":
            level += 1
        elif ch == "}" and level > 0:
            level -= 1
        if level == 0 and (ch == "," or ch in lexer.SPACE):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(ch)
    if current:
        items.append("".join(current))
    return items


def _contains(items: list[str], item: str) -> bool:
    """Whether the words of item ('check_policy_service unix:x') appear in a row in items."""
    words = _list_items(item)
    return any(items[i : i + len(words)] == words for i in range(len(items)))


class MainCf:
    """A main.cf file: its exact text and the definitions Postfix reads from it."""

    def __init__(self, text: str, path: Path | str = "main.cf") -> None:
        self.path = Path(path)
        self.lines = lexer.split_physical(text)
        self._parse()

    @classmethod
    def read(cls, path: Path) -> MainCf:
        return cls(lexer.read_text(path), path)

    def _parse(self) -> None:
        logical, dropped = lexer.logical_lines(self.lines)
        lexer.check_lengths(logical, self.path)
        self.dropped = dropped
        self.definitions: list[Definition] = []
        for line in logical:
            parsed = split_nameval(line.text)
            if isinstance(parsed, str):
                raise ConfigError(self.path, line.lineno, f'{parsed}: "{clip(line.text)}"')
            name, value = parsed
            self.definitions.append(Definition(name, value, line.first, line.last))

    # -- reading ---------------------------------------------------------------------------

    def render(self) -> str:
        return "".join(self.lines)

    def params(self) -> dict[str, str]:
        """Effective name -> value: the last definition of each name wins."""
        return {d.name: d.value for d in self.definitions}

    def get(self, name: str) -> str | None:
        found = self.find(name)
        return found[-1].value if found else None

    def find(self, name: str) -> list[Definition]:
        """Every definition of name, in file order (the last one is effective)."""
        return [d for d in self.definitions if d.name == name]

    def __iter__(self) -> Iterator[Definition]:
        return iter(self.definitions)

    def __contains__(self, name: object) -> bool:
        return any(d.name == name for d in self.definitions)

    def overrides(self) -> list[Override]:
        """Later definitions that change an earlier value, as dict_load_fp() warns of."""
        seen: dict[str, str] = {}
        found: list[Override] = []
        for d in self.definitions:
            old = seen.get(d.name)
            if old is not None and old != d.value:
                found.append(Override(d.name, d.lineno, old))
            seen[d.name] = d.value
        return found

    def duplicates(self) -> dict[str, list[Definition]]:
        """Names defined more than once, with all their definitions."""
        by_name: dict[str, list[Definition]] = {}
        for d in self.definitions:
            by_name.setdefault(d.name, []).append(d)
        return {name: defs for name, defs in by_name.items() if len(defs) > 1}

    # -- editing ---------------------------------------------------------------------------

    def _newline(self) -> str:
        return "\r\n" if self.lines and self.lines[0].endswith("\r\n") else "\n"

    def _kept_comments(self, d: Definition) -> list[str]:
        return [
            line for line in self.lines[d.first + 1 : d.last + 1]
            if lexer.is_ignored(lexer.strip_newline(line))
        ]

    def _line_ending(self, d: Definition) -> str:
        last = self.lines[d.last]
        return "\r\n" if last.endswith("\r\n") else "\n" if last.endswith("\n") else ""

    def set(self, name: str, value: str, *, wrap: bool = False) -> None:
        """Give name this value: rewrite its effective definition, or append one.

        With ``wrap``, a long list value is written over continuation lines, one break
        after each comma that would pass ``WRAP`` columns (Postfix joins them again).
        """
        _check_name(name)
        _check_value(value)
        found = self.find(name)
        parts = [f"{name} = {value}".rstrip(lexer.SPACE)]
        if wrap:
            parts = self._wrapped(parts[0])
        if not found:
            if self.lines and not self.lines[-1].endswith("\n"):
                self.lines[-1] += self._newline()
            self.lines.extend(part + self._newline() for part in parts)
        else:
            d = found[-1]
            if d.value == value.strip(lexer.SPACE):
                return
            ending = self._line_ending(d)
            newline = ending or self._newline()
            replacement = [part + newline for part in parts[:-1]]
            replacement += [parts[-1] + ending, *self._kept_comments(d)]
            if not ending and len(replacement) > len(parts):
                replacement[len(parts) - 1] += self._newline()
            self.lines[d.first : d.last + 1] = replacement
        self._parse()

    @staticmethod
    def _wrapped(line: str) -> list[str]:
        """line broken after commas into continuation lines indented by four spaces."""
        if len(line) <= WRAP or "," not in line:
            return [line]
        out: list[str] = []
        current = ""
        for part in line.split(","):
            piece = part if not current else "," + part
            if current and len(current) + len(piece) > WRAP:
                out.append(current + ",")
                current = "    " + part.strip(lexer.SPACE)
            else:
                current += piece
        out.append(current)
        return out

    def remove(self, name: str, *, keep_last: bool = False) -> int:
        """Delete every definition of name (or every one but the effective one).

        Comment lines inside a removed definition stay. Returns how many were removed.
        """
        found = self.find(name)
        if keep_last:
            found = found[:-1]
        for d in reversed(found):
            self.lines[d.first : d.last + 1] = self._kept_comments(d)
        self._parse()
        return len(found)

    def add_to_list(self, name: str, item: str, *, before: str | None = None) -> None:
        """Add item to a list value (before the first item equal to ``before`` if given).

        Only the physical line that holds the neighbouring item changes, or one line is
        added; the item is not added twice.
        """
        _check_value(item)
        current = self.get(name)
        if current is None:
            self.set(name, item)
            return
        items = _list_items(current)
        if _contains(items, item):
            return
        d = self.find(name)[-1]
        if before is not None and before in items:
            index = self._line_holding(d, before)
            line = self.lines[index]
            position, _ = self._token_span(line, before, index == d.first)
            self.lines[index] = line[:position] + item + ", " + line[position:]
        elif d.last > d.first:
            last = self.lines[d.last]
            ending = self._line_ending(d)
            body = lexer.strip_newline(last).rstrip(lexer.SPACE)
            indent = last[: len(last) - len(last.lstrip(" \t"))]
            comma = "" if body.endswith(",") else ","
            self.lines[d.last] = body + comma + (ending or self._newline())
            self.lines.insert(d.last + 1, indent + item + ending)
        else:
            line = self.lines[d.first]
            ending = self._line_ending(d)
            body = lexer.strip_newline(line).rstrip(lexer.SPACE)
            glue = " " if body.endswith(",") or body.rstrip().endswith("=") else ", "
            self.lines[d.first] = body + glue + item + ending
        self._parse()

    def remove_from_list(self, name: str, item: str) -> bool:
        """Remove item from a list value, touching only the line that holds it."""
        current = self.get(name)
        if current is None or not _contains(_list_items(current), item):
            return False
        d = self.find(name)[-1]
        index = self._line_holding(d, item)
        line = self.lines[index]
        start, end = self._token_span(line, item, index == d.first)
        body_end = len(lexer.strip_newline(line))
        # Take the separators after the item when more follows on this line, else the ones
        # before it (never past the '=' of the first line).
        after = end
        while after < body_end and line[after] in " \t,":
            after += 1
        if after < body_end:
            new = line[:start] + line[after:]
        else:
            floor = line.index("=") + 1 if index == d.first else 0
            before = start
            while before > floor and line[before - 1] in " \t,":
                before -= 1
            new = line[:before] + line[end:]
        if index != d.first and not lexer.strip_newline(new).strip(lexer.SPACE + ","):
            del self.lines[index]
        else:
            self.lines[index] = new
        self._parse()
        return True

    def _line_holding(self, d: Definition, item: str) -> int:
        for index in range(d.first, d.last + 1):
            line = lexer.strip_newline(self.lines[index])
            if lexer.is_ignored(line) and index != d.first:
                continue
            text = line.split("=", 1)[1] if index == d.first else line
            if _contains(_list_items(text), item):
                return index
        raise EditError(f"{self.path}: cannot find {clip(item)} in {d.name}")

    @staticmethod
    def _token_span(line: str, item: str, is_first: bool) -> tuple[int, int]:
        """Start and end offsets of the words of item within one physical line."""
        offset = line.index("=") + 1 if is_first else 0
        body = line[offset:]
        count = len(_list_items(item))
        spans: list[tuple[int, int]] = []
        position = 0
        for token in _list_items(body):
            position = body.index(token, position)
            spans.append((position, position + len(token)))
            position += len(token)
        tokens = _list_items(body)
        for index in range(len(tokens)):
            if tokens[index : index + count] == _list_items(item):
                return offset + spans[index][0], offset + spans[index + count - 1][1]
        raise EditError(f"cannot find {clip(item)} in line {clip(line)}")

    def write(self, path: Path | None = None) -> None:
        """Write the file atomically (temp file, fsync, rename), keeping its mode."""
        write_atomic(path or self.path, lexer.encode(self.render()))
