"""Bans: findings become nftables set elements or Postfix access-map entries, with expiry.

Security: the only outside data that reaches a backend is an address a detector saw in a
log line, and it gets there only after ``ipaddress`` parsed it and printed it back in
canonical form; loopback, the ignore list and mynetworks are never banned, and a network
is never aggregated when it overlaps one of them. ``nft`` runs with an argument list and
reads its script on stdin (``nft -f -``); ``postmap`` and a reload command are argument
lists from the settings. The access map is written to a temp file, fsynced and renamed.
Standards: nftables sets with ``flags interval, timeout`` (nft(8) "SETS", "ELEMENTS");
access(5) (client address patterns, REJECT); postmap(1); fail2ban's ``bantime.increment``
and its recidive jail, as the model for escalation.

Theory of operation
-------------------
1. postwarden owns one nftables table, ``inet <table>``, with a set per address family and
   one input chain that drops TCP to the mail ports from members of either set. A full
   sync replaces the table in one transaction (``add table``, ``delete table``, then the
   whole definition with every active ban as an element with its remaining timeout), so
   nothing else in the ruleset is touched and there is no moment without the rules. A new
   ban is one ``add element`` (after deleting the single addresses a new network ban
   covers: interval sets refuse overlaps); any failure falls back to a full sync. The
   kernel removes an element when its timeout runs out, so expiry needs no command.
2. The access-map backend rewrites its whole map from the active bans on every change,
   then runs ``postmap`` for indexed types (hash, lmdb). smtpd notices a changed indexed
   table and restarts before its next connection; cidr and texthash tables are read at
   process start, so for them a ``reload_command`` (``postfix reload``) is needed.
3. The manager keeps the active bans it applied (``applied``) and a heap of their expiry
   times. ``offend`` turns a finding into a ban: the address, or its /24 (/64) once
   ``aggregate`` distinct addresses of that network offended within
   ``aggregate_window``; the duration is ``duration * factor ** (n - 1)`` for the n-th ban
   of that network remembered by the store, at most ``max_duration``. ``tick`` expires
   bans whose time is up and, when the store says another watcher changed something (or
   every ``sync_interval``), re-reads the active bans and applies the difference: a ban
   lifted in the store (``logs bans unban``, here or on another host) leaves ``applied``
   and the backend, so no later full sync puts it back. A ban from the store that
   overlaps a network protected here (another host may protect less) is never applied.
4. A store outage is logged and the ban still applied locally; it is kept aside
   (``_unstored``) and written to the store at each sync until that works, and a sync
   does not lift it meanwhile for being missing from the store. In dry-run mode the
   manager uses a store in memory and no backend: it logs what it would do.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import json
import logging
import math
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from postwarden.errors import PostwardenError, clip
from postwarden.logs.bans_store import Ban, BanStore
from postwarden.logs.detect import Distinct, Finding
from postwarden.logs.watch_settings import (
    AccessMapSettings,
    BanSettings,
    IPNetwork,
    NftSettings,
    WatchSettings,
)
from postwarden.policy.store import StoreError
from postwarden.postfix.maincf import write_atomic

log = logging.getLogger(__name__)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
COMMAND_TIMEOUT = 60


class BanError(PostwardenError):
    """A ban backend failed (nft or postmap refused, or could not run)."""


def address_of(text: str) -> IPAddress | None:
    """A client address as a log shows it (``192.0.2.7``, ``2001:db8::1``, ``[::1]``,
    ``::ffff:192.0.2.7``), or None."""
    candidate = text.strip().strip("[]")
    if candidate[:5].lower() == "ipv6:":
        candidate = candidate[5:]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def shown(network: str) -> str:
    """A network for a log line: a single address without its /32 or /128."""
    return network.removesuffix("/32").removesuffix("/128")


class Protection:
    """The networks never banned."""

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.v4 = tuple(n for n in networks if n.version == 4)
        self.v6 = tuple(n for n in networks if n.version == 6)

    def covers(self, address: IPAddress) -> bool:
        nets: Sequence[IPNetwork] = self.v4 if address.version == 4 else self.v6
        return address.is_loopback or any(address in n for n in nets)

    def overlaps(self, network: IPNetwork) -> bool:
        nets: Sequence[IPNetwork] = self.v4 if network.version == 4 else self.v6
        return network.network_address.is_loopback or any(network.overlaps(n) for n in nets)


class Backend(Protocol):
    name: str

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        """Make the enforced set exactly ``bans``."""
    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        """Enforce a new ban; ``replaces`` are bans it supersedes (covered addresses)."""
    def lift(self, ban: Ban, now: float) -> None:
        """Stop enforcing a ban before its time (lifted elsewhere)."""
    def expire(self, ban: Ban, now: float) -> None:
        """A ban's time is up."""


