"""``postwarden logs watch`` against a real Postfix with a real Dovecot: brute force -> ban.

A private Postfix instance authenticates through a private Dovecot (SASL over a UNIX
socket). The attacker connects from 127.0.0.3, the one host allowed XCLIENT, and takes the
outside address 198.51.100.7 before guessing passwords, so the maillog shows what a real
attack shows. A real ``postwarden logs watch`` process follows that maillog and bans:

* with nftables, inside a network namespace the test creates (nft runs there through
  ``ip netns exec``): the set holds the address, and a TCP connection to port 25 from that
  address is dropped inside the namespace while one from another address is not;
* with the Postfix access map: Postfix itself then rejects the banned client.

A third test runs two watchers on one real redis-server: a ban made by one appears in the
other's backend through pub/sub.

Security: everything listens on 127.0.0.x or lives inside the test's namespace, which is
deleted at teardown with everything in it.
Standards: SMTP AUTH (RFC 4954) PLAIN; Postfix XCLIENT_README; access(5); nft(8).
"""

from __future__ import annotations

import base64
import ipaddress
import secrets
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.lab.dovecot import DovecotAuth
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.postfix.process import free_port

NewRoot = Callable[[], Path]
CLIENT = "127.0.0.3"
ATTACKER = "198.51.100.7"
BYSTANDER = "198.51.100.8"
THRESHOLD = 4
IP = "/usr/sbin/ip"
NFT = "/usr/sbin/nft"
XCLIENT = {"smtpd_authorized_xclient_hosts": CLIENT}


def instance(root: Path, main_cf: dict[str, str]) -> PostfixInstance:
    """Port 25, plus a submission port with SASL through Dovecot (the attacked one)."""
    port = free_port("127.0.0.1")
    pf = PostfixInstance(root, main_cf={**XCLIENT, **main_cf}, services=[
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "  -o syslog_name=postfix/submission",
        "  -o smtpd_sasl_auth_enable=yes",
        "  -o smtpd_sasl_type=dovecot",
        "  -o smtpd_sasl_path=private/auth",
        "  -o smtpd_tls_auth_only=no",
    ])
    pf.ports["submission"] = port
    return pf


def session(pf: PostfixInstance, address: str = ATTACKER, port: int = 0) -> smtplib.SMTP:
    client = smtplib.SMTP(pf.address, port or pf.port, source_address=(CLIENT, 0),
                          timeout=30)
    client.ehlo("mail.example.net")
    code, reply = client.docmd("XCLIENT", f"ADDR={address} NAME=[UNAVAILABLE]")
    assert code == 220, reply
    client.ehlo("mail.example.net")
    return client


def guess_passwords(pf: PostfixInstance, attempts: int) -> None:
    with session(pf, port=pf.ports["submission"]) as client:
        for i in range(attempts):
            token = base64.b64encode(f"\0u\0wrong{i}".encode()).decode()
            code, _ = client.docmd("AUTH", f"PLAIN {token}")
            # 454 "Connection lost to authentication server": Dovecot's auth penalty for
            # an address that keeps failing outlasts Postfix's wait (see detect.py).
            assert code in (535, 454), (code, pf.log_text()[-3000:])


class Watch:
    """``postwarden logs watch`` as a child process."""

    def __init__(self, root: Path, log: Path, table: str) -> None:
        self.config = root / "postwarden.toml"
        self.config.write_text(f'[watch]\nstore = "sqlite://{root}/watch.db"\n'
                               f"[watch.detect.sasl_client]\nthreshold = {THRESHOLD}\n"
                               "[watch.alerts]\nsyslog = false\n" + table)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "postwarden", "logs", "watch", str(log), "--config",
             str(self.config)], stderr=subprocess.PIPE, text=True)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


def wait_for(check: Callable[[], bool], what: str, watch: Watch, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if watch.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}; watcher said:\n{watch.stop()}")
        time.sleep(0.1)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pw-watch-{secrets.token_hex(4)}"
    subprocess.run([IP, "netns", "add", name], check=True)
    try:
        for args in (["link", "set", "lo", "up"],
                     ["addr", "add", f"{ATTACKER}/32", "dev", "lo"],
                     ["addr", "add", f"{BYSTANDER}/32", "dev", "lo"]):
            subprocess.run([IP, "netns", "exec", name, IP, *args], check=True)
        yield name
    finally:
        subprocess.run([IP, "netns", "delete", name], check=False)


