"""``milter``: the DKIM, DMARC and Authentication-Results milter daemon."""

from __future__ import annotations

from postwarden.cli.common import Subparsers


def add(commands: Subparsers) -> None:
    del commands
