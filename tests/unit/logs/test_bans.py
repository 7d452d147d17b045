"""Bans: protection, aggregation, escalation, expiry, persistence, the access map."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from postwarden.logs.bans import (
    AccessMapBackend,
    BanManager,
    NftBackend,
    address_of,
    map_key,
)
from postwarden.logs.bans_store import Ban, MemoryBanStore, SqliteBanStore
from postwarden.logs.detect import Finding
from postwarden.logs.watch_settings import (
    AccessMapSettings,
    BanSettings,
    NftSettings,
    WatchSettings,
)
from postwarden.policy.store import StoreError


class Recorder:
    """A backend that remembers what it was told."""

    name = "recorder"

    def __init__(self) -> None:
        self.enforced: dict[str, Ban] = {}
        self.calls: list[str] = []

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        self.calls.append("sync")
        self.enforced = {b.network: b for b in bans}

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        self.calls.append(f"add {ban.network}")
        for old in replaces:
            self.enforced.pop(old.network, None)
        self.enforced[ban.network] = ban

    def lift(self, ban: Ban, now: float) -> None:
        self.calls.append(f"lift {ban.network}")
        self.enforced.pop(ban.network, None)

    def expire(self, ban: Ban, now: float) -> None:
        self.calls.append(f"expire {ban.network}")
        self.enforced.pop(ban.network, None)


def finding(client: str, detector: str = "sasl_client") -> Finding:
    return Finding(detector, client, client, "", 5, 600, "ban", "5 failed logins", 0.0)


def manager(store: object = None, backend: Recorder | None = None, *,
            ban: BanSettings | None = None, protected: Sequence[str] = ("127.0.0.0/8",),
            dry_run: bool = False, start: float = 1000.0) -> BanManager:
    settings = WatchSettings(ban=ban or BanSettings())
    nets = [ipaddress.ip_network(n) for n in protected]
    m = BanManager(settings, store or MemoryBanStore(), backend or Recorder(),  # type: ignore[arg-type]
                   protected=nets, dry_run=dry_run, origin="mx1")
    m.start(start)
    return m


@pytest.mark.parametrize("client", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1",
                                    "10.1.2.3", "2001:db8:feed::5", "unknown", ""])
def test_never_bans_loopback_ignore_list_or_mynetworks(client: str) -> None:
    backend = Recorder()
    m = manager(backend=backend, protected=("127.0.0.0/8", "::1/128", "10.0.0.0/8",
                                            "2001:db8:feed::/48"))
    assert m.offend(finding(client), 1000.0) is None
    assert backend.enforced == {}


def test_ban_then_already_banned() -> None:
    backend = Recorder()
    m = manager(backend=backend)
    ban = m.offend(finding("198.51.100.7"), 1000.0)
    assert ban is not None and ban.network == "198.51.100.7/32"
    assert ban.expires == 1000.0 + 3600
    assert m.offend(finding("198.51.100.7"), 1001.0) is None
    assert list(backend.enforced) == ["198.51.100.7/32"]
    assert address_of("[2001:DB8::1]") == ipaddress.ip_address("2001:db8::1")


def test_expiry_unbans_and_escalation_doubles() -> None:
    backend = Recorder()
    store = MemoryBanStore()
    m = manager(store, backend)
    first = m.offend(finding("198.51.100.7"), 1000.0)
    assert first is not None
    m.tick(first.expires - 1)
    assert "198.51.100.7/32" in backend.enforced
    m.tick(first.expires)
    assert backend.enforced == {} and m.applied == {}
    second = m.offend(finding("198.51.100.7"), first.expires + 10)
    assert second is not None and second.count == 2
    assert second.expires - second.since == 2 * 3600
    later = second.expires + 1
    capped = manager(store, ban=BanSettings(max_duration=5000), start=later).offend(
        finding("198.51.100.7"), later)
    assert capped is not None and capped.count == 3 and capped.expires - capped.since == 5000


def test_aggregation_to_the_network() -> None:
    backend = Recorder()
    m = manager(backend=backend, ban=BanSettings(aggregate=3))
    for host in (1, 2):
        assert m.offend(finding(f"203.0.113.{host}"), 1000.0) is not None
    net = m.offend(finding("203.0.113.3"), 1000.0)
    assert net is not None and net.network == "203.0.113.0/24"
    assert list(backend.enforced) == ["203.0.113.0/24"]    # the single bans it covers went
    assert m.offend(finding("203.0.113.77"), 1001.0) is None


def test_ipv6_aggregates_to_64() -> None:
    m = manager(ban=BanSettings(aggregate=2))
    m.offend(finding("2001:db8:1:2::a"), 1000.0)
    net = m.offend(finding("2001:db8:1:2:ffff::b"), 1000.0)
    assert net is not None and net.network == "2001:db8:1:2::/64"


def test_no_aggregation_over_a_protected_network() -> None:
    m = manager(ban=BanSettings(aggregate=2), protected=("127.0.0.0/8", "203.0.113.128/25"))
    m.offend(finding("203.0.113.1"), 1000.0)
    second = m.offend(finding("203.0.113.2"), 1000.0)
    assert second is not None and second.network == "203.0.113.2/32"


def test_dry_run_touches_nothing() -> None:
    backend = Recorder()
    store = MemoryBanStore()
    m = manager(store, backend, dry_run=True)
    ban = m.offend(finding("198.51.100.7"), 1000.0)
    assert ban is not None        # what would have been banned
    assert m.dry_run


def test_bans_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "watch.db")
    first = manager(SqliteBanStore(path))
    first.offend(finding("198.51.100.7"), 1000.0)
    backend = Recorder()
    again = manager(SqliteBanStore(path), backend)    # start() syncs from the store
    assert list(backend.enforced) == ["198.51.100.7/32"]
    assert backend.calls == ["sync"]
    assert again.offend(finding("198.51.100.7"), 1500.0) is None


def test_a_ban_from_another_watcher_is_applied(tmp_path: Path) -> None:
    path = str(tmp_path / "watch.db")
    one_backend, two_backend = Recorder(), Recorder()
    one = manager(SqliteBanStore(path), one_backend)
    two = manager(SqliteBanStore(path), two_backend)
    one.offend(finding("198.51.100.7"), 1000.0)
    two.tick(1001.0)                                  # data_version changed: re-read
    assert list(two_backend.enforced) == ["198.51.100.7/32"]
    one.store.lift("198.51.100.7/32", 1002.0)
    two.tick(1003.0)
    assert two_backend.enforced == {}


def test_map_keys() -> None:
    assert map_key("198.51.100.7/32", "hash") == "198.51.100.7"
    assert map_key("198.51.100.0/24", "hash") == "198.51.100"
    assert map_key("198.51.96.0/20", "hash") is None
    assert map_key("198.51.96.0/20", "cidr") == "198.51.96.0/20"
    assert map_key("2001:db8:0:2::/64", "hash") == "2001:db8:0:2"
    assert map_key("2001:db8::7/128", "texthash") == "2001:db8::7"


def test_access_map_written_atomically_and_postmapped(tmp_path: Path) -> None:
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "main.cf").write_text("")
    path = tmp_path / "bans"
    backend = AccessMapBackend(AccessMapSettings(path=str(path), type="hash", postmap=postmap,
                                                 config_directory=str(tmp_path / "etc")))
    ban = Ban("198.51.100.7/32", 0.0, 100.0)
    backend.sync([ban, Ban("203.0.113.0/24", 0.0, 100.0)], 1.0)
    text = path.read_text()
    assert "198.51.100.7 REJECT" in text and "203.0.113 REJECT" in text
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    query = [postmap, "-c", str(tmp_path / "etc"), "-q", "198.51.100.7", f"hash:{path}"]
    found = subprocess.run(query,
                           capture_output=True, text=True, check=False)
    assert found.stdout.startswith("REJECT"), found
    backend.expire(ban, 200.0)
    gone = subprocess.run(query, capture_output=True, text=True, check=False)
    assert gone.returncode == 1 and not gone.stdout
    assert list(tmp_path.glob(".bans.*")) == []      # no temp file left behind


def test_nft_script_owns_one_table() -> None:
    nft = NftBackend(NftSettings(table="pw", ports=(25, 587)))
    script = nft.table_script()
    assert script.startswith("add table inet pw\ndelete table inet pw\ntable inet pw {")
    assert "flags interval, timeout" in script
    assert "tcp dport { 25, 587 } drop" in script
    ban = Ban("198.51.100.7/32", 0.0, 99.5)
    assert nft._elements("add", [ban], 0.0) == (
        "add element inet pw v4 { 198.51.100.7/32 timeout 100s }\n")


def test_a_refused_incremental_change_falls_back_to_a_full_sync() -> None:
    from postwarden.logs.bans import BanError

    class Refusing(Recorder):
        def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
            self.calls.append(f"add {ban.network}")
            raise BanError("nft: Error: interval overlaps with an existing one")

    backend = Refusing()
    m = manager(backend=backend)
    m.offend(finding("198.51.100.7"), 1000.0)
    assert backend.calls == ["sync", "add 198.51.100.7/32", "sync"]
    assert list(backend.enforced) == ["198.51.100.7/32"]


def test_a_ban_from_another_host_inside_a_network_protected_here_is_not_applied(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryBanStore()
    store.put(Ban("10.1.2.3/32", 990.0, 5000.0, 1, "sasl_client", "", "mx2"), 9000.0)
    store.put(Ban("198.51.100.7/32", 990.0, 5000.0, 1, "sasl_client", "", "mx2"), 9000.0)
    store.put(Ban("not-a-network", 990.0, 5000.0, 1, "sasl_client", "", "mx3"), 9000.0)
    backend = Recorder()
    m = manager(store, backend, protected=("127.0.0.0/8", "10.0.0.0/8"))
    assert list(backend.enforced) == ["198.51.100.7/32"]
    m.sync(1001.0)
    m.sync(1002.0)
    assert list(m.applied) == ["198.51.100.7/32"]
    assert caplog.text.count("client=10.1.2.3 action=none origin=mx2 reason=protected") == 1
    assert caplog.text.count("client=not-a-network action=none origin=mx3 reason=not") == 1


class FlakyStore(MemoryBanStore):
    """A store that is out (every call raises) while ``down`` is set."""

    down = False

    def put(self, ban: Ban, forget: float) -> None:
        if self.down:
            raise StoreError("ban store: connection refused")
        super().put(ban, forget)

    def active(self, now: float) -> list[Ban]:
        if self.down:
            raise StoreError("ban store: connection refused")
        return super().active(now)


def test_a_ban_made_during_a_store_outage_is_kept_and_stored_later() -> None:
    """Nothing is lost: the ban made while the store is out stays enforced, the next
    syncs do not lift it for being missing from the store, and it is written to the store
    once the store is back."""
    backend = Recorder()
    store = FlakyStore()
    m = manager(store, backend)
    store.down = True
    ban = m.offend(finding("198.51.100.7"), 1000.0)
    assert ban is not None and "198.51.100.7/32" in backend.enforced
    m.sync(1001.0)                      # still out: nothing changes
    assert "198.51.100.7/32" in backend.enforced
    store.down = False
    m.sync(1002.0)                      # back: written, and still enforced
    assert [b.network for b in store.active(1003.0)] == ["198.51.100.7/32"]
    assert "198.51.100.7/32" in backend.enforced and "198.51.100.7/32" in m.applied
    m.sync(1004.0)
    assert "198.51.100.7/32" in backend.enforced
