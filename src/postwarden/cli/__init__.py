"""The ``postwarden`` command line: one subcommand module per family, one handler each.

Security: arguments come from the user; files named by them are read through the
parsers, which bound what they accept. No command here runs a shell.
Standards: exit codes of DESIGN.md (0 clean, 1 findings, 2 usage or input error).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence

from postwarden import __version__
from postwarden.cli import config, dkim, dmarc, harden, logs, milter, policy, probe
from postwarden.cli.common import EXIT_USAGE, Parser
from postwarden.errors import PostwardenError


def build_parser() -> Parser:
    parser = Parser(
        prog="postwarden",
        description="Audit, harden, enforce, probe and watch a Postfix mail server.",
    )
    parser.add_argument("--version", action="version", version=f"postwarden {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for family in (config, harden, probe, policy, dkim, milter, dmarc, logs):
        family.add(commands)
    return parser


def _tolerate_any_bytes() -> None:
    """Print bytes read from files as they were, even when they are not UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")


def main(argv: Sequence[str] | None = None) -> int:
    _tolerate_any_bytes()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.handler(args))
    except PostwardenError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
