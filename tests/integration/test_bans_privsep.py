"""Bans with real processes: privilege separation as root, and ``logs bans unban`` against
a real redis-server and a real nftables table.

* The watcher, started as root, forks the privileged helper and becomes ``nobody`` (the
  kernel's /proc/self/status says so; setuid(0) fails); log lines fed to it still end in
  an nftables element inside a network namespace the test creates, applied by the helper,
  which is still root.
* Malformed messages sent to the real helper are refused, logged, and answered; the helper
  goes on serving.
* The helper leaves when the watcher is killed; the watcher stops (and its command exits
  non-zero) when the helper is killed.
* ``unban`` lifts a ban on two watchers sharing one Redis store and from the nftables set;
  neither watcher puts it back.

Security: every process the test forks is reaped or killed by it; the namespace is deleted
at teardown with everything in it; Redis listens on 127.0.0.1 only.
Standards: nft(8); proc(5) ``/proc/[pid]/status``; setuid(2).
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from postwarden.cli import logs_bans
from postwarden.cli.common import Parser
from postwarden.logs.bans import AccessMapBackend, BanError, NftBackend, NoBackend
from postwarden.logs.bans_store import Ban, MemoryBanStore, RedisBanStore, SqliteBanStore
from postwarden.logs.privsep import PrivsepError, read_frame, separated
from postwarden.logs.watch import Watcher
from postwarden.logs.watch_settings import AccessMapSettings, NftSettings, WatchSettings
from tests.integration.test_stores import RedisServer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")

IP = "/usr/sbin/ip"
NFT = "/usr/sbin/nft"
ATTACKER = "198.51.100.7"
NOBODY = 65534
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]


def sasl_failure(i: int, client: str = ATTACKER) -> str:
    return (f"Nov 30 06:00:{i:02d} mx1 postfix/submission/smtpd[7]: warning: "
            f"unknown[{client}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")


def warm_up() -> None:
    """Run the whole pipeline once as root, so that what it imports lazily (codecs too) is
    loaded before a forked child drops to nobody: this interpreter lives under /root,
    which nobody cannot read (an installed postwarden's interpreter is readable)."""
    w = Watcher(WatchSettings(), store=MemoryBanStore(), backend=NoBackend(), sinks=[],
                protected=LOOPBACK, year=2026, host="warm-up")
    w.start()
    for i in range(5):
        w.feed(sasl_failure(i))
    w.tick()
    assert w.bans.applied
    w.close()


warm_up()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pw-bans-{secrets.token_hex(4)}"
    subprocess.run([IP, "netns", "add", name], check=True)
    try:
        subprocess.run([IP, "netns", "exec", name, IP, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run([IP, "netns", "delete", name], check=False)


@pytest.fixture
def state() -> Iterator[Path]:
    """A directory ``nobody`` owns, reachable through /tmp (pytest's own is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="postwarden-privsep-"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def nft_set(ns: str, family: str = "v4") -> str:
    return subprocess.run([IP, "netns", "exec", ns, NFT, "list", "set", "inet", "postwarden",
                           family], capture_output=True, text=True, check=False).stdout


def in_child(body: Callable[[Callable[[object], None]], None],
             first: Callable[[Any], None] | None = None) -> tuple[int, list[Any]]:
    """Run ``body(report)`` in a forked process (the watcher, started as root); its exit
    code and what it reported (JSON values). ``SystemExit`` gives its code; a traceback
    in the child is reported too. With ``first``, the parent hands it the first report
    as soon as it comes, while the child runs."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the watcher
        code = 3
        try:
            os.close(read_fd)

            def report(value: object) -> None:
                os.write(write_fd, (json.dumps(value) + "\n").encode())
            try:
                body(report)
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
            except BaseException:
                report({"traceback": traceback.format_exc()})
                code = 2
        finally:
            os._exit(code)
    os.close(write_fd)
    reports = []
    with os.fdopen(read_fd) as pipe:
        if first is not None:
            reports.append(json.loads(pipe.readline()))
            first(reports[0])
        reports += [json.loads(line) for line in pipe.read().splitlines()]
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), reports


def ids(pid: int | str) -> dict[str, list[int]]:
    """Uid, Gid and Groups of a process, from the kernel."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(v) for v in value.split()]
    return found


def helper_of(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_the_parser_runs_as_nobody_and_bans_still_reach_nft(netns: str, state: Path) -> None:
    mail_gid = grp.getgrnam("mail").gr_gid
    settings = WatchSettings(store=f"sqlite://{state}/watch.db", nftables=NftSettings(
        command=(IP, "netns", "exec", netns, NFT)))

    def watcher(report: Callable[[object], None]) -> None:
        with separated(settings, NftBackend(settings.nftables), user="nobody",
                       groups=("mail",), protected=LOOPBACK) as remote:
            mine = ids("self")
            helper = helper_of(os.getpid())
            try:
                os.setuid(0)
                regained = True
            except PermissionError:
                regained = False
            w = Watcher(settings, backend=remote, sinks=[], protected=LOOPBACK, year=2026,
                        host="mx1")
            w.start()                                  # the table, through the helper
            for i in range(5):
                w.feed(sasl_failure(i))
            report({"ids": mine, "helper": helper, "helper_ids": ids(helper),
                    "regained": regained, "applied": sorted(w.bans.applied),
                    "errors": w.bans.counts["errors"],
                    "db_owner": Path(f"{state}/watch.db").stat().st_uid})
            w.close()

    code, reports = in_child(watcher)
    assert code == 0, reports
    (got,) = reports
    assert got["ids"] == {"Uid": [NOBODY] * 4, "Gid": [NOBODY] * 4, "Groups": [mail_gid]}
    assert got["helper_ids"]["Uid"] == [0] * 4                 # the helper kept root
    assert got["regained"] is False
    assert got["applied"] == [f"{ATTACKER}/32"] and got["errors"] == 0
    assert got["db_owner"] == NOBODY                           # the store was written as nobody
    assert ATTACKER in nft_set(netns)                          # applied by the helper
    assert gone(got["helper"])                                 # and it left with the watcher


def test_malformed_messages_are_refused_and_logged(state: Path) -> None:
    log_path = state / "helper.log"
    settings = WatchSettings(access_map=AccessMapSettings(path=str(state / "bans"),
                                                          type="texthash"))

    def watcher(report: Callable[[object], None]) -> None:
        handler = logging.FileHandler(log_path)       # opened as root: the helper keeps it
        logger = logging.getLogger("postwarden.logs.privsep")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        with separated(settings, AccessMapBackend(settings.access_map), user="nobody",
                       protected=LOOPBACK) as remote:
            sock = remote._sock  # type: ignore[attr-defined]
            replies = []
            for frame in (b"\xff not json", b'{"op": "shell", "command": "reboot"}',
                          b'{"op": "lift", "network": "198.51.100.7"}',
                          b'{"op": "add", "ban": ["127.0.0.1/32", 60], "replaces": []}',
                          b'{"op": "add", "ban": ["198.51.100.7/32", 99999999], '
                          b'"replaces": []}',
                          b'{"op": "add", "ban": ["198.51.100.7/32", 60], "replaces": []}'):
                sock.sendall(len(frame).to_bytes(4, "big") + frame)
                reply = read_frame(sock, 1 << 16)
                replies.append(json.loads(reply or b"null"))
            report({"replies": replies})

    code, reports = in_child(watcher)
    assert code == 0, reports
    replies = reports[0]["replies"]
    assert [r["ok"] for r in replies] == [False] * 5 + [True]
    assert all(r["error"].startswith("refused: ") for r in replies[:5])
    logged = log_path.read_text()
    assert logged.count("watch: privsep: refused a request: ") == 5
    assert "overlaps a protected network" in logged and "is not CIDR text" in logged
    assert "198.51.100.7 REJECT" in (state / "bans").read_text()   # the valid one applied


def test_an_oversized_frame_ends_the_helper_and_the_watcher(state: Path) -> None:
    settings = WatchSettings(access_map=AccessMapSettings(path=str(state / "bans"),
                                                          type="texthash"))

    def watcher(report: Callable[[object], None]) -> None:
        stop = threading.Event()
        with contextlib.suppress(PrivsepError), separated(
                settings, AccessMapBackend(settings.access_map), user="nobody",
                protected=LOOPBACK, on_death=stop.set) as remote:
            sock = remote._sock  # type: ignore[attr-defined]
            sock.sendall((1 << 30).to_bytes(4, "big"))       # a frame far too long
            report({"stopped": stop.wait(10)})
            try:
                remote.lift(Ban("198.51.100.7/32", 0, 0), 0)
            except BanError as exc:
                report({"error": str(exc)})
        report({"left": True})

    code, reports = in_child(watcher)
    assert code == 0, reports
    assert reports == [{"stopped": True}, {"error": "privileged helper is gone"},
                       {"left": True}]


def test_the_helper_leaves_when_the_watcher_is_killed(state: Path) -> None:
    settings = WatchSettings()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.close(read_fd)
            with separated(settings, AccessMapBackend(AccessMapSettings(
                    path=str(state / "bans"), type="texthash")), user="nobody",
                    protected=LOOPBACK):
                os.write(write_fd, f"{helper_of(os.getpid())}\n".encode())
                time.sleep(60)
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        helper = int(pipe.readline())
    assert not gone(helper, 0.5)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert gone(helper), "the helper outlived the watcher"


def test_the_watcher_stops_when_the_helper_dies(state: Path) -> None:
    settings = WatchSettings()

    def watcher(report: Callable[[object], None]) -> None:
        stop = threading.Event()
        try:
            with separated(settings, AccessMapBackend(AccessMapSettings(
                    path=str(state / "bans"), type="texthash")), user="nobody",
                    protected=LOOPBACK, on_death=stop.set):
                report({"helper": helper_of(os.getpid())})
                report({"stopped": stop.wait(20)})
        except PrivsepError as exc:
            report({"error": str(exc)})
            raise SystemExit(1) from None

    code, (first, *rest) = in_child(
        watcher, first=lambda report: os.kill(report["helper"], signal.SIGKILL))
    assert code == 1
    assert rest[0] == {"stopped": True}
    assert rest[1]["error"].startswith(f"privileged helper pid={first['helper']} exited "
                                       "(signal 9) while the watcher ran")


def test_no_separation_for_root_or_no_user() -> None:
    backend = AccessMapBackend(AccessMapSettings(path="/nonexistent/bans"))
    for user in (None, "root", "0"):
        with separated(WatchSettings(), backend, user=user, protected=LOOPBACK) as got:
            assert got is backend
            assert os.getuid() == 0


# -- logs bans unban ---------------------------------------------------------------------------

def unban(config: Path, target: str) -> int:
    parser = Parser(prog="postwarden logs")
    logs_bans.add(parser.add_subparsers(dest="logs_command", parser_class=Parser))
    args = parser.parse_args(["bans", "unban", target, "--config", str(config)])
    return int(args.handler(args))


def test_unban_lifts_on_every_watcher_sharing_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        url = server.url("unban-test:")
        settings = WatchSettings(store=url, sync_interval=3600)   # pub/sub, not polling
        maps = [tmp_path / f"mx{i}" for i in (1, 2)]
        mx1, mx2 = (Watcher(settings, store=RedisBanStore(url), backend=AccessMapBackend(
            AccessMapSettings(path=str(m), type="texthash")), sinks=[], protected=LOOPBACK,
            host=m.name, year=2026) for m in maps)
        mx1.start()
        mx2.start()
        for i in range(5):
            mx1.feed(sasl_failure(i))
        deadline = time.monotonic() + 10
        while ATTACKER not in maps[1].read_text():
            assert time.monotonic() < deadline, "mx2 never applied mx1's ban"
            mx2.tick()
            time.sleep(0.05)
        config = tmp_path / "postwarden.toml"       # the unban runs on mx1
        config.write_text(f'[watch]\nstore = "{url}"\n[watch.ban]\nbackend = "access_map"\n'
                          f'[watch.access_map]\npath = "{maps[0]}"\ntype = "texthash"\n')
        assert unban(config, ATTACKER) == 0
        assert ATTACKER not in maps[0].read_text()          # mx1's map, by the command
        deadline = time.monotonic() + 10
        while ATTACKER in maps[1].read_text():               # mx2, through the channel
            assert time.monotonic() < deadline, "mx2 kept the lifted ban"
            mx2.tick()
            time.sleep(0.05)
        for _ in range(5):                                    # and nobody puts it back
            mx1.tick()
            mx2.tick()
            mx1.bans.sync(time.time())
            mx2.bans.sync(time.time())
        assert mx1.bans.applied == {} and mx2.bans.applied == {}
        assert all(ATTACKER not in m.read_text() for m in maps)
        assert mx1.bans.counts["errors"] == mx2.bans.counts["errors"] == 0
        assert unban(config, ATTACKER) == 1                  # nothing left to lift
        for w in (mx1, mx2):
            w.close()
    finally:
        server.stop()


def test_unban_takes_the_element_out_of_nftables(netns: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    command = (IP, "netns", "exec", netns, NFT)
    settings = WatchSettings(store=f"sqlite://{tmp_path}/watch.db",
                             nftables=NftSettings(command=command))
    w = Watcher(settings, store=SqliteBanStore(f"{tmp_path}/watch.db"), sinks=[],
                protected=LOOPBACK, year=2026, host="mx1")
    w.start()
    for i in range(5):
        w.feed(sasl_failure(i))
        w.feed(sasl_failure(i, "2001:db8::7"))
    assert ATTACKER in nft_set(netns) and "2001:db8::7" in nft_set(netns, "v6")
    config = tmp_path / "postwarden.toml"
    config.write_text(f'[watch]\nstore = "sqlite://{tmp_path}/watch.db"\n'
                      f'[watch.nftables]\ncommand = {json.dumps(list(command))}\n')
    assert unban(config, ATTACKER) == 0
    assert ATTACKER not in nft_set(netns) and "2001:db8::7" in nft_set(netns, "v6")
    for _ in range(3):
        w.tick()                                             # the watcher's next ticks
        time.sleep(0.05)
    assert list(w.bans.applied) == ["2001:db8::7/128"]
    assert w.bans.counts["errors"] == 0
    assert ATTACKER not in nft_set(netns)                    # not put back
    # an element only the firewall has (the store never heard of it) is removed too
    subprocess.run([*command, "add", "element", "inet", "postwarden", "v4",
                    "{ 203.0.113.9 timeout 1h }"], check=True)
    assert unban(config, "203.0.113.9") == 0
    assert "removed 203.0.113.9 from nftables (it was not in the store)" in capsys.readouterr().out
    assert "203.0.113.9" not in nft_set(netns)
    w.close()
