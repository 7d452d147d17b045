"""``logs bans list|unban``: the watcher's bans as the store has them, and lifting one now.

Security: the network to unban comes from the command line and must be an address or a
network of hex digits, colons, dots and one ``/prefix``, at most 43 characters, that
``ipaddress`` accepts with no host bits set (no blanks, brackets, zone ids or names); it
reaches the store as a parameter and nft as canonical text. ``list`` opens a SQLite
store read-only and never writes Redis. Reasons and origins in the store quote log lines
or come from other hosts: they are printed escaped and cut.
nft and postmap run with argument lists, never a shell.
Standards: nft(8) (``delete element``), access(5), postmap(1); exit codes of DESIGN.md
(0 done, 1 nothing was banned there, 2 usage or input error).

Theory of operation
-------------------
``unban`` ends the ban in the store first (``lift``: its end becomes now; with
``--forget`` the record is dropped, so the next offence counts as the first), then takes
it out of this host's backend. A running watcher sees the store change (SQLite's
``data_version``, or the Redis channel) at its next tick and drops the ban from what it
applied, so it never re-adds it; watchers on other MX hosts sharing the Redis store do
the same. Unbanning a network lifts every ban inside it too; unbanning an address that
only a larger network ban covers is refused, naming that network.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from postwarden.cli.common import EXIT_FINDINGS, EXIT_OK, Parser, Subparsers
from postwarden.errors import PostwardenError, UsageError, clip

if TYPE_CHECKING:
    from postwarden.logs.bans_store import Ban, BanStore
    from postwarden.logs.watch_settings import IPNetwork, WatchSettings

MAX_TARGET = 43   # the longest IPv6 network in CIDR text
_TARGET = re.compile(r"[0-9A-Fa-f:.]+(/[0-9]{1,3})?")   # no zone ids, blanks or brackets


def add(actions: Subparsers) -> None:
    bans = actions.add_parser(
        "bans", help="list the watcher's bans, or lift one now",
        description="The bans of postwarden logs watch, from its store ([watch] store): "
                    "list them, or lift one at once. See docs/bans.md.")
    verbs = bans.add_subparsers(dest="bans_command", metavar="ACTION", parser_class=Parser,
                                required=True)
    listing = verbs.add_parser("list", help="the active bans (with --all also ended ones)",
                               description="The active bans in the store: network, "
                                           "detector, offence count, since, until, origin, "
                                           "reason. Reads only.")
    _config(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.add_argument("--all", action="store_true",
                         help="also the ended bans still remembered for escalation")
    listing.set_defaults(handler=_list)
    unban = verbs.add_parser(
        "unban", help="lift a ban now (everywhere the store is shared)",
        description="End the ban of ADDR or NET in the store, and remove it from this "
                    "host's nftables set or access map. Watchers sharing the store drop it "
                    "too. Exit 1 when nothing was banned there.")
    unban.add_argument("network", metavar="ADDR|NET",
                       help="an address (192.0.2.7, 2001:db8::7) or a network "
                            "(192.0.2.0/24); a network lifts the bans inside it too")
    _config(unban)
    unban.add_argument("--forget", action="store_true",
                       help="also forget its past offences (the next ban is a first one)")
    unban.set_defaults(handler=_unban)


def _config(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--config", metavar="FILE",
                     help="settings file with a [watch] table (default "
                          "/etc/postwarden/postwarden.toml when it exists)")


def _settings(args: argparse.Namespace) -> WatchSettings:
    from postwarden import settings

    return settings.load(Path(args.config) if args.config else None).watch


def parse_target(text: str) -> IPNetwork:
    """The network ``text`` names, strictly: ``192.0.2.7``, ``192.0.2.0/24``,
    ``2001:db8::/64``; an IPv4-mapped IPv6 address is its IPv4 address (as the watcher
    records it). ``UsageError`` for anything else."""
    if not 0 < len(text) <= MAX_TARGET or not _TARGET.fullmatch(text):
        raise UsageError(f"{clip(text)!r}: not an address or network")
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = "host bits set" if "host bits" in str(exc) else "not an address or network"
        raise UsageError(f"{clip(text)!r}: {reason}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.ip_network(mapped)
    return network


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _record(ban: Ban, now: float) -> dict[str, object]:
    return {"network": ban.network, "detector": ban.detector, "count": ban.count,
            "since": _when(ban.since), "until": _when(ban.expires),
            "remaining": max(0, int(ban.expires - now)), "active": ban.expires > now,
            "origin": ban.origin, "reason": ban.reason}


def _open(settings: WatchSettings, *, readonly: bool) -> BanStore:
    from postwarden.logs.bans_store import open_ban_store
    from postwarden.policy.store import StoreError

    try:
        return open_ban_store(settings.store, readonly=readonly)
    except StoreError as exc:
        raise PostwardenError(str(exc).replace(settings.store, settings.store_shown)) from None


def _list(args: argparse.Namespace) -> int:
    """``logs bans list``: the store's bans, as a table or JSON."""
    from postwarden.logs.bans import shown
    from postwarden.policy.store import StoreError

    settings = _settings(args)
    now = time.time()
    store = _open(settings, readonly=True)
    try:
        bans = store.listing(now, ended=args.all)
    except StoreError as exc:
        raise PostwardenError(str(exc)) from None
    finally:
        store.close()
    if args.format == "json":
        json.dump({"store": settings.store_shown, "time": _when(now),
                   "bans": [_record(b, now) for b in bans]}, sys.stdout, indent=2)
        print()
        return EXIT_OK
    header = ["network", "detector", "count", "since", "until", "origin", "reason"]
    rows = [[shown(b.network), clip(b.detector, 20), str(b.count), _when(b.since),
             _when(b.expires) + ("" if b.expires > now else " (ended)"), clip(b.origin, 40),
             clip(b.reason, 80)] for b in bans]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
              + "  " + row[-1])
    active = sum(b.expires > now for b in bans)
    print(f"{active} active ban(s)" + (f", {len(bans) - active} ended" if args.all else "")
          + f" in {settings.store_shown}")
    return EXIT_OK


