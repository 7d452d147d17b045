"""Adopted configs and the lab Dovecot: Debian's default runs privately, SASL AUTH works.

Security: instances listen on 127.0.0.x only and are stopped by each test; clients connect
from 127.0.0.2, outside Debian's default ``mynetworks`` (mynetworks_style = host).
Standards: RFC 5321 4.2 (220 greeting), 3.3; RFC 4954 (AUTH: 235 success, 535 failure),
RFC 4616 (PLAIN); Postfix SASL_README "Dovecot SASL", master(5).
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.lab.dovecot import DovecotAuth, DovecotError, dovecot_available
from postwarden.postfix import debian
from postwarden.postfix.adopt import adopt_master_cf
from postwarden.postfix.instance import (
    TEST_HOSTNAME,
    InstanceError,
    PostfixInstance,
)
from postwarden.postfix.maincf import MainCf
from postwarden.postfix.mastercf import MasterCf
from tests.integration.test_instance import OUTSIDE, final_status, instance_pids, send

NewRoot = Callable[[], Path]

DEBIAN_DEFAULT = Path(__file__).parents[2] / "examples" / "debian-default"
# As an admin enables submission in Debian's master.cf, with a banner that tells it apart.
SUBMISSION = """submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
# a comment inside the entry
  -o { smtpd_banner = $myhostname ESMTP submission-service }
"""
SASL_SUBMISSION = """submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path=private/auth
  -o smtpd_tls_auth_only=no
"""
USER, PASSWORD = "alice", "correct horse"


def debian_default(dest: Path, services: str) -> tuple[str, str]:
    """Debian 12's default main.cf and master.cf, built from the package, plus services."""
    debian.build(DEBIAN_DEFAULT, dest)
    return (dest / "main.cf").read_text(), (dest / "master.cf").read_text() + services


def greeting(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=10) as conn, \
            conn.makefile("rb") as reader:
        return reader.readline(512)


def auth_plain(pf: PostfixInstance, password: str) -> tuple[int, str]:
    """AUTH PLAIN on submission from outside: its reply code, then the reply to RCPT TO a
    remote address."""
    token = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    port = pf.ports["submission"]
    with smtplib.SMTP(pf.address, port, source_address=(OUTSIDE, 0), timeout=10) as client:
        client.ehlo("client.example")
        assert "PLAIN" in client.esmtp_features.get("auth", "").split()
        code, _ = client.docmd("AUTH", f"PLAIN {token}")
        client.mail("sender@example.org")
        rcpt, reply = client.rcpt("someone@example.com")
    return code, f"{rcpt} {reply.decode()}"


@pytest.mark.postfix
def test_debian_default_runs_privately_and_delivers(new_root: NewRoot, tmp_path: Path) -> None:
    main_cf, master_cf = debian_default(tmp_path, SUBMISSION)
    pf = PostfixInstance.adopt(new_root(), main_cf, master_cf)
    assert set(pf.ports) == {"smtp", "submission"} and pf.port == pf.ports["smtp"]
    pf.start()
    try:
        written = (pf.config_dir / "main.cf").read_text()
        edited = MainCf(written)
        assert written.startswith(main_cf)  # Debian's text and comments, untouched
        assert edited.duplicates() == {}
        # Policy stays as given; only the instance's own settings were added.
        for name in ("smtpd_relay_restrictions", "smtpd_tls_security_level", "smtpd_banner"):
            assert edited.get(name) == MainCf(main_cf).get(name)
        assert "mynetworks" not in edited and edited.get("myhostname") == TEST_HOSTNAME
        assert greeting(pf.address, pf.port).startswith(
            f"220 {TEST_HOSTNAME} ESMTP Postfix (Debian/GNU)".encode())
        assert greeting(pf.address, pf.ports["submission"]) == (
            f"220 {TEST_HOSTNAME} ESMTP submission-service\r\n".encode())
        rcpt = f"root@[{pf.address}]"
        queue_id = send(pf, rcpt)
        assert final_status(pf, queue_id, rcpt) == "sent"
        assert "Subject: postwarden instance test" in (pf.mail_directory / "root").read_text()
        master = pf.master_pid
        pf.stop()
        assert instance_pids(pf.config_dir, master) == []
        for port in pf.ports.values():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((pf.address, port), timeout=5).close()
    finally:
        pf.stop()


