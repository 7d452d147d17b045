"""postwarden policyd consulted by a real Postfix: greylisting, SPF and rate limits.

A private Postfix instance asks the daemon (a real ``postwarden policyd`` process, dropped
to nobody, SQLite state) in smtpd_recipient_restrictions and smtpd_data_restrictions. DNS
answers come from the lab DNS server on loopback. The outside client is made with XCLIENT
(the test client 127.0.0.3 is the one host allowed it) so that greylisting, which exempts
loopback, applies.

Security: everything listens on 127.0.0.x; processes and directories are removed at the end.
Standards: SMTPD_POLICY_README; RFC 7208 (SPF fail: 550 5.7.23, RFC 7372); postgrey's
reply and X-Greylist header.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.lab.dns import DnsServer
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance

NewRoot = Callable[[], Path]

CLIENT = "127.0.0.3"
OUTSIDE = "198.51.100.7"
LOCAL = f"root@{TEST_HOSTNAME}"
DELAY = 2  # seconds: the test-shortened greylisting delay
ZONE = {
    "spf-fail.example": {"TXT": ["v=spf1 -all"]},
    "greylisted.example": {"TXT": ["v=spf1 ?all"]},
    "bulk.example": {"TXT": ["v=spf1 ?all"]},
    "mail.example.net": {"A": [OUTSIDE]},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def policyd() -> Iterator[int]:
    """A running postwarden policyd on a loopback port; yields the port."""
    state = Path(tempfile.mkdtemp(prefix="postwarden-policyd-"))
    state.chmod(0o755)
    shutil.chown(state, "nobody", "nogroup")
    port = free_port()
    with DnsServer(ZONE) as dns:
        config = state / "postwarden.toml"
        config.write_text(f"""
[policyd]
listen = ["tcp:127.0.0.1:{port}"]
user = "nobody"
group = "nogroup"
budget = "10s"
[store]
url = "sqlite://{state}/state.db"
[greylist]
delay = "{DELAY}s"
retry_window = "1h"
hostname = "mx.example.org"
[spf]
nameserver = "{dns.address}"
lookup_time = "5s"
receiver = "mx.example.org"
[ratelimit]
enabled = true
[[ratelimit.rule]]
name = "test-sender"
key = "sender"
count = "messages"
stage = "RCPT"
limit = 2
window = "1h"
action = "450 4.7.1 Rate limit exceeded for this sender"
""")
        process = subprocess.Popen([sys.executable, "-m", "postwarden", "policyd", "--config",
                                    str(config)], stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    break
                except OSError:
                    assert process.poll() is None, process.communicate()[1]
                    assert time.monotonic() < deadline, "policyd did not start"
                    time.sleep(0.05)
            yield port
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
            shutil.rmtree(state, ignore_errors=True)


def outside(pf: PostfixInstance) -> smtplib.SMTP:
    client = smtplib.SMTP(pf.address, pf.port, source_address=(CLIENT, 0), timeout=30)
    client.ehlo("mail.example.net")
    code, reply = client.docmd("XCLIENT", f"ADDR={OUTSIDE} NAME=[UNAVAILABLE]")
    assert code == 220, reply
    client.ehlo("mail.example.net")
    return client


@pytest.mark.postfix
def test_greylisting_spf_and_rate_limits(new_root: NewRoot, policyd: int) -> None:
    check = f"check_policy_service inet:127.0.0.1:{policyd}"
    pf = PostfixInstance(new_root(), main_cf={
        "smtpd_recipient_restrictions": check,
        "smtpd_data_restrictions": check,
        "smtpd_authorized_xclient_hosts": CLIENT,
    })
    with pf:
        # First attempt of a new triplet: 450, postgrey's wording.
        with outside(pf) as client:
            assert client.mail("alice@greylisted.example")[0] == 250
            code, reply = client.rcpt(LOCAL)
            assert code == 450 and b"Greylisted" in reply, reply
        # Before the delay: still deferred. After it: accepted, and the message carries
        # the X-Greylist header (added at DATA) after Received-SPF (added at RCPT).
        time.sleep(DELAY + 0.5)
        with outside(pf) as client:
            assert client.mail("alice@greylisted.example")[0] == 250
            code, reply = client.rcpt(LOCAL)
            assert code == 250, reply
            code, reply = client.data(b"Subject: policyd test\r\n\r\nhello\r\n")
            assert code == 250, reply
        pf.wait_for_log(rf"to=<{LOCAL}>, .*status=sent")
        mailbox = (pf.mail_directory / "root").read_text()
        assert "X-Greylist: delayed" in mailbox and "by postwarden" in mailbox
        assert "Received-SPF: Neutral" in mailbox
        # SPF fail: rejected at RCPT with RFC 7372's code.
        with outside(pf) as client:
            assert client.mail("bob@spf-fail.example")[0] == 250
            code, reply = client.rcpt(LOCAL)
            assert code == 550 and reply.startswith(b"5.7.23"), reply
        # Rate limit: the third recipient request of the sender in an hour.
        with outside(pf) as client:
            assert client.mail("bulk@bulk.example")[0] == 250
            replies = [client.rcpt(f"user{i}@{TEST_HOSTNAME}") for i in range(3)]
        assert [c for c, _ in replies[:2]] == [450, 450]        # greylisted, counted
        code, reply = replies[2]
        assert code == 450 and b"Rate limit exceeded for this sender" in reply, reply
