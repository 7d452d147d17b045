"""Lossless master.cf: services, their ``-o`` overrides, and commented-out services.

Security: master.cf is untrusted text (see ``lexer``). Field checks follow postconf's, and a
malformed entry is a ConfigError naming file and line. Edits refuse values with newlines
and write atomically (``maincf.write_atomic``).
Standards: master(5); Postfix 3.7 ``postconf/postconf_master.c`` (field checks, ``-o``
normalisation, ``{ }`` grouping), ``util/mystrtok.c`` (``mystrtokq``), ``util/extpar.c``.

Theory of operation
-------------------
Logical lines come from ``lexer`` exactly as for main.cf. Each is split on blanks into
words, where ``{ ... }`` (balanced) is one word, then normalised as postconf does: ``-oname``
becomes ``-o name``; a ``{ name = value }`` after ``-o`` loses its braces and the blanks
around ``=``; a braced non-option argument loses its braces. The first eight words are the
fields ``service type private unpriv chroot wakeup maxproc command``; the rest are the
command's arguments. A service is identified by name and type (``smtp/inet`` is not
``smtp/unix``); when an entry appears twice master(8) uses the last one.

A comment line that parses as a service entry (``#submission inet n - y - - smtpd``),
together with the ``#  -o ...`` comment lines after it, is a commented-out service: Debian's
master.cf ships submission and smtps that way, and harden enables them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import ConfigError, PostwardenError, clip
from postwarden.postfix import lexer
from postwarden.postfix.maincf import EditError, split_nameval, write_atomic

BLANKS = " \t\r\n"
TYPES = ("unix", "fifo", "inet", "pass", "unix-dgram")
FIELDS = ("service", "type", "private", "unpriv", "chroot", "wakeup", "maxproc", "command")


class MasterEntryError(PostwardenError):
    """A master.cf entry postconf would refuse (its message is postconf's)."""


def split_words(text: str, separators: str = BLANKS) -> list[str]:
    """mystrtokq(): split on separators, keeping a balanced '{...}' (and what is glued to
    it) as one word."""
    words: list[str] = []
    i, end = 0, len(text)
    while True:
        while i < end and text[i] in separators:
            i += 1
        if i >= end:
            return words
        level, start = 0, i
        while i < end:
            ch = text[i]
            if ch == "{":
                level += 1
            elif level > 0 and ch == "}":
                level -= 1
            elif level == 0 and ch in separators:
                break
            i += 1
        words.append(text[start:i])


def extract_braced(word: str, strip: bool = True) -> str:
    """'{ text }' -> 'text', as extpar() does (errors are tolerated)."""
    level, close = 1, -1
    for index in range(1, len(word)):
        if word[index] == "{":
            level += 1
        elif word[index] == "}":
            level -= 1
            if level == 0:
                close = index
                break
    inner = word[1:close] if close > 0 else word[1:]
    return inner.strip(lexer.SPACE) if strip else inner


def postconf_args(words: list[str]) -> list[str]:
    """Daemon arguments in postconf's canonical form, as ``postconf -M`` shows them.

    A literal port of pcf_normalize_daemon_args(), quirk included: postconf splits a glued
    option at any later 'o', so ``-osyslog_name=foo`` shows as ``-o sysl -o g_name=f ...``.
    The daemons themselves use getopt and read it correctly (see ``daemon_options``); the
    audit flags the difference.
    """
    out = list(words)
    field = 0
    while field < len(out):
        arg = out[field]
        if not arg.startswith("-") or arg == "--":
            break
        split = arg.find("o", 2)
        if split > 1:
            # "-stuffozz" -> "-stuff" "-ozz"
            out[field : field + 1] = [arg[:split], "-" + arg[split:]]
            arg = out[field]
        if len(arg) < 2 or arg[1] != "o":
            field += 1
            continue
        if len(arg) > 2:
            out[field : field + 1] = ["-o", arg[2:]]
            field += 1
            extract = out[field].startswith("{")
        elif field + 1 < len(out):
            field += 1
            extract = out[field].startswith("{")
        else:
            extract = False
        if extract:
            inner = extract_braced(out[field])
            parsed = split_nameval(inner)
            out[field] = inner if isinstance(parsed, str) else f"{parsed[0]}={parsed[1]}"
        field += 1
    for rest in range(field, len(out)):
        if out[rest].startswith("{"):
            out[rest] = extract_braced(out[rest])
    return out


# multi_server.c and friends: GETOPT(argc, argv, "cdDi:lm:n:o:s:St:uvVz").
VALUE_OPTIONS = "imnost"


def daemon_options(words: list[str]) -> list[tuple[str, str]]:
    """(option letter, value) pairs as the daemon's getopt() reads them from master.cf words.

    master(8) passes each word with its braces removed (extpar); getopt reads clustered
    flags and takes an option's value from the rest of the word or the next word.
    """
    args = [extract_braced(w) if w.startswith("{") else w for w in words]
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            break
        j = 1
        while j < len(arg):
            letter = arg[j]
            if letter in VALUE_OPTIONS:
                if j + 1 < len(arg):
                    found.append((letter, arg[j + 1 :]))
                elif i + 1 < len(args):
                    i += 1
                    found.append((letter, args[i]))
                break
            found.append((letter, ""))
            j += 1
        i += 1
    return found


def check_fields(words: list[str], text: str) -> str | None:
    """postconf's per-field checks; the error message, or None when the entry is valid."""
    if len(words) < len(FIELDS):
        return "bad field count"
    shown = clip(text.replace("\n", " "), 80)

    def invalid(index: int) -> str:
        return f'invalid {FIELDS[index]} field "{clip(words[index], 40)}" in "{shown}"'

    if words[1] not in TYPES:
        return invalid(1)
    for index in (2, 3, 4):
        if words[index] not in ("y", "n", "-"):
            return invalid(index)
    wakeup = words[5].removesuffix("?")
    if wakeup != "-" and not all("0" <= ch <= "9" for ch in wakeup):
        return invalid(5)
    if words[6] != "-" and not all("0" <= ch <= "9" for ch in words[6]):
        return invalid(6)
    return None


@dataclass(frozen=True)
class Service:
    """One master.cf entry, with physical lines ``first``..``last`` (0-based, inclusive)."""

    name: str
    type: str
    private: str
    unpriv: str
    chroot: str
    wakeup: str
    maxproc: str
    command: str
    words: tuple[str, ...]
    first: int
    last: int
    commented: bool = False

    @property
    def lineno(self) -> int:
        return self.first + 1

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.name, self.type, self.private, self.unpriv, self.chroot,
                self.wakeup, self.maxproc, self.command)

    @property
    def args(self) -> tuple[str, ...]:
        """The command's arguments as postconf shows them (see ``postconf_args``)."""
        return tuple(postconf_args(list(self.words)))

    def postconf_params(self) -> dict[str, str]:
        """The ``-o`` settings as postconf reads them for ``-P`` (last one of a name wins)."""
        found: dict[str, str] = {}
        args = self.args
        i = 0
        while i < len(args) and args[i].startswith("-") and args[i] != "--":
            if args[i][1:2] == "o" and i + 1 < len(args):
                parsed = split_nameval(args[i + 1])
                if not isinstance(parsed, str):
                    found[parsed[0]] = parsed[1]
                i += 1
            i += 1
        return found

    def overrides(self) -> dict[str, str]:
        """``-o name=value`` settings as the daemon applies them (the last one wins)."""
        found: dict[str, str] = {}
        for letter, value in daemon_options(list(self.words)):
            if letter == "o":
                parsed = split_nameval(value)
                if not isinstance(parsed, str):
                    found[parsed[0]] = parsed[1]
        return found

    @property
    def process_name(self) -> str:
        return self.command.rsplit("/", 1)[-1]


