"""harden on Debian 12's default configuration, proved on a real Postfix for each role.

For each role: build Debian's default as an "Internet Site" install leaves it
(``examples/debian-internet-site``), harden it
with ``postwarden harden --apply`` (which runs ``postfix check`` on the result), plan again
(nothing), audit (no high or critical finding but those harden names as the operator's),
then run the hardened files in a private instance and talk SMTP to it: the mail the role
should take is taken and delivered, relaying from an outside address is refused.

Security: instances listen on 127.0.0.x only; nothing leaves the machine (the instance's
transports are error: or discard:). The outside client is made with XCLIENT: Debian's
default mynetworks trusts all of 127.0.0.0/8, so the test client (127.0.0.3, the only host
allowed XCLIENT) announces itself as 192.0.2.10 (RFC 5737 documentation address), as
probe-anchors 8.1 and XCLIENT_README describe.
Standards: RFC 5321 (MAIL, RCPT, DATA), RFC 3207 (STARTTLS), RFC 8314 (465), RFC 4954 (AUTH),
Postfix XCLIENT_README, SASL_README; Debian 12 postfix postinst ("Internet Site").
"""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.audit.engine import audit
from postwarden.audit.roles import parse_roles
from postwarden.harden import run
from postwarden.harden.apply import ApplyError
from postwarden.harden.plan import Plan
from postwarden.lab.certs import self_signed
from postwarden.lab.dovecot import DovecotAuth
from postwarden.postfix import debian
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.instance import PostfixInstance

NewRoot = Callable[[], Path]

INTERNET_SITE = Path(__file__).parents[2] / "examples" / "debian-internet-site"
HOSTNAME, DOMAIN = "mx.example.org", "example.org"
CLIENT = "127.0.0.3"        # the test client, the one host allowed XCLIENT
OUTSIDE = "192.0.2.10"      # who it claims to be
USER, PASSWORD = "alice", "correct horse"
LOCAL = f"root@{HOSTNAME}"
REMOTE = "someone@example.net"
# High or critical findings only the operator can clear, by role (harden names them).
OPERATOR_ONLY = {
    "mx": set(),
    "submission": {"TLS-014",    # the test's certificate is self-signed, not a CA's
                   "SASL-007"},  # no Dovecot runs for the audited copy's queue directory
    "relay": set(),
    "null-client": set(),
}


def certificate(directory: Path) -> tuple[Path, Path]:
    return self_signed(directory, HOSTNAME)


def postwarden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postwarden", *args], capture_output=True,
                          text=True, timeout=120)


