"""Physical and logical lines of main.cf and master.cf, as Postfix's readllines() sees them.

Security: the files are untrusted text. Reading is bounded (``MAX_FILE_BYTES``,
``MAX_LOGICAL_LINE``); NUL bytes are refused, since Postfix's C strings would silently cut
the line there; bytes that are not UTF-8 are kept as surrogate escapes so that a file
writes back byte for byte.
Standards: postconf(5) "main.cf file format", master(5) "master.cf file format";
Postfix 3.7 ``util/readlline.c``.

Theory of operation
-------------------
A file is a list of physical lines, each kept with its own ending, so that joining them
gives the file back unchanged. A logical line starts at a physical line whose first byte is
neither whitespace nor ``#``. Every following physical line that is empty, starts with
whitespace, or starts with ``#`` belongs to it: lines that are blank or whose first
non-blank character is ``#`` are ignored (they do not end the logical line), the others are
appended as they are, without their newline and without a separator. A continuation with no
logical line before it is dropped with Postfix's warning. ``#`` anywhere else is text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import ConfigError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_LOGICAL_LINE = 1024 * 1024
# Postfix's ISSPACE(): isascii(c) && isspace(c).
SPACE = " \t\n\v\f\r"


def is_ignored(line: str) -> bool:
    """A blank line or a comment line (first non-blank character is '#')."""
    stripped = line.lstrip(SPACE)
    return not stripped or stripped[0] == "#"


def continues(line: str) -> bool:
    """A physical line that cannot start a logical line: empty, indented or a comment."""
    return not line or line[0] in SPACE or line[0] == "#"


@dataclass(frozen=True)
class LogicalLine:
    """One logical line: its joined text and the physical lines it spans (0-based, inclusive).

    ``last`` is the last physical line that contributed text; ignored lines after it belong
    to no logical line as far as editing is concerned.
    """

    text: str
    first: int
    last: int

    @property
    def lineno(self) -> int:
        """1-based line number of the first physical line, as Postfix reports it."""
        return self.first + 1


@dataclass(frozen=True)
class Dropped:
    """A continuation line with nothing to continue (Postfix warns and ignores it)."""

    text: str
    first: int


def tokens(text: str, separators: str) -> list[str]:
    """Non-empty runs of text between separator characters (Postfix's mystrtok loop)."""
    found: list[str] = []
    current: list[str] = []
    for ch in text:
        if ch in separators:
            if current:
                found.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        found.append("".join(current))
    return found


def split_physical(text: str) -> list[str]:
    """Split into physical lines on '\\n' only, each keeping its ending."""
    lines = text.split("\n")
    result = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        result.append(lines[-1])
    return result


def strip_newline(line: str) -> str:
    return line[:-1] if line.endswith("\n") else line


def logical_lines(physical: list[str]) -> tuple[list[LogicalLine], list[Dropped]]:
    """Group physical lines into logical lines exactly as readllines() does."""
    found: list[LogicalLine] = []
    dropped: list[Dropped] = []
    parts: list[str] = []
    first = last = -1
    orphan = False

    def flush() -> None:
        if parts:
            text = "".join(parts)
            if orphan:
                dropped.append(Dropped(text, first))
            else:
                found.append(LogicalLine(text, first, last))

    for index, raw in enumerate(physical):
        line = strip_newline(raw)
        if not continues(line):
            flush()
            parts, first, last, orphan = [line], index, index, False
        elif not is_ignored(line):
            if not parts:
                first, orphan = index, True
            parts.append(line)
            last = index
    flush()
    return found, dropped


def decode(data: bytes, path: Path | str) -> str:
    """Bytes of a configuration file as text; refuse what Postfix could not read either."""
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, None, f"file is larger than {MAX_FILE_BYTES} bytes")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(path, data.count(b"\n", 0, nul) + 1, "binary data (NUL byte)")
    text = data.decode("utf-8", "surrogateescape")
    return text


def check_lengths(lines: list[LogicalLine], path: Path | str) -> None:
    for line in lines:
        if len(line.text) > MAX_LOGICAL_LINE:
            raise ConfigError(
                path, line.lineno, f"logical line longer than {MAX_LOGICAL_LINE} characters"
            )


def read_text(path: Path) -> str:
    """Read a configuration file; a missing or unreadable file is a ConfigError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except OSError as exc:
        raise ConfigError(path, None, exc.strerror or "cannot read") from None
    return decode(data, path)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
