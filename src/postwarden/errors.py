"""The one exception tree postwarden raises on purpose.

Security: messages may quote bytes read from outside; they are shown with ``repr``-style
escaping by whoever formats them, and are cut to a bounded length (see ``clip``).
Standards: none.

Every error a user can cause (a bad file, a bad option, a missing directory) is a
``PostwardenError``; the CLI turns it into one line on stderr and exit code 2. Anything
else escaping is a bug in postwarden.
"""

from __future__ import annotations

from pathlib import Path

MAX_QUOTE = 60


def clip(text: str, limit: int = MAX_QUOTE) -> str:
    """Quote untrusted text for an error line: printable, bounded, one line."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return shown.encode("unicode_escape", "backslashreplace").decode("ascii")


class PostwardenError(Exception):
    """An error the user can act on; rendered as one line."""


class ConfigError(PostwardenError):
    """A Postfix configuration file postwarden cannot read or parse."""

    def __init__(self, path: Path | str, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class UsageError(PostwardenError):
    """A command-line usage problem."""
