"""What every subcommand module of the command line shares: the parser, exit codes, warnings.

Security: none of its own; argument values are checked by each command.
Standards: exit codes of DESIGN.md (0 clean, 1 findings, 2 usage or input error).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, TypeAlias

from postwarden.errors import UsageError

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
DEFAULT_CONFIG_DIR = "/etc/postfix"


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


if TYPE_CHECKING:  # argparse's class is generic only to the type checker
    Subparsers: TypeAlias = argparse._SubParsersAction[Parser]
else:
    Subparsers = argparse._SubParsersAction


def warn(message: str) -> None:
    print(f"postwarden: warning: {message}", file=sys.stderr)


def daemon_logging() -> None:
    """Log lines to standard error (the journal, under systemd) as ``LEVEL: message``.

    A daemon logs a line per decision, so each line should cost little: the logging
    module is told not to look up the caller's file and line or the thread and process
    names for every record (the logging HOWTO's "Optimization" settings), none of which
    this format shows, and the lines of one event-loop pass leave in one write
    (``postwarden.logbatch``)."""
    import logging

    from postwarden.logbatch import FORMAT, LoopBatchedHandler
    logging._srcfile = None  # as the HOWTO says
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(level=logging.INFO, handlers=[LoopBatchedHandler(sys.stderr)],
                        format=FORMAT)