def _inside(inner: str, outer: IPNetwork) -> bool:
    """Whether the network ``inner`` (text from the store) is ``outer`` or inside it."""
    try:
        net = ipaddress.ip_network(inner)
    except ValueError:
        return False   # a shared store may hold anything; the watcher ignores it too
    if isinstance(net, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return net.subnet_of(outer)
    if isinstance(net, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return net.subnet_of(outer)
    return False


def _unban(args: argparse.Namespace) -> int:
    """``logs bans unban``: lift in the store, then in this host's backend."""
    from postwarden.logs.bans import shown
    from postwarden.policy.store import StoreError

    target = parse_target(args.network)
    settings = _settings(args)
    now = time.time()
    store = _open(settings, readonly=False)
    try:
        active = store.active(now)
        chosen = [b for b in active if _inside(b.network, target)]
        for ban in chosen:
            store.lift(ban.network, now)
        forgotten = _forget(store, target, chosen, now) if args.forget else []
    except StoreError as exc:
        raise PostwardenError(str(exc)) from None
    finally:
        store.close()
    removed = _remove_local(settings, [str(target), *(b.network for b in chosen)], target)
    for ban in chosen:
        print(f"postwarden: unbanned {shown(ban.network)} (detector {ban.detector}, offence "
              f"{ban.count}, origin {clip(ban.origin, 40)}, was until {_when(ban.expires)})")
    for network in sorted(set(removed) - {b.network for b in chosen}):
        print(f"postwarden: removed {shown(network)} from {settings.ban.backend} (it was not "
              "in the store)")
    if forgotten:
        print(f"postwarden: forgot the past offences of {', '.join(map(shown, forgotten))}")
    if chosen or removed or forgotten:
        return EXIT_OK
    cover = next((b for b in active if _covers(b.network, target)), None)
    where = f": it is inside the banned network {cover.network}; unban that" if cover else ""
    print(f"postwarden: {shown(str(target))}: not banned{where}", file=sys.stderr)
    return EXIT_FINDINGS


def _covers(outer: str, target: IPNetwork) -> bool:
    try:
        return _inside(str(target), ipaddress.ip_network(outer))
    except ValueError:
        return False


def _forget(store: BanStore, target: IPNetwork, chosen: Sequence[Ban],
            now: float) -> list[str]:
    """Drop the records of ``target`` (and what was lifted inside it); the networks that
    had one."""
    remembered = {b.network for b in store.listing(now, ended=True)
                  if _inside(b.network, target)}
    networks = sorted(remembered | {b.network for b in chosen})
    for network in networks:
        store.forget(network)
    return networks


def _remove_local(settings: WatchSettings, networks: Sequence[str],
                  target: IPNetwork) -> list[str]:
    """Take ``networks`` (and, for nftables, every element inside ``target``) out of this
    host's backend; the ones that were there."""
    from postwarden.logs.bans import AccessMapBackend, BanError, NftBackend
    from postwarden.logs.bans_store import Ban

    try:
        if settings.ban.backend == "nftables":
            nft = NftBackend(settings.nftables)
            present = {n for n in nft.members() if n in networks or _inside(n, target)}
            for network in sorted(present):
                nft.lift(Ban(network, 0.0, 0.0), 0.0)
            return sorted(present)
        if settings.ban.backend == "access_map":
            return AccessMapBackend(settings.access_map).remove(sorted(set(networks)))
    except BanError as exc:
        raise PostwardenError(f"lifted in the store, but {settings.ban.backend}: {exc}") from None
    return []
