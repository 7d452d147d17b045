"""Typed, strict reading of postwarden.toml tables, shared by every section's reader.

Security: the file is trusted as configuration but checked as input: a ``Section`` hands
out values by key with their type and range checked, refuses control characters in
strings, and remembers which keys it handed out so that the rest can be refused as
unknown; every refusal is one ``ConfigError`` naming the file and ``section.key``.
Standards: TOML 1.0 (the types ``tomllib`` gives); postconf(5) "time units" (s, m, h, d, w).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from postwarden.errors import ConfigError, clip

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_DURATION = 366 * 86400
_DURATION = re.compile(r"([0-9]{1,9})([smhdw]?)\Z")
T = TypeVar("T")


def parse_duration(value: object) -> int:
    """Seconds from an integer or a string with one postconf(5) time unit ("5m", "35d")."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := _DURATION.match(value.strip())):
        seconds = int(match[1]) * UNITS[match[2] or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration (seconds, or a number with s, m, h, "
                         "d or w)")
    if not 0 <= seconds <= MAX_DURATION:
        raise ValueError(f"{value!r} is out of range (0 to {MAX_DURATION} seconds)")
    return seconds


class Section:
    """Typed access to one table; remembers the keys read so the rest can be refused."""

    def __init__(self, path: Path, name: str, table: object) -> None:
        self.path, self.name = path, name
        if not isinstance(table, Mapping):
            self.fail("", "expected a table")
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def fail(self, key: str, reason: str) -> NoReturn:
        where = f"{self.name}.{clip(key)}" if key else self.name
        raise ConfigError(self.path, None, f"{where}: {reason}")

    def get(self, key: str, kind: type | tuple[type, ...], what: str,
             default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            self.fail(key, f"expected {what}, got {type(value).__name__}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, "true or false", default))

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value: int = self.get(key, int, "an integer", default)
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low} to {high})")
        return value

    def string(self, key: str, default: T, choices: tuple[str, ...] = ()) -> str | T:
        value: str | T = self.get(key, str, "a string", default)
        if isinstance(value, str) and any(not c.isprintable() for c in value):
            self.fail(key, "control characters are not allowed")
        if isinstance(value, str) and choices:
            for choice in choices:
                if value.lower() == choice.lower():
                    return choice
            self.fail(key, f"{clip(value)!r}: expected one of {', '.join(choices)}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, "a list of strings", list(default))
        if not all(isinstance(x, str) for x in value):
            self.fail(key, "expected a list of strings")
        return tuple(value)

    def convert(self, key: str, value: Any, how: Callable[[Any], T]) -> T:
        try:
            return how(value)
        except ValueError as exc:
            self.fail(key, str(exc))

    def build(self, kind: Callable[..., T], **values: Any) -> T:
        """The section's dataclass; its own checks (``__post_init__``) name the key."""
        try:
            return kind(**values)
        except ValueError as exc:
            key, _, reason = str(exc).partition(": ")
            if key in values:
                self.fail(key, reason)
            self.fail("", str(exc))

    def duration(self, key: str, default: int, low: int = 0) -> int:
        self.used.add(key)
        if key not in self.table:
            return default
        seconds = self.convert(key, self.table[key], parse_duration)
        if seconds < low:
            self.fail(key, f"{self.table[key]!r} is below the minimum of {low} s")
        return seconds

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            self.fail(unknown[0], "unknown key")
