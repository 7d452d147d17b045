"""A private Postfix instance: starts on a random loopback port, takes mail, stops clean.

Security: instances listen on 127.0.0.x only and are stopped by each test; clients connect
from 127.0.0.2 and later, which the instance's mynetworks (its own address/32) excludes.
Standards: RFC 5321 4.2 (220 greeting), 3.3 (MAIL, RCPT, DATA); Postfix local(8) and
smtpd(8) log lines; postconf(1) -n, -F.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.postfix.instance import (
    TEST_HOSTNAME,
    InstanceError,
    PostfixInstance,
    find_program,
)

OUTSIDE = "127.0.0.2"  # not in the instance's mynetworks
LOCAL_RCPT = f"root@{TEST_HOSTNAME}"
SUBJECT = "postwarden instance test"

NewRoot = Callable[[], Path]


def send(pf: PostfixInstance, rcpt: str = LOCAL_RCPT, source: str = OUTSIDE) -> str:
    """Send one message from ``source``; return the queue id from the 250 reply to DATA."""
    with smtplib.SMTP(pf.address, pf.port, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.example")
        assert client.mail("sender@example.org")[0] == 250
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(f"Subject: {SUBJECT}\r\n\r\nhello\r\n".encode())
        assert code == 250, reply
    queued = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
    assert queued is not None, reply
    return queued.group(1).decode()


def final_status(pf: PostfixInstance, queue_id: str, rcpt: str) -> str:
    line = pf.wait_for_log(rf"{queue_id}: to=<{re.escape(rcpt)}>, .*?status=(\w+)")
    return line.group(1)


def instance_pids(config_dir: Path, master_pid: int | None) -> list[int]:
    """Scan /proc independently of the module: MAIL_CONFIG or the master's process group."""
    found = []
    marker = f"MAIL_CONFIG={config_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        state, _ppid, pgid = stat[stat.rfind(")") + 2:].split()[:3]
        if state == "Z":
            continue  # dead, waiting for PID 1 to reap it: holds no port, file or lock
        if int(pgid) == master_pid or marker in environ:
            found.append(int(entry.name))
    return found


def greeting(pf: PostfixInstance) -> bytes:
    with socket.create_connection((pf.address, pf.port), timeout=10) as conn, \
            conn.makefile("rb") as reader:
        return reader.readline(512)


@pytest.mark.postfix
def test_outside_client_mail_is_delivered_and_logged(new_root: NewRoot) -> None:
    with PostfixInstance(new_root()) as pf:
        queue_id = send(pf)
        assert final_status(pf, queue_id, LOCAL_RCPT) == "sent"
        text = pf.log_text()
        assert f"{queue_id}: client=unknown[{OUTSIDE}]" in text
        assert f"Subject: {SUBJECT}" in (pf.mail_directory / "root").read_text()
        # 127.0.0.2 is outside mynetworks, so relaying is refused (4xx: Postfix 3.6+
        # defer_unauth_destination), which is what makes it a usable "outside" vantage point.
        with smtplib.SMTP(pf.address, pf.port, source_address=(OUTSIDE, 0), timeout=10) as c:
            c.ehlo("client.example")
            c.mail("sender@example.org")
            code, reply = c.rcpt("someone@example.com")
        assert code == 454
        assert b"Relay access denied" in reply


@pytest.mark.postfix
def test_two_instances_run_at_once(new_root: NewRoot) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(PostfixInstance(new_root()))
        second = stack.enter_context(PostfixInstance(new_root(), address="127.0.0.5"))
        assert first.master_pid != second.master_pid
        assert not set(first.processes()) & set(second.processes())
        # Mail to [127.0.0.5] is local to the second: its address counts as its own.
        rcpts = {first.config_dir: LOCAL_RCPT, second.config_dir: "root@[127.0.0.5]"}
        ids = {pf.config_dir: send(pf, rcpts[pf.config_dir]) for pf in (first, second)}
        for pf, other in ((first, second), (second, first)):
            queue_id = ids[pf.config_dir]
            assert final_status(pf, queue_id, rcpts[pf.config_dir]) == "sent"
            assert queue_id not in other.log_text()
        assert greeting(first).startswith(b"220 ") and greeting(second).startswith(b"220 ")


