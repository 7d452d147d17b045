"""``milter``: the DKIM, DMARC and Authentication-Results milter daemon.

Security: see postwarden.milter.daemon; the daemon reads its keys and binds its sockets,
then drops privileges before it serves. ``--check-config`` only reads the settings and the
keys and asks DNS for the published key records; it prints no private key material.
Standards: Postfix MILTER_README; RFC 6376 3.6.1 (key records, what the check compares).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from postwarden.cli.common import EXIT_FINDINGS, EXIT_OK, Subparsers, daemon_logging

if TYPE_CHECKING:
    from postwarden.settings import Settings


def add(commands: Subparsers) -> None:
    mil = commands.add_parser(
        "milter", help="run the milter (DKIM signing and verification, DMARC, "
                       "Authentication-Results)",
        description="Serve Postfix's smtpd_milters and non_smtpd_milters on the endpoints "
                    "of postwarden.toml [milter]; see docs/milter.md.")
    mil.add_argument("--config", metavar="FILE",
                     help="settings file (default /etc/postwarden/postwarden.toml; when "
                          "that is missing, built-in defaults)")
    mil.add_argument("--check-config", action="store_true",
                     help="validate the settings and the keys, check each key's published "
                          "DNS record against it (one line per key), and exit: 0 when all "
                          "match, 1 otherwise")
    mil.add_argument("--offline", action="store_true",
                     help="with --check-config: check the settings and keys, not DNS")
    mil.add_argument("--dry-run", action="store_true",
                     help="decide and log as usual, but change and reject no message")
    mil.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics over HTTP here")
    mil.add_argument("--nameserver", metavar="HOST[:PORT]",
                     help="DNS server to ask, instead of [milter] nameserver or "
                          "/etc/resolv.conf")
    mil.add_argument("--foreground", action="store_true",
                     help="stay in the foreground (the milter always does; for init "
                          "systems that pass it)")
    mil.set_defaults(handler=_milter)


def _milter(args: argparse.Namespace) -> int:
    """``milter``: load and check the settings, then bind, drop privileges and serve."""
    import dataclasses
    from pathlib import Path

    from postwarden import settings as config
    from postwarden.dns import parse_nameserver
    from postwarden.milter import service
    from postwarden.policy.server import parse_hostport

    loaded = config.load(Path(args.config) if args.config else None)
    milter = loaded.milter
    if args.nameserver:
        parse_nameserver(args.nameserver)  # UsageError on a bad one
        milter = dataclasses.replace(milter, nameserver=args.nameserver)
    if args.dry_run:
        milter = dataclasses.replace(milter, dry_run=True)
    loaded = dataclasses.replace(loaded, milter=milter)
    metrics = parse_hostport(args.metrics) if args.metrics else None
    if args.check_config:
        return _check(loaded, dns=not args.offline)
    daemon_logging()
    return service.run(loaded, metrics)


def _check(loaded: Settings, *, dns: bool) -> int:
    """``--check-config``: a summary line, then one line per key (opendkim-testkey)."""
    import asyncio

    from postwarden.dns import DnsResolver
    from postwarden.milter import service

    m = loaded.milter
    keys = service.load_keys(loaded.dkim)
    print(f"{loaded.path or 'built-in defaults'}: ok: " + service.summary(loaded))
    if not keys or not dns:
        return EXIT_OK
    resolver = DnsResolver(nameserver=m.nameserver or None, timeout=m.verify_budget)
    checks = asyncio.run(service.check_published(loaded.dkim, keys, resolver))
    for check in checks:
        print(check.line())
    return EXIT_OK if all(c.ok for c in checks) else EXIT_FINDINGS
