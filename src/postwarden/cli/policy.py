"""``policyd``, ``spf check`` and ``greylist``: the policy service and its tools.

Security: see postwarden.policy; the daemon drops privileges before it serves.
Standards: SMTPD_POLICY_README; RFC 7208.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from postwarden.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Parser,
    Subparsers,
    daemon_logging,
)
from postwarden.errors import UsageError


def _add_policyd(commands: Subparsers) -> None:
    pol = commands.add_parser(
        "policyd", help="run the policy service (greylisting, SPF, rate limits)",
        description="Serve Postfix's check_policy_service on the endpoints of "
                    "postwarden.toml; see docs/policyd.md.")
    pol.add_argument("--config", metavar="FILE",
                     help="settings file (default /etc/postwarden/postwarden.toml; when "
                          "that is missing, built-in defaults)")
    pol.add_argument("--check-config", action="store_true",
                     help="validate the settings, print a one-line summary and exit")
    pol.add_argument("--dry-run", action="store_true",
                     help="decide and log as usual, but answer DUNNO to everything")
    pol.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve Prometheus metrics over HTTP here")
    pol.add_argument("--listen", action="append", metavar="ENDPOINT",
                     help="unix:PATH or tcp:HOST:PORT, replacing [policyd] listen "
                          "(repeatable)")
    pol.set_defaults(handler=_policyd)


def _policyd(args: argparse.Namespace) -> int:
    """``policyd``: load and check the settings, then bind, drop privileges and serve."""
    from pathlib import Path

    from postwarden import settings as config
    from postwarden.policy import server

    loaded = config.override(config.load(Path(args.config) if args.config else None),
                             listen=args.listen, dry_run=args.dry_run)
    metrics = server.parse_hostport(args.metrics) if args.metrics else None
    if args.check_config:
        print(loaded.summary())
        return EXIT_OK
    daemon_logging()
    return server.run(loaded, metrics, workers=loaded.policyd.workers)


def _add_spf(commands: Subparsers) -> None:
    spf = commands.add_parser("spf", help="SPF (RFC 7208) tools")
    spf_commands = spf.add_subparsers(dest="spf_command", metavar="ACTION",
                                      parser_class=Parser, required=True)
    chk = spf_commands.add_parser(
        "check", help="evaluate SPF for a client address, sender and HELO name",
        description="Run RFC 7208 check_host() and print the result word (pass, fail, "
                    "softfail, neutral, none, temperror, permerror), then the "
                    "explanation. An empty --sender checks postmaster@HELO. Exit 0 for "
                    "any SPF result.")
    chk.add_argument("--ip", required=True, metavar="ADDR", help="the client's IP address")
    chk.add_argument("--sender", required=True, metavar="ADDR",
                     help='the MAIL FROM address ("" for the null sender)')
    chk.add_argument("--helo", default="", metavar="NAME", help="the HELO/EHLO name")
    chk.add_argument("--nameserver", metavar="HOST[:PORT]",
                     help="ask this DNS server instead of /etc/resolv.conf's")
    chk.add_argument("--timeout", type=float, default=20.0, metavar="S",
                     help="time budget for the whole check in seconds (default 20)")
    chk.set_defaults(handler=_spf_check)


def _spf_check(args: argparse.Namespace) -> int:
    """``spf check``: one RFC 7208 check; the result word, then the explanation."""
    import asyncio
    import ipaddress

    from postwarden import dns
    from postwarden.policy.spf import check_identity, clean

    try:
        ipaddress.ip_address(args.ip)
    except ValueError:
        raise UsageError(f"--ip {args.ip!r}: not an IP address") from None
    if not 0 < args.timeout <= 300:
        raise UsageError("--timeout: must be more than 0 and at most 300 seconds")
    if not args.helo and not args.sender:
        raise UsageError("--helo: needed when --sender is empty (postmaster@HELO is checked)")
    resolver = dns.DnsResolver(nameserver=args.nameserver, timeout=args.timeout)
    answer = asyncio.run(check_identity(args.ip, args.sender, args.helo, resolver,
                                        budget_seconds=args.timeout))
    print(f"{answer.result.value} {clean(answer.explanation, 1000)}")
    return EXIT_OK


def _add_greylist(commands: Subparsers) -> None:
    grey = commands.add_parser(
        "greylist", help="inspect and edit the policy service's greylist state",
        description="List, delete and whitelist entries in the store of [store] url "
                    "(SQLite or Redis), while the service runs.")
    actions = grey.add_subparsers(dest="greylist_command", metavar="ACTION",
                                  parser_class=Parser, required=True)
    for name, text in (("list", "print triplets (first/last seen, state) and the "
                                "auto-whitelist"),
                       ("delete", "delete triplets by key, client network or sender"),
                       ("whitelist", "add a client address to the auto-whitelist")):
        sub = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("--config", metavar="FILE",
                         help="settings file (default /etc/postwarden/postwarden.toml)")
        sub.add_argument("--store", metavar="URL", help="store URL instead of [store] url")
        sub.set_defaults(handler=_greylist)
        if name == "list":
            sub.add_argument("--format", choices=("text", "json"), default="text")
        elif name == "delete":
            sub.add_argument("key", nargs="?", metavar="KEY", help="NET/SENDER/RECIPIENT")
            sub.add_argument("--client", metavar="NET",
                             help="a client address or network (its /24 or /64), or an "
                                  "SPF-validated domain")
            sub.add_argument("--sender", metavar="ADDR", help="a sender address")
        else:
            sub.add_argument("client", metavar="CLIENT_IP")


def _greylist(args: argparse.Namespace) -> int:
    """``greylist list|delete|whitelist`` on the service's store."""
    import asyncio
    import ipaddress
    import time
    from pathlib import Path

    from postwarden import settings as config
    from postwarden.policy.greylist import normalize_sender
    from postwarden.policy.store import open_store

    settings = config.load(Path(args.config) if args.config else None)
    loaded = settings.greylist
    now = int(time.time())
    command = args.greylist_command
    client = sender = None
    address = ""
    if command == "delete":
        if args.key is None and args.client is None and args.sender is None:
            raise UsageError("greylist delete: give KEY, --client or --sender")
        if args.client is not None:
            try:
                net = ipaddress.ip_network(args.client, strict=False)
                bits = min(net.prefixlen, 24 if net.version == 4 else 64)
                client = str(net.supernet(new_prefix=bits).network_address)
            except ValueError:
                client = args.client.lower()
        sender = normalize_sender(args.sender).lower() if args.sender is not None else None
    elif command == "whitelist":
        try:
            address = str(ipaddress.ip_address(args.client))
        except ValueError:
            raise UsageError(f"greylist whitelist: not an IP address: {args.client!r}") from None

    async def work() -> int:
        store = open_store(args.store or settings.store.url)
        try:
            if command == "list":
                triplets = await store.list_triplets(now)
                clients = await store.list_awl(now)
                _greylist_print(triplets, clients, loaded.delay, args.format)
                return EXIT_OK
            if command == "delete":
                gone = await store.delete_triplets(key=args.key, client=client,
                                                   sender=sender)
                print(f"deleted {gone} triplet{'s' if gone != 1 else ''}")
                return EXIT_OK if gone else EXIT_FINDINGS
            count = await store.awl_set(address, now, max(1, loaded.auto_whitelist_clients),
                                        loaded.max_age)
            print(f"whitelisted {address} (count {count})")
            return EXIT_OK
        finally:
            await store.close()
    return asyncio.run(work())


def _greylist_print(triplets: Sequence[object], clients: Sequence[object], delay: int,
                    fmt: str) -> None:
    import time

    from postwarden.policy.store import AwlEntry, TripletEntry

    def when(seconds: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    rows = [{"key": t.key, "client": t.client, "sender": t.sender, "recipient": t.recipient,
             "first_seen": when(t.first), "last_seen": when(t.last),
             "state": "passed" if t.passed(delay) else "pending"}
            for t in triplets if isinstance(t, TripletEntry)]
    awl = [{"client": a.client, "count": a.count, "last_seen": when(a.last)}
           for a in clients if isinstance(a, AwlEntry)]
    if fmt == "json":
        print(json.dumps({"triplets": rows, "auto_whitelist": awl}, indent=2))
        return
    for row in rows:
        print(f"{row['state']:<8} {row['first_seen']} {row['last_seen']} {row['key']}")
    for entry in awl:
        print(f"awl      {entry['last_seen']} count={entry['count']} {entry['client']}")
    print(f"{len(rows)} triplets, {len(awl)} auto-whitelisted clients")


def add(commands: Subparsers) -> None:
    _add_policyd(commands)
    _add_spf(commands)
    _add_greylist(commands)