def harden_debian(root: Path, role: str) -> tuple[Path, str]:
    """Debian's default in root/etc, hardened for role with every input given."""
    etc = root / "etc"
    etc.mkdir()
    debian.build(INTERNET_SITE, etc)
    cert, key = certificate(root)
    result = postwarden("harden", "-c", str(etc), "--role", role, "--hostname", HOSTNAME,
                        "--domain", DOMAIN, "--tls-cert", str(cert), "--tls-key", str(key),
                        "--sasl", "dovecot", "--apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied and verified" in result.stdout
    return etc, result.stdout


def xclient_session(pf: PostfixInstance, port: int | None = None) -> smtplib.SMTP:
    """An SMTP session in which Postfix sees the client as OUTSIDE."""
    client = smtplib.SMTP(pf.address, port or pf.port, source_address=(CLIENT, 0), timeout=10)
    client.ehlo("client.example.net")
    code, reply = client.docmd("XCLIENT", f"ADDR={OUTSIDE} NAME=[UNAVAILABLE]")
    assert code == 220, reply
    client.ehlo("mail.example.net")
    return client


def deliver(client: smtplib.SMTP, sender: str, rcpt: str) -> bytes:
    assert client.mail(sender)[0] == 250
    code, reply = client.rcpt(rcpt)
    assert code == 250, reply
    code, reply = client.data(b"Subject: harden proof\r\n\r\nhello\r\n")
    assert code == 250, reply
    return reply


def assert_relay_refused(pf: PostfixInstance, port: int | None = None) -> None:
    with xclient_session(pf, port) as client:
        assert client.mail(f"someone@{DOMAIN}")[0] == 250
        code, reply = client.rcpt(REMOTE)
        assert code in (454, 554) and b"Relay access denied" in reply, (code, reply)


def check_plan_and_audit(etc: Path, role: str, output: str) -> None:
    again = postwarden("harden", "-c", str(etc), "--role", role, "--hostname", HOSTNAME,
                       "--domain", DOMAIN, "--sasl", "dovecot", "--check")
    assert again.returncode == 0, again.stdout + again.stderr
    report = audit(PostfixConfig.load(etc), parse_roles(role))
    serious = {f.id for f in report.findings if f.severity.value in ("critical", "high")}
    assert serious <= OPERATOR_ONLY[role], serious
    for rule in serious:
        assert rule in output.split("left for the operator", 1)[1], rule


@pytest.mark.postfix
def test_mx(new_root: NewRoot) -> None:
    etc, output = harden_debian(new_root(), "mx")
    assert "ignored: --sasl" in output
    check_plan_and_audit(etc, "mx", output)
    pf = PostfixInstance.adopt(new_root(), (etc / "main.cf").read_text(),
                               (etc / "master.cf").read_text(),
                               extra_main_cf={"smtpd_authorized_xclient_hosts": CLIENT})
    with pf:
        with xclient_session(pf) as client:
            assert client.has_extn("starttls")
            deliver(client, f"alice@{HOSTNAME}", LOCAL)
        pf.wait_for_log(rf"to=<{LOCAL}>, .*status=sent")
        assert "Subject: harden proof" in (pf.mail_directory / "root").read_text()
        assert_relay_refused(pf)


@pytest.mark.postfix
def test_submission(new_root: NewRoot) -> None:
    etc, output = harden_debian(new_root(), "submission")
    check_plan_and_audit(etc, "submission", output)
    pf = PostfixInstance.adopt(new_root(), (etc / "main.cf").read_text(),
                               (etc / "master.cf").read_text(),
                               extra_main_cf={"smtpd_authorized_xclient_hosts": CLIENT})
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE   # the test's certificate is self-signed
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth",
                         {USER: PASSWORD}):
        with smtplib.SMTP(pf.address, pf.ports["submission"], timeout=10) as client:
            client.ehlo("laptop.example.net")
            assert "auth" not in client.esmtp_features      # no AUTH before TLS
            assert client.mail(f"alice@{DOMAIN}")[0] == 530  # TLS is required first
            client.starttls(context=unverified)
            client.ehlo("laptop.example.net")
            assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
            deliver(client, f"alice@{DOMAIN}", LOCAL)
        with smtplib.SMTP_SSL(pf.address, pf.ports["submissions"], context=unverified,
                              timeout=10) as client:
            client.ehlo("laptop.example.net")
            assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
            deliver(client, f"alice@{DOMAIN}", LOCAL)
        with smtplib.SMTP(pf.address, pf.ports["submission"], source_address=(CLIENT, 0),
                          timeout=10) as client:       # no login: refused, even for a local
            client.starttls(context=unverified)       # recipient and a trusted address
            client.ehlo("laptop.example.net")
            assert client.mail(f"alice@{DOMAIN}")[0] == 250
            code, _ = client.rcpt(LOCAL)
            assert code == 554
        assert_relay_refused(pf)
        first = pf.wait_for_log(rf"to=<{LOCAL}>, .*status=sent")
        pf.wait_for_log(rf"to=<{LOCAL}>, .*status=sent", pos=first.end())