@pytest.mark.postfix
def test_stop_closes_port_and_leaves_no_process(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root())
    pf.start()
    try:
        master = pf.master_pid
        final_status(pf, send(pf), LOCAL_RCPT)  # so smtpd, cleanup and local ran too
        before = instance_pids(pf.config_dir, master)
        assert master in before and len(before) >= 4, before
        pf.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((pf.address, pf.port), timeout=5).close()
        assert instance_pids(pf.config_dir, master) == []
        assert not pf.running
        pf.stop()  # a second stop is harmless
    finally:
        pf.stop()


@pytest.mark.postfix
def test_reload_applies_new_settings(new_root: NewRoot) -> None:
    with PostfixInstance(new_root()) as pf:
        assert b"reloaded-banner" not in greeting(pf)
        pf.configure({"smtpd_banner": "$myhostname ESMTP reloaded-banner"})
        pf.reload()
        assert greeting(pf) == f"220 {TEST_HOSTNAME} ESMTP reloaded-banner\r\n".encode()


@pytest.mark.postfix
def test_bad_main_cf_value_fails_fast_with_the_reason(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root(), main_cf={"message_size_limit": "10MB"})
    started = time.monotonic()
    with pytest.raises(InstanceError) as caught:
        pf.start(timeout=20)
    assert time.monotonic() - started < 15
    assert "bad numerical configuration: message_size_limit = 10MB" in str(caught.value)
    assert instance_pids(pf.config_dir, None) == []


@pytest.mark.postfix
def test_bad_master_cf_line_fails_with_the_reason(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root(), services=["not-a-service-entry"])
    with pytest.raises(InstanceError) as caught:
        pf.start(timeout=20)
    assert re.search(r"master\.cf: line \d+: bad field count", str(caught.value))
    assert instance_pids(pf.config_dir, None) == []


@pytest.mark.postfix
def test_unknown_service_fails_without_hanging(new_root: NewRoot) -> None:
    # Syntactically fine, but the master cannot resolve "nosuch" as a port and dies.
    pf = PostfixInstance(new_root(), services=["nosuch inet n - n - - smtpd"])
    with pytest.raises(InstanceError) as caught:
        pf.start(timeout=20)
    assert "mail system startup failed" in str(caught.value)
    assert instance_pids(pf.config_dir, None) == []


@pytest.mark.postfix
def test_config_is_what_postconf_sees(new_root: NewRoot) -> None:
    pf = PostfixInstance(new_root(), main_cf={"mynetworks": "127.0.0.1/32 [::1]/128"},
                         services=["extra unix - - n - - discard"])
    pf.write_config()
    postconf = find_program("postconf")
    assert postconf is not None

    def run(*args: str) -> str:
        done = subprocess.run([postconf, "-c", str(pf.config_dir), *args],
                              capture_output=True, text=True, check=True, timeout=30)
        assert done.stderr == ""  # e.g. no "unused parameter" warning
        return done.stdout

    names = [line.split(" = ")[0] for line in run("-n").splitlines()]
    assert len(names) == len(set(names))
    assert run("-h", "mynetworks", "myorigin", "inet_interfaces").split("\n")[:3] == [
        "127.0.0.1/32 [::1]/128", "$myhostname", "loopback-only"]
    assert set(run("-Fh", "*/*/chroot").split()) == {"n"}
    assert run("-Fh", f"127.0.0.1:{pf.port}/inet/command") == "smtpd\n"
    assert run("-Fh", "extra/unix/command") == "discard\n"
    assert run("-M", "postlog/unix-dgram").split()[-1] == "postlogd"


@pytest.mark.postfix
def test_unreachable_root_is_refused_with_advice(tmp_path: Path) -> None:
    pf = PostfixInstance(tmp_path / "instance")
    with pytest.raises(InstanceError, match="cannot enter"):
        pf.start()


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"address": "192.0.2.1"}, "IPv4 loopback"),
    ({"address": "::1"}, "IPv4 loopback"),
    ({"main_cf": {"queue_directory": "/var/spool/postfix"}}, "set by PostfixInstance"),
    ({"main_cf": {"smtpd_banner": "x\nrelayhost = evil"}}, "must be one line"),
    ({"main_cf": {"bad name": "x"}}, "not a main.cf parameter name"),
    ({"services": ["a unix - - n - - discard\nb unix - - n - - discard"]}, "one line"),
])
def test_refuses_bad_arguments(tmp_path: Path, kwargs: dict[str, object],
                               reason: str) -> None:
    with pytest.raises(InstanceError, match=reason):
        PostfixInstance(tmp_path, **kwargs)  # type: ignore[arg-type]