def parse_entry(text: str, first: int, last: int, commented: bool = False) -> Service | str:
    """A Service from one logical line, or postconf's error message."""
    words = split_words(text)
    error = check_fields(words, text)
    if error is not None:
        return error
    name, type_, private, unpriv, chroot, wakeup, maxproc, command = words[: len(FIELDS)]
    return Service(name, type_, private, unpriv, chroot, wakeup, maxproc, command,
                   words=tuple(words[len(FIELDS):]), first=first, last=last,
                   commented=commented)


def _commented_services(lines: list[str]) -> list[Service]:
    """Services written as comment lines: '#name type ...' plus '#  -o ...' continuations."""
    found: list[Service] = []
    index = 0
    while index < len(lines):
        line = lexer.strip_newline(lines[index])
        body = line[1:] if line.startswith("#") else ""
        if not body or body[0] in lexer.SPACE or body.startswith("#"):
            index += 1
            continue
        parts, last = [body], index
        while last + 1 < len(lines):
            nxt = lexer.strip_newline(lines[last + 1])
            if not (nxt.startswith("#") and nxt[1:2] in (" ", "\t") and nxt[1:].strip()):
                break
            parts.append(nxt[1:])
            last += 1
        entry = parse_entry("".join(parts), index, last, commented=True)
        if isinstance(entry, Service):
            found.append(entry)
            index = last + 1
        else:
            index += 1
    return found