# Run inside the namespace: connect to port 25 of the attacker's address from SOURCE.
# Nothing listens there, so an allowed SYN gets a RST at once ("refused"); a dropped one
# gets no answer ("timeout").
PROBE = """
import socket, sys
s = socket.socket(); s.settimeout(2); s.bind((sys.argv[1], 0))
try:
    s.connect((sys.argv[2], 25)); print("connected")
except ConnectionRefusedError: print("refused")
except (TimeoutError, socket.timeout): print("timeout")
"""


def connect_from(ns: str, source: str) -> str:
    result = subprocess.run([IP, "netns", "exec", ns, sys.executable, "-c", PROBE, source,
                             ATTACKER], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


def nft_set(ns: str) -> str:
    return subprocess.run([IP, "netns", "exec", ns, NFT, "list", "set", "inet", "postwarden",
                           "v4"], capture_output=True, text=True, check=False).stdout


@pytest.mark.postfix
def test_brute_force_banned_in_nftables_inside_a_namespace(new_root: NewRoot,
                                                           netns: str) -> None:
    root = new_root()
    pf = instance(new_root(), {})
    watch = Watch(root, pf.log_path,
                  f'[watch.nftables]\ncommand = ["{IP}", "netns", "exec", "{netns}", "{NFT}"]\n')
    try:
        with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth",
                             {"u": "secret"}):
            wait_for(lambda: "table inet postwarden" in nft_set(netns) or
                     "set v4" in nft_set(netns), "the table was not created", watch)
            assert connect_from(netns, ATTACKER) == "refused"      # not banned yet
            guess_passwords(pf, THRESHOLD - 1)
            pf.wait_for_log(rf"submission/smtpd\[[0-9]+\]: warning: unknown\[{ATTACKER}\]: "
                            "SASL PLAIN authentication failed")
            time.sleep(1.0)
            assert ATTACKER not in nft_set(netns)                  # below the threshold
            guess_passwords(pf, 1)
            wait_for(lambda: ATTACKER in nft_set(netns), "no ban in the nftables set", watch)
            assert connect_from(netns, ATTACKER) == "timeout"      # dropped
            assert connect_from(netns, BYSTANDER) == "refused"     # others still reach 25
    finally:
        err = watch.stop()
    assert f"client={ATTACKER} action=ban check=sasl_client" in err, err


@pytest.mark.postfix
def test_brute_force_banned_by_the_access_map(new_root: NewRoot) -> None:
    root = new_root()
    bans = root / "bans"
    pf = instance(new_root(), {"smtpd_client_restrictions": f"check_client_access hash:{bans}"})
    pf.write_config()
    watch = Watch(root, pf.log_path,
                  f'[watch.ban]\nbackend = "access_map"\n[watch.access_map]\npath = "{bans}"\n'
                  f'config_directory = "{pf.config_dir}"\n')
    try:
        wait_for(lambda: Path(f"{bans}.db").exists(), "the map was not written", watch)
        with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth",
                             {"u": "secret"}):
            with session(pf, BYSTANDER) as client:                 # the map works, is empty
                assert client.mail("a@example.net")[0] == 250
                assert client.rcpt(f"root@{TEST_HOSTNAME}")[0] == 250
            guess_passwords(pf, THRESHOLD)
            wait_for(lambda: ATTACKER in bans.read_text(), "no ban in the access map", watch)
            time.sleep(0.5)   # postmap has run once the text is there; let it finish
            with session(pf) as client:
                assert client.mail("a@example.net")[0] == 250
                code, reply = client.rcpt(f"root@{TEST_HOSTNAME}")
            assert code == 554 and b"banned by postwarden" in reply, reply
            with session(pf, BYSTANDER) as client:
                assert client.mail("a@example.net")[0] == 250
                assert client.rcpt(f"root@{TEST_HOSTNAME}")[0] == 250
            pf.wait_for_log(rf"reject: RCPT from unknown\[{ATTACKER}\]: 554 5\.7\.1")
    finally:
        err = watch.stop()
    assert f"client={ATTACKER} action=ban" in err, err