def _run(command: Sequence[str], stdin: str | None = None) -> str:
    """Run a command (an argument list); its standard output, or ``BanError``."""
    try:
        result = subprocess.run(list(command), input=stdin, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BanError(f"{command[0]}: {exc}") from None
    if result.returncode != 0:
        raise BanError(f"{' '.join(command)}: exit {result.returncode}: "
                       f"{clip(result.stderr.strip() or result.stdout.strip(), 300)}")
    return result.stdout


class NftBackend:
    """An nftables table of postwarden's own, with timeout sets (theory point 1)."""

    name = "nftables"

    def __init__(self, settings: NftSettings) -> None:
        self.settings = settings

    def _set(self, network: str) -> str:
        return "v6" if ":" in network else "v4"

    def _element(self, ban: Ban, now: float) -> str:
        return f"{ban.network} timeout {max(1, math.ceil(ban.remaining(now)))}s"

    def table_script(self) -> str:
        s = self.settings
        ports = ", ".join(str(p) for p in s.ports)
        return (f"add table inet {s.table}\ndelete table inet {s.table}\n"
                f"table inet {s.table} {{\n"
                "  set v4 { type ipv4_addr; flags interval, timeout; }\n"
                "  set v6 { type ipv6_addr; flags interval, timeout; }\n"
                f"  chain input {{ type filter hook input priority {s.priority}; "
                "policy accept;\n"
                f"    ip saddr @v4 tcp dport {{ {ports} }} drop\n"
                f"    ip6 saddr @v6 tcp dport {{ {ports} }} drop\n"
                "  }\n}\n")

    def _elements(self, verb: str, bans: Sequence[Ban], now: float) -> str:
        lines = []
        for family in ("v4", "v6"):
            chosen = [b for b in bans if self._set(b.network) == family]
            if chosen:
                items = ", ".join(self._element(b, now) if verb == "add" else b.network
                                  for b in chosen)
                lines.append(f"{verb} element inet {self.settings.table} {family} {{ {items} }}")
        return "".join(line + "\n" for line in lines)

    def run(self, script: str) -> None:
        _run([*self.settings.command, "-f", "-"], script)

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        live = [b for b in bans if b.expires > now]
        self.run(self.table_script() + self._elements("add", live, now))

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        self.run(self._elements("delete", replaces, now) + self._elements("add", [ban], now))

    def lift(self, ban: Ban, now: float) -> None:
        # An element that is not there (``logs bans unban`` removed it first) is an error
        # here; the manager then rewrites the table from what it applies, which is right.
        self.run(self._elements("delete", [ban], now))

    def expire(self, ban: Ban, now: float) -> None:
        del ban, now  # the kernel's timeout already removed the element

    def members(self) -> set[str]:
        """The networks in the table's sets now, in CIDR form (none when there is no table
        yet). Read from ``nft -j list set``, whose JSON is parsed, never evaluated."""
        found: set[str] = set()
        for family in ("v4", "v6"):
            try:
                text = _run([*self.settings.command, "-j", "list", "set", "inet",
                             self.settings.table, family])
            except BanError:
                continue   # no table (or no set) yet: nothing is enforced
            try:
                items = json.loads(text)["nftables"]
            except (ValueError, KeyError, TypeError):
                raise BanError(f"nft -j list set {family}: unexpected output") from None
            for item in items:
                for element in item.get("set", {}).get("elem", []):
                    found.add(_nft_network(element))
        return found


def _nft_network(element: object) -> str:
    """One element of ``nft -j`` set output as a canonical network: ``"192.0.2.7"``,
    ``{"prefix": {"addr": ..., "len": n}}``, either maybe inside ``{"elem": {"val": ...}}``."""
    value = element
    if isinstance(value, dict) and "elem" in value:
        value = value["elem"].get("val") if isinstance(value["elem"], dict) else None
    try:
        if isinstance(value, str):
            return str(ipaddress.ip_network(value))
        if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
            prefix = value["prefix"]
            return str(ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}"))
    except (ValueError, KeyError):
        pass
    raise BanError(f"nft: unexpected set element {clip(str(element), 80)}")


def map_key(network: str, kind: str) -> str | None:
    """The access(5) lookup key of a banned network for a map type, or None when that type
    cannot express it (hash maps know octet-aligned IPv4 and hextet-aligned IPv6 prefixes
    only, written without ``::``)."""
    net = ipaddress.ip_network(network)
    if kind == "cidr":
        return str(net)
    if net.num_addresses == 1:
        return str(net.network_address)
    if net.version == 4 and net.prefixlen % 8 == 0:
        return ".".join(str(net.network_address).split(".")[: net.prefixlen // 8])
    if net.version == 6 and net.prefixlen % 16 == 0:
        hextets = net.network_address.exploded.split(":")[: net.prefixlen // 16]
        return ":".join(h.lstrip("0") or "0" for h in hextets)
    return None


class AccessMapBackend:
    """A Postfix access map of REJECT lines for ``check_client_access`` (theory point 2)."""

    name = "access_map"

    def __init__(self, settings: AccessMapSettings) -> None:
        self.settings = settings
        self.bans: dict[str, Ban] = {}

    def render(self) -> str:
        s = self.settings
        lines = ["# Written by postwarden logs watch on every ban change; do not edit.",
                 f"# Use: check_client_access {s.type}:{s.path}"]
        for network in sorted(self.bans):
            key = map_key(network, s.type)
            if key is None:
                lines.append(f"# {network}: not expressible in a {s.type} map (use cidr)")
                continue
            lines.append(f"{key} {s.action}")
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self._install(self.render())

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        self.bans = {b.network: b for b in bans if b.expires > now}
        self.write()

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        for old in replaces:
            self.bans.pop(old.network, None)
        self.bans[ban.network] = ban
        self.write()

    def lift(self, ban: Ban, now: float) -> None:
        if self.bans.pop(ban.network, None) is not None:
            self.write()

    def expire(self, ban: Ban, now: float) -> None:
        self.lift(ban, now)

    def remove(self, networks: Sequence[str]) -> list[str]:
        """Take the lines of ``networks`` out of the map as it is on disk (``logs bans
        unban``: another process, the watcher, wrote it); the networks that were there."""
        s = self.settings
        keys = {key: network for network in networks
                if (key := map_key(network, s.type)) is not None}
        try:
            lines = Path(s.path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise BanError(f"{s.path}: {getattr(exc, 'strerror', None) or exc}") from None
        kept = [line for line in lines if line.split(" ", 1)[0] not in keys]
        removed = sorted({keys[line.split(" ", 1)[0]] for line in lines
                          if line.split(" ", 1)[0] in keys})
        if removed:
            self._install("\n".join(kept) + "\n")
        return removed

    def _install(self, text: str) -> None:
        """Write the map (temp file, fsync, rename), then postmap and reload as needed."""
        s = self.settings
        path = Path(s.path)
        try:
            write_atomic(path, text.encode(), 0o644)
        except OSError as exc:
            raise BanError(f"{path}: {exc.strerror or exc}") from None
        if s.type in ("hash", "lmdb"):
            config = ["-c", s.config_directory] if s.config_directory else []
            _run([s.postmap, *config, f"{s.type}:{path}"])
        if s.reload_command:
            _run(s.reload_command)


class NoBackend:
    """Record bans, enforce nothing (``backend = "none"``, dry runs)."""

    name = "none"

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        pass

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        pass

    def lift(self, ban: Ban, now: float) -> None:
        pass

    def expire(self, ban: Ban, now: float) -> None:
        pass


def make_backend(settings: WatchSettings, *, dry_run: bool = False) -> Backend:
    if dry_run or settings.ban.backend == "none":
        return NoBackend()
    if settings.ban.backend == "nftables":
        return NftBackend(settings.nftables)
    return AccessMapBackend(settings.access_map)


class BanManager:
    """Turns findings into bans, keeps them applied, expires them (theory points 3, 4)."""

    def __init__(self, settings: WatchSettings, store: BanStore, backend: Backend, *,
                 protected: Sequence[IPNetwork], dry_run: bool = False,
                 origin: str | None = None) -> None:
        self.ban: BanSettings = settings.ban
        self.sync_interval = settings.sync_interval
        self.store, self.backend = store, backend
        self.protection = Protection(protected)
        self.dry_run = dry_run
        self.origin = origin or socket.gethostname()
        self.applied: dict[str, Ban] = {}
        self._expiry: list[tuple[float, str]] = []
        self._next_sync = 0.0
        self._unstored: dict[str, Ban] = {}  # applied here, not yet in the store (outage)
        self._neighbours = Distinct(max(1, self.ban.aggregate), self.ban.aggregate_window,
                                    settings.max_keys)
        self.counts = {"bans": 0, "refused": 0, "expired": 0, "errors": 0, "synced": 0}
        self._refused: set[str] = set()   # protected networks of others' bans, logged once

    # -- start and synchronisation ----------------------------------------------------

    def start(self, now: float) -> None:
        """Apply every active ban of the store (after a restart, or a host joining)."""
        self.store.changed()  # subscribe first: nothing published after the read is missed
        try:
            bans = self.store.active(now)
        except StoreError as exc:
            log.warning("watch: ban store unavailable at start: %s", exc)
            bans = []
        self._replace(bans, now)
        self._apply_all(now)
        self._next_sync = now + self.sync_interval
        log.info("watch: %d active ban(s) applied with backend %s", len(self.applied),
                 self.backend.name)

    def _outermost(self, bans: Sequence[Ban], now: float) -> dict[str, Ban]:
        """The live bans, without those another one in the list covers (nftables interval
        sets refuse overlapping elements), and without those that overlap a network this
        host protects (another host, with other settings, may have made them)."""
        live = {b.network: b for b in bans if b.expires > now and not self._protects(b)}
        for network in list(live):
            net = ipaddress.ip_network(network)
            bits = self.ban.ipv4_prefix if net.version == 4 else self.ban.ipv6_prefix
            if net.prefixlen > bits and str(net.supernet(new_prefix=bits)) in live:
                del live[network]
        return live

    def _protects(self, ban: Ban) -> bool:
        """Whether a ban from the store must not be applied here: it overlaps a protected
        network, or its network is not one (the store is shared; say so once)."""
        try:
            if not self.protection.overlaps(ipaddress.ip_network(ban.network)):
                return False
            reason = "protected here (loopback, ignore list or mynetworks)"
        except ValueError:
            reason = "not a network"
        if ban.network not in self._refused:
            self._refused.add(ban.network)
            log.warning("watch: client=%s action=none origin=%s reason=%s: not applied",
                        clip(shown(ban.network)), clip(ban.origin), reason.replace(" ", "\\x20"))
        return True

    def _replace(self, bans: Sequence[Ban], now: float) -> None:
        self.applied = self._outermost(bans, now)
        self._expiry = [(b.expires, b.network) for b in self.applied.values()]
        heapq.heapify(self._expiry)

    def _apply_all(self, now: float) -> None:
        try:
            self.backend.sync(list(self.applied.values()), now)
        except BanError as exc:
            self.counts["errors"] += 1
            log.error("watch: backend %s: %s", self.backend.name, exc)

    def _apply(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        try:
            self.backend.add(ban, now, replaces)
        except BanError as exc:
            log.info("watch: incremental %s update failed (%s); full sync", self.backend.name,
                     exc)
            self._apply_all(now)

    # -- decisions ----------------------------------------------------------------------

    def target(self, address: IPAddress, now: float) -> IPNetwork:
        """The address itself, or its network once enough of its neighbours offended."""
        single = ipaddress.ip_network(address)
        if self.ban.aggregate <= 0:
            return single
        bits = self.ban.ipv4_prefix if address.version == 4 else self.ban.ipv6_prefix
        network = single.supernet(new_prefix=bits)
        if self._neighbours.hit(str(network), str(address), now) is None:
            return single
        if self.protection.overlaps(network):
            log.info("watch: network=%s not aggregated: overlaps a protected network", network)
            return single
        return network

    def covered(self, network: IPNetwork) -> Ban | None:
        """An applied ban that already covers ``network``."""
        found = self.applied.get(str(network))
        if found is not None:
            return found
        bits = self.ban.ipv4_prefix if network.version == 4 else self.ban.ipv6_prefix
        if network.prefixlen > bits:
            return self.applied.get(str(network.supernet(new_prefix=bits)))
        return None

    def duration(self, count: int) -> int:
        seconds = self.ban.duration * self.ban.factor ** min(count - 1, 64)
        return int(min(self.ban.max_duration, seconds))

    def offend(self, finding: Finding, now: float) -> Ban | None:
        """Ban the finding's client, unless protected or already banned."""
        address = address_of(finding.client)
        if address is None:
            return None
        if self.protection.covers(address):
            self.counts["refused"] += 1
            log.info("watch: client=%s action=none check=%s reason=protected (loopback, "
                     "ignore list or mynetworks)", address, finding.detector)
            return None
        network = self.target(address, now)
        if self.covered(network) is not None:
            return None
        try:
            previous = self.store.get(str(network), now)
        except StoreError as exc:
            log.warning("watch: ban store: %s", exc)
            previous = None
        count = previous.count + 1 if previous is not None else 1
        ban = Ban(str(network), now, now + self.duration(count), count, finding.detector,
                  finding.detail[:200], self.origin)
        replaces = [b for n, b in self.applied.items() if n != ban.network
                    and _inside(ipaddress.ip_network(n), network)
                    ] if network.num_addresses > 1 else []
        self._record(ban, now, replaces)
        return ban

    def _record(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        log.warning("watch: client=%s action=ban%s check=%s duration=%ds count=%d reason=%s",
                    shown(ban.network), " dry_run=yes" if self.dry_run else "", ban.detector,
                    int(ban.expires - ban.since), ban.count,
                    clip(ban.reason, 200).replace(" ", "\\x20"))
        self.counts["bans"] += 1
        try:
            self.store.put(ban, ban.expires + self.ban.memory)
        except StoreError as exc:
            self.counts["errors"] += 1
            self._unstored[ban.network] = ban
            log.warning("watch: ban store: %s (the ban is applied here, and written to the "
                        "store once it is back)", exc)
        for old in replaces:
            self.applied.pop(old.network, None)
            with contextlib.suppress(StoreError):  # the next sync drops covered bans anyway
                self.store.lift(old.network, now)
        self.applied[ban.network] = ban
        heapq.heappush(self._expiry, (ban.expires, ban.network))
        self._apply(ban, now, replaces)

    # -- time passing -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Expire what is due; pick up other watchers' changes when there are any."""
        while self._expiry and self._expiry[0][0] <= now:
            expires, network = heapq.heappop(self._expiry)
            ban = self.applied.get(network)
            if ban is None or ban.expires != expires:
                continue
            del self.applied[network]
            self.counts["expired"] += 1
            log.info("watch: client=%s action=unban check=%s reason=expired", shown(network),
                     ban.detector)
            try:
                self.backend.expire(ban, now)
            except BanError as exc:
                self.counts["errors"] += 1
                log.error("watch: backend %s: %s", self.backend.name, exc)
        if self.dry_run:
            return
        if self.store.changed() or now >= self._next_sync:
            self._next_sync = now + self.sync_interval
            self.sync(now)

    def sync(self, now: float) -> None:
        """Apply the store's active bans: new ones added, lifted ones removed. Bans made
        here while the store was out are written to it first (theory point 4)."""
        try:
            self._store_unstored(now)
            wanted = self._outermost(self.store.active(now), now)
        except StoreError as exc:
            log.warning("watch: ban store: %s", exc)
            return
        self.counts["synced"] += 1
        for network, ban in list(self.applied.items()):
            if network not in wanted:
                del self.applied[network]
                log.info("watch: client=%s action=unban reason=lifted elsewhere", shown(network))
                self._lift(ban, now)
        for network, ban in wanted.items():
            mine = self.applied.get(network)
            if mine is not None and abs(mine.expires - ban.expires) < 1:
                continue
            self.applied[network] = ban
            heapq.heappush(self._expiry, (ban.expires, network))
            if mine is None:
                log.info("watch: client=%s action=ban check=%s origin=%s (from the store)",
                         shown(network), ban.detector, ban.origin)
            self._apply(ban, now, [mine] if mine is not None else [])

    def _store_unstored(self, now: float) -> None:
        for network, ban in list(self._unstored.items()):
            if ban.expires > now and self.applied.get(network) is ban:
                self.store.put(ban, ban.expires + self.ban.memory)
            del self._unstored[network]

    def _lift(self, ban: Ban, now: float) -> None:
        try:
            self.backend.lift(ban, now)
        except BanError:
            self._apply_all(now)

    def active(self) -> list[Ban]:
        return sorted(self.applied.values(), key=lambda b: b.network)