class MasterCf:
    """A master.cf file: its exact text, its services and its commented-out services."""

    def __init__(self, text: str, path: Path | str = "master.cf") -> None:
        self.path = Path(path)
        self.lines = lexer.split_physical(text)
        self._parse()

    @classmethod
    def read(cls, path: Path) -> MasterCf:
        return cls(lexer.read_text(path), path)

    def _parse(self) -> None:
        logical, self.dropped = lexer.logical_lines(self.lines)
        lexer.check_lengths(logical, self.path)
        self.services: list[Service] = []
        for line in logical:
            entry = parse_entry(line.text, line.first, line.last)
            if isinstance(entry, str):
                raise ConfigError(self.path, line.lineno, entry)
            self.services.append(entry)
        self.commented = _commented_services(self.lines)

    def render(self) -> str:
        return "".join(self.lines)

    def __iter__(self) -> Iterator[Service]:
        return iter(self.services)

    def find(self, name: str, type_: str) -> list[Service]:
        return [s for s in self.services if s.name == name and s.type == type_]

    def get(self, name: str, type_: str) -> Service | None:
        """The entry master(8) uses for name/type: the last one."""
        found = self.find(name, type_)
        return found[-1] if found else None

    def duplicates(self) -> dict[str, list[Service]]:
        by_key: dict[str, list[Service]] = {}
        for service in self.services:
            by_key.setdefault(service.key, []).append(service)
        return {key: entries for key, entries in by_key.items() if len(entries) > 1}

    # -- editing ---------------------------------------------------------------------------

    def _ending(self, index: int) -> str:
        line = self.lines[index]
        return "\r\n" if line.endswith("\r\n") else "\n"

    def set_override(self, name: str, type_: str, param: str, value: str) -> None:
        """Set ``-o param=value`` on a service, rewriting only the line that holds it."""
        service = self._require(name, type_)
        for ch in param + value:
            if ch in "\n\r\0":
                raise EditError(f"invalid override: {clip(param)}={clip(value)}")
        if not param or any(ch in BLANKS or ch in "={}" for ch in param):
            raise EditError(f'invalid parameter name: "{clip(param)}"')
        word = f"{param}={value}" if not any(ch in BLANKS for ch in value) else (
            f"{{ {param} = {value} }}")
        if service.overrides().get(param) == value:
            return
        for index in range(service.first, service.last + 1):
            line = lexer.strip_newline(self.lines[index])
            if lexer.is_ignored(line) and index != service.first:
                continue
            words = split_words(line)
            for position in range(len(words)):
                if self._override_name(words, position) == param:
                    self._replace_override(index, words, position, word)
                    self._parse()
                    return
        last = self.lines[service.last]
        indent = "  "
        if service.last > service.first:
            indent = last[: len(last) - len(last.lstrip(" \t"))] or "  "
        self.lines.insert(service.last + 1, f"{indent}-o {word}{self._ending(service.last)}")
        if not last.endswith("\n"):
            self.lines[service.last] = last + "\n"
            self.lines[service.last + 1] = self.lines[service.last + 1].rstrip("\n")
        self._parse()

    def remove_override(self, name: str, type_: str, param: str) -> bool:
        """Remove every ``-o param=...`` of a service; only lines holding one change."""
        service = self._require(name, type_)
        removed = False
        for index in range(service.last, service.first - 1, -1):
            line = lexer.strip_newline(self.lines[index])
            if lexer.is_ignored(line) and index != service.first:
                continue
            words = split_words(line)
            keep: list[str] = []
            skip = 0
            for position, word in enumerate(words):
                if skip:
                    skip -= 1
                    continue
                target = self._override_name(words, position)
                if target == param:
                    removed = True
                    skip = 1 if word == "-o" else 0
                    continue
                keep.append(word)
            if len(keep) != len(words):
                indent = line[: len(line) - len(line.lstrip(" \t"))]
                if index != service.first and not keep:
                    del self.lines[index]
                else:
                    ending = self.lines[index][len(line):]
                    self.lines[index] = indent + " ".join(keep) + ending
        self._parse()
        return removed

    @staticmethod
    def _override_name(words: list[str], position: int) -> str | None:
        """The parameter named by the -o at words[position], if it is one."""
        word = words[position]
        if word == "-o" and position + 1 < len(words):
            value = words[position + 1]
        elif word.startswith("-o") and len(word) > 2:
            value = word[2:]
        else:
            return None
        if value.startswith("{"):
            value = extract_braced(value)
        parsed = split_nameval(value)
        return None if isinstance(parsed, str) else parsed[0]

    def _replace_override(self, index: int, words: list[str], position: int, word: str) -> None:
        line = self.lines[index]
        body = lexer.strip_newline(line)
        ending = line[len(body):]
        indent = body[: len(body) - len(body.lstrip(" \t"))]
        if words[position] == "-o":
            words[position + 1] = word
        else:
            words[position : position + 1] = ["-o", word]
        self.lines[index] = indent + " ".join(words) + ending

    def _require(self, name: str, type_: str) -> Service:
        service = self.get(name, type_)
        if service is None:
            raise EditError(f"{self.path}: no service {name}/{type_}")
        return service

    def add_service(self, entry: str) -> None:
        """Append a service entry (one or more lines of master.cf text)."""
        lines = lexer.split_physical(entry if entry.endswith("\n") else entry + "\n")
        logical, _ = lexer.logical_lines(lines)
        if len(logical) != 1:
            raise EditError("add_service takes exactly one master.cf entry")
        error = parse_entry(logical[0].text, 0, 0)
        if isinstance(error, str):
            raise EditError(error)
        if self.lines and not self.lines[-1].endswith("\n"):
            self.lines[-1] += "\n"
        self.lines.extend(lines)
        self._parse()

    def write(self, path: Path | None = None) -> None:
        write_atomic(path or self.path, lexer.encode(self.render()))
