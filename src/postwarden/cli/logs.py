"""``logs summary|watch|metrics|test-pattern``: one log parser for every log job.

Security: log lines are outside data; they go through ``postwarden.logs.parse`` only.
Standards: pflogsumm's totals; Prometheus text exposition format.
"""

from __future__ import annotations

from postwarden.cli import logs_watch
from postwarden.cli.common import Parser, Subparsers


def add(commands: Subparsers) -> None:
    lg = commands.add_parser("logs", help="summarise, watch and export Postfix and Dovecot logs")
    actions = lg.add_subparsers(dest="logs_command", metavar="ACTION", parser_class=Parser,
                                required=True)
    logs_watch.add(actions)
