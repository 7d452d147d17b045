"""The ``postwarden`` command line: one subcommand, one handler function.

Security: arguments come from the user; files named by them are read through the
parsers, which bound what they accept. No command here runs a shell.
Standards: exit codes of DESIGN.md (0 clean, 1 findings, 2 usage or input error).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from postwarden import __version__
from postwarden.errors import PostwardenError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="postwarden",
        description="Audit, harden, enforce, probe and watch a Postfix mail server.",
    )
    parser.add_argument("--version", action="version", version=f"postwarden {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        handler = args.handler
        return int(handler(args))
    except PostwardenError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