@pytest.mark.postfix
def test_sasl_auth_through_the_lab_dovecot(new_root: NewRoot, tmp_path: Path) -> None:
    assert dovecot_available(), "run scripts/setup.sh as root: it installs dovecot-core"
    main_cf, master_cf = debian_default(tmp_path, SASL_SUBMISSION)
    pf = PostfixInstance.adopt(new_root(), main_cf, master_cf, address="127.0.0.7",
                               extra_main_cf={"smtpd_error_sleep_time": "0"})
    with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth",
                         {USER: PASSWORD}) as auth:
        dovecot_pids = auth.processes()
        assert auth.pid in dovecot_pids
        # 235, then relaying is permitted (permit_sasl_authenticated): the recipient meets
        # only the instance's own no-outbound rule (default_transport = error).
        code, rcpt = auth_plain(pf, PASSWORD)
        assert code == 235 and re.match(r"550 .*outbound mail is disabled", rcpt), rcpt
        # 535, and the client is still an outsider: defer_unauth_destination.
        code, rcpt = auth_plain(pf, "wrong")
        assert code == 535 and re.match(r"454 .*Relay access denied", rcpt), rcpt
        pf.wait_for_log(rf"SASL PLAIN authentication failed: .*, sasl_username={USER}\n")
        # Postfix passed the client's address on to Dovecot.
        assert "passwd-file(alice,127.0.0.2): Password mismatch" in auth.log_text()
        assert PASSWORD not in auth.log_text() + pf.log_text()
        assert not tcp_listeners(dovecot_pids + auth.processes())
        assert "{SSHA512}" in auth.passwd_path.read_text()
    assert auth.processes() == [] and not auth.socket_path.exists()
    assert all(gone(pid) for pid in dovecot_pids)


@pytest.mark.postfix
def test_dovecot_start_failure_names_the_reason(new_root: NewRoot) -> None:
    assert dovecot_available(), "run scripts/setup.sh as root: it installs dovecot-core"
    root = new_root()
    (root / "sock").mkdir()
    with DovecotAuth(root, root / "sock" / "auth", {USER: PASSWORD}):
        second = DovecotAuth(root / "second", root / "sock" / "auth2", {USER: PASSWORD})
        # Same base_dir as the running one: Dovecot refuses to start a second master there.
        second.base_dir = root / "run"
        with pytest.raises(DovecotError, match=r"exited with status \d+(.|\n)*already running"):
            second.start(timeout=10)
        assert second.processes() == []
    with pytest.raises(DovecotError, match="does not exist"):
        DovecotAuth(root, root / "nosuchdir" / "auth", {}).start()


def test_adopted_master_cf_keeps_all_but_address_and_chroot() -> None:
    given = ("# Debian's comment\n"
             "smtp      inet  n       -       y       -       -       smtpd\n"
             "127.0.0.1:submission inet n - y - - smtpd\n"
             "  -o syslog_name=postfix/submission\n"
             "# -o smtpd_tls_security_level=encrypt\n"
             "  -o smtpd_tls_wrappermode=no\n"
             "smtps     inet  n       -       y       -       -       smtpd\n"
             "  -o smtpd_tls_wrappermode=yes\n"
             "2525 inet n - y - -\n"
             "  postscreen\n"
             "smtpd     pass  -       -       y       -       -       smtpd\n"
             "628       inet  n       -       y       -       -       qmqpd\n"
             "cleanup   unix  n       -       y       -       0       cleanup\n")
    adopted = adopt_master_cf(given, address="127.0.0.9")
    ports = adopted.ports
    assert set(ports) == {"smtp", "127.0.0.1:submission", "smtps", "2525"}
    assert len(set(ports.values())) == 4 and adopted.greeting_port == ports["smtp"]
    master = MasterCf(adopted.text)
    by_name = {service.name: service for service in master}
    smtps = by_name[f"127.0.0.9:{ports['smtps']}"]
    assert smtps.overrides() == {"smtpd_tls_wrappermode": "yes"}
    assert by_name[f"127.0.0.9:{ports['2525']}"].command == "postscreen"
    assert {service.chroot for service in master} == {"n"}
    assert set(by_name) >= {"smtpd", "628", "cleanup", "postlog"}  # others keep their names
    assert adopted.text.startswith("# Debian's comment\n")
    assert "# -o smtpd_tls_security_level=encrypt\n" in adopted.text
    assert len(adopted.text.splitlines()) == len(given.splitlines()) + 1  # + postlog


@pytest.mark.parametrize(("master_cf", "reason"), [
    ("smtps inet n - y - - smtpd -o smtpd_tls_wrappermode=yes\n", "no plaintext smtpd"),
    ("0.0.0.0:628 inet n - y - - qmqpd\nsmtp inet n - y - - smtpd\n", "another host"),
])
def test_adopt_refuses_what_cannot_run_privately(master_cf: str, reason: str) -> None:
    with pytest.raises(InstanceError, match=reason):
        adopt_master_cf(master_cf, address="127.0.0.1")


def tcp_listeners(pids: list[int]) -> list[int]:
    """Socket inodes of the given processes that are listening TCP sockets."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening.add(int(fields[9]))
    found = []
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = str(fd.readlink())
            except OSError:
                continue  # closed while we looked
            match = re.fullmatch(r"socket:\[(\d+)\]", target)
            if match and int(match.group(1)) in listening:
                found.append(int(match.group(1)))
    return found


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie awaiting its reaper (it holds no socket)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"