def test_a_ban_on_one_watcher_applies_on_another_through_redis() -> None:
    from postwarden.logs.bans import AccessMapBackend
    from postwarden.logs.bans_store import RedisBanStore
    from postwarden.logs.watch import Watcher
    from postwarden.logs.watch_settings import AccessMapSettings, WatchSettings
    from tests.integration.test_stores import RedisServer

    directory = Path(tempfile.mkdtemp(prefix="postwarden-redis-"))
    server = RedisServer(directory)
    server.start()
    try:
        url = server.url("watch-test:")
        settings = WatchSettings(store=url, sync_interval=3600)   # pub/sub, not polling
        loopback = [ipaddress.ip_network("127.0.0.0/8")]
        maps = [AccessMapBackend(AccessMapSettings(path=str(directory / f"mx{i}"),
                                                   type="texthash")) for i in (1, 2)]
        mx1, mx2 = (Watcher(settings, store=RedisBanStore(url), backend=maps[i], sinks=[],
                            protected=loopback, host=f"mx{i + 1}", year=2026)
                    for i in (0, 1))
        mx1.start()
        mx2.start()
        for i in range(5):
            mx1.feed(f"Nov 30 06:00:0{i} mx1 postfix/smtpd[1]: warning: unknown[{ATTACKER}]: "
                     "SASL LOGIN authentication failed: UGFzc3dvcmQ6")
        assert ATTACKER in (directory / "mx1").read_text()
        deadline = time.monotonic() + 10
        while ATTACKER not in (directory / "mx2").read_text():
            assert time.monotonic() < deadline, "mx2 never applied mx1's ban"
            mx2.tick()
            time.sleep(0.05)
        assert [(b.network, b.origin) for b in mx2.bans.active()] == [
            (f"{ATTACKER}/32", "mx1")]
        # A restart of mx2 (a new watcher) applies it from the store at once.
        mx3 = Watcher(settings, store=RedisBanStore(url), backend=AccessMapBackend(
            AccessMapSettings(path=str(directory / "mx3"), type="texthash")), sinks=[],
            protected=loopback, host="mx3")
        mx3.start()
        assert ATTACKER in (directory / "mx3").read_text()
        for w in (mx1, mx2, mx3):
            w.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_nft_backend_sync_add_replace_and_fallback(netns: str) -> None:
    """The backend's own transactions against a real kernel: a full sync, a network ban
    replacing the addresses it covers, IPv6, and the fallback to a full sync when an
    incremental change is refused (an element the kernel already expired)."""
    from postwarden.logs.bans import BanError, NftBackend
    from postwarden.logs.bans_store import Ban
    from postwarden.logs.watch_settings import NftSettings

    nft = NftBackend(NftSettings(command=(IP, "netns", "exec", netns, NFT)))
    now = time.time()
    single = Ban("203.0.113.5/32", now, now + 600)
    nft.sync([single, Ban("2001:db8:1::7/128", now, now + 600)], now)
    listing = subprocess.run([IP, "netns", "exec", netns, NFT, "list", "table", "inet",
                              "postwarden"], capture_output=True, text=True, check=True).stdout
    assert "203.0.113.5" in listing and "2001:db8:1::7" in listing
    assert "tcp dport { 25, 465, 587 } drop" in listing
    network = Ban("203.0.113.0/24", now, now + 1200)
    nft.add(network, now, [single])
    assert "203.0.113.0/24" in nft_set(netns) and "203.0.113.5 " not in nft_set(netns)
    with pytest.raises(BanError):                     # overlapping: refused by the kernel
        nft.add(Ban("203.0.113.9/32", now, now + 60), now, [])
    with pytest.raises(BanError):                     # deleting what is not there
        nft.lift(single, now)
    nft.sync([network], now)                          # what the manager falls back to
    assert "203.0.113.0/24" in nft_set(netns)
    nft.sync([], now)
    assert "elements" not in nft_set(netns)