@pytest.mark.postfix
def test_relay(new_root: NewRoot) -> None:
    etc, output = harden_debian(new_root(), "relay")
    assert "ignored: --sasl" in output and "ignored: --tls-cert" in output
    check_plan_and_audit(etc, "relay", output)
    pf = PostfixInstance.adopt(new_root(), (etc / "main.cf").read_text(),
                               (etc / "master.cf").read_text(), extra_main_cf={
                                   "smtpd_authorized_xclient_hosts": CLIENT,
                                   "default_transport": "discard:relayed in the test",
                                   "relay_transport": "discard:relayed in the test"})
    with pf:
        with smtplib.SMTP(pf.address, pf.port, source_address=("127.0.0.4", 0),
                          timeout=10) as client:     # a host of mynetworks
            client.ehlo("app.example.org")
            deliver(client, f"app@{DOMAIN}", REMOTE)
        pf.wait_for_log(rf"to=<{REMOTE}>, relay=none, .*status=sent \(relayed in the test\)")
        assert_relay_refused(pf)


@pytest.mark.postfix
def test_null_client(new_root: NewRoot) -> None:
    etc, output = harden_debian(new_root(), "null-client")
    check_plan_and_audit(etc, "null-client", output)
    main = PostfixConfig.load(etc).main
    assert main.get("inet_interfaces") == "loopback-only" and main.get("mydestination") == ""
    pf = PostfixInstance.adopt(new_root(), (etc / "main.cf").read_text(),
                               (etc / "master.cf").read_text(), extra_main_cf={
                                   "smtpd_authorized_xclient_hosts": CLIENT,
                                   "default_transport": "discard:sent on in the test"})
    with pf:
        # Local mail (cron, applications) goes in through sendmail and out, none stays.
        sent = subprocess.run(["/usr/sbin/sendmail", "-C", str(pf.config_dir), "-f",
                               f"cron@{HOSTNAME}", LOCAL],
                              input=b"Subject: from cron\n\nhello\n", timeout=30, check=False)
        assert sent.returncode == 0
        pf.wait_for_log(rf"to=<{LOCAL}>, relay=none, .*status=sent \(sent on in the test\)")
        assert not (pf.mail_directory / "root").exists()
        assert_relay_refused(pf)


@pytest.mark.postfix
def test_a_change_postfix_check_refuses_is_undone(new_root: NewRoot) -> None:
    etc, _ = harden_debian(new_root(), "relay")
    before = {name: (etc / name).read_text() for name in ("main.cf", "master.cf")}
    broken = dict(before)
    broken["main.cf"] += "queue_directory = /nonexistent/postwarden-test\n"
    plan = Plan(str(etc), parse_roles("relay") or frozenset(), before, broken, [], [], [])
    with pytest.raises(ApplyError, match=r"postfix -c .* check failed"):
        run.apply(plan, etc)
    assert {name: (etc / name).read_text() for name in before} == before


@pytest.mark.postfix
def test_rollback_restores_debian_default(new_root: NewRoot) -> None:
    root = new_root()
    etc, _ = harden_debian(root, "mx")
    backups = sorted((etc / ".postwarden" / "backups").iterdir())
    original = (backups[-1] / "main.cf").read_text()
    result = postwarden("harden", "-c", str(etc), "--rollback")
    assert result.returncode == 0, result.stderr
    assert (etc / "main.cf").read_text() == original
    info = json.loads((backups[-1] / "INFO").read_text())
    assert info["reason"] == "harden"


@pytest.mark.postfix
def test_apply_reloads_a_running_postfix(new_root: NewRoot, tmp_path: Path) -> None:
    debian.build(INTERNET_SITE, tmp_path)
    pf = PostfixInstance.adopt(new_root(), (tmp_path / "main.cf").read_text(),
                               (tmp_path / "master.cf").read_text())
    with pf:
        assert greeting(pf).startswith(f"220 {HOSTNAME} ".encode())
        since = len(pf.log_text())
        result = postwarden("harden", "-c", str(pf.config_dir), "--role", "relay",
                            "--hostname", "mx2.example.org", "--apply", "--reload")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Postfix reloaded" in result.stdout
        pf.wait_for_log(r"postfix/master\[\d+\]: reload -- ", pos=since)
        assert greeting(pf).startswith(b"220 mx2.example.org ")


def greeting(pf: PostfixInstance) -> bytes:
    with socket.create_connection((pf.address, pf.port), timeout=10) as conn, \
            conn.makefile("rb") as reader:
        return reader.readline(512)
