"""``probe``: behavioural checks of a live server over SMTP.

Security: talks only to the host given; see postwarden.probe.
Standards: the report contract of DESIGN.md.
"""

from __future__ import annotations

import argparse

from postwarden.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Subparsers,
)
from postwarden.errors import UsageError
from postwarden.severity import SEVERITIES


def add(commands: Subparsers) -> None:
    pro = commands.add_parser(
        "probe", help="test a live server's behaviour over SMTP, from outside",
        description="Talk SMTP to a server as an outside client would and report what it "
                    "accepts that it should refuse; see docs/probe.md.")
    pro.add_argument("target", nargs="?", metavar="HOST[:PORT]",
                     help="the server (default 127.0.0.1:25)")
    pro.add_argument("--source", metavar="ADDR", help="local address to probe from")
    pro.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="for each reply (default 10)")
    pro.add_argument("--format", choices=("text", "json"), default="text")
    pro.add_argument("--fail-on", choices=SEVERITIES, default="high",
                     help="exit 1 when a failed check is at least this severe (default high)")
    pro.add_argument("--only", action="append", metavar="ID", help="run only this check")
    pro.add_argument("--skip", action="append", metavar="ID", help="do not run this check")
    pro.add_argument("--submission", action=argparse.BooleanOptionalAction, default=None,
                     help="judge the port as a submission port (stricter TLS and AUTH); "
                          "default: by number, 587 and 465 are")
    pro.add_argument("--submission-port", type=int, action="append", default=[],
                     metavar="PORT", help="the server's submission port (STARTTLS) for the "
                                          "relay test (default with port 25: 587)")
    pro.add_argument("--submissions-port", type=int, action="append", default=[],
                     metavar="PORT", help="the server's implicit-TLS submission port for "
                                          "the relay test (default with port 25: 465)")
    pro.add_argument("--list", action="store_true", help="list the checks and exit")
    pro.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> int:
    """``probe``: the behavioural checks against a live server."""
    import asyncio

    from postwarden.audit.model import Severity
    from postwarden.probe import report, runner
    from postwarden.probe.model import Verdict

    if args.list:
        for c in runner.select(None, None):
            print(f"{c.id:24} {c.severity.value:8} {c.title}")
        return EXIT_OK
    host, port = runner.parse_target(args.target)
    if not 0 < args.timeout <= 300:
        raise UsageError("probe: --timeout must be more than 0 and at most 300 seconds")
    also = ([(p, "submission") for p in args.submission_port]
            + [(p, "submissions") for p in args.submissions_port]) or None
    result = asyncio.run(runner.run(host, port, source=args.source, timeout=args.timeout,
                                    only=args.only, skip=args.skip,
                                    submission=args.submission, also=also))
    print(report.to_json(result) if args.format == "json" else report.to_text(result))
    threshold = Severity(args.fail_on).rank
    failed = [r for r in result.results
              if r.verdict is Verdict.FAIL and r.severity.rank <= threshold]
    return EXIT_FINDINGS if failed else EXIT_OK
