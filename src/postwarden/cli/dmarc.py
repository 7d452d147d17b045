"""``dmarc report``: DMARC aggregate reports from the recorded evaluations."""

from __future__ import annotations

from postwarden.cli.common import Subparsers


def add(commands: Subparsers) -> None:
    del commands
