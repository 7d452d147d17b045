"""postwarden milter in front of a real Postfix: signing, Authentication-Results, DMARC.

A private Postfix instance has ``smtpd_milters`` and ``non_smtpd_milters`` pointing at a
real ``postwarden milter`` process (unix socket, dropped to nobody, SQLite evaluation
store); a submission service on another port takes SASL logins through the lab Dovecot and
sets ``milter_macro_daemon_name = ORIGINATING``. DKIM keys, SPF and DMARC records come from
the lab DNS server on loopback. Mail is delivered by local(8) to ``mail/root``, where the
test reads it back and checks the signatures with postwarden, OpenDKIM (``opendkim -t``)
and dkimpy (its Ed25519 support comes from PyNaCl, a test dependency).

Security: everything listens on 127.0.0.x or in private temporary directories; processes
and directories are removed at the end.
Standards: Postfix MILTER_README (``smtpd_milters``, ``non_smtpd_milters``,
``milter_protocol = 6``, ``milter_default_action``, ``milter_macro_daemon_name``); RFC 6376,
RFC 8463, RFC 8601 5 (forged A-R removed), RFC 9989 (p=reject: 550 5.7.1).
"""

from __future__ import annotations

import asyncio
import base64
import mailbox
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest

from postwarden.dns import DnsResolver
from postwarden.lab.dns import DnsServer
from postwarden.lab.dovecot import DovecotAuth
from postwarden.milter import dkim, keys
from postwarden.milter.reports import open_evaluation_store
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.postfix.process import free_port

NewRoot = Callable[[], Path]

AUTHSERV = "mx.example.net"
OUTSIDE = "127.0.0.2"            # not in the milter's internal_networks (127.0.0.1/32)
LOCAL = f"root@{TEST_HOSTNAME}"
USER, PASSWORD = "alice", "dinner at eight"


@dataclass
class Lab:
    dns: DnsServer
    state: Path
    socket: Path
    config: Path
    records: dict[str, str]
    external: keys.PrivateKey
    metrics: int = 0


def make_keys(state: Path) -> tuple[dict[str, str], keys.PrivateKey]:
    """Our two signing keys in ``state``; the DNS records of every key the test uses."""
    rsa = keys.generate("rsa", 2048)
    ed = keys.generate("ed25519")
    external = keys.generate("ed25519")
    keys.write_private(state / "r1.private", rsa)
    keys.write_private(state / "e1.private", ed)
    records = {
        "r1._domainkey.example.org": keys.dns_record(rsa.public_key()),
        "e1._domainkey.example.org": keys.dns_record(ed.public_key()),
        "x1._domainkey.good.example": keys.dns_record(external.public_key()),
    }
    return records, external


def zone(records: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    found: dict[str, dict[str, list[str]]] = {n: {"TXT": [r]} for n, r in records.items()}
    found.update({
        "example.org": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "_dmarc.example.org": {"TXT": ["v=DMARC1; p=reject"]},
        "good.example": {"TXT": [f"v=spf1 ip4:{OUTSIDE} -all"]},
        "_dmarc.good.example": {"TXT": ["v=DMARC1; p=reject"]},
        "reject.example": {"TXT": ["v=spf1 -all"]},
        "_dmarc.reject.example": {"TXT": ["v=DMARC1; p=reject"]},
    })
    return found


def wait_for_socket(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(str(path))
            return
        except OSError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the milter did not start"
            time.sleep(0.05)


@pytest.fixture
def lab() -> Iterator[Lab]:
    state = Path(tempfile.mkdtemp(prefix="postwarden-milter-"))
    state.chmod(0o755)
    records, external = make_keys(state)
    run = state / "run"
    run.mkdir(mode=0o755)
    data = state / "data"
    data.mkdir(mode=0o700)
    shutil.chown(data, "nobody", "nogroup")
    sock = run / "milter"
    with DnsServer(zone(records)) as dns:
        config = state / "postwarden.toml"
        config.write_text(f"""
[milter]
listen = ["unix:{sock}"]
socket_group = "postfix"
socket_mode = "0660"
user = "nobody"
group = "nogroup"
authserv_id = "{AUTHSERV}"
workers = 2
nameserver = "{dns.address}"
verify_budget = "5s"
store = "sqlite://{data}/dmarc.db"
[dkim]
internal_networks = ["127.0.0.1/32"]
[[dkim.key]]
domain = "example.org"
selector = "r1"
key_file = "r1.private"
[[dkim.key]]
domain = "example.org"
selector = "e1"
key_file = "e1.private"
algorithm = "ed25519-sha256"
[dkim.sign]
"example.org" = ["r1", "e1"]
[dmarc]
budget = 5.0
""")
        yield Lab(dns, state, sock, config, records, external)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def milter(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    lab.metrics = free_port("127.0.0.1")
    process = subprocess.Popen([sys.executable, "-m", "postwarden", "milter", "--config",
                                str(lab.config), "--metrics", f"127.0.0.1:{lab.metrics}"],
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(lab.socket, process)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, errors = process.communicate()
        print(errors[-20000:])  # shown by pytest when the test fails


def submission_service(port: int) -> list[str]:
    return [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "  -o syslog_name=postfix/submission",
        "  -o smtpd_sasl_auth_enable=yes",
        "  -o smtpd_sasl_type=dovecot",
        "  -o smtpd_sasl_path=private/auth",
        "  -o smtpd_tls_auth_only=no",
        "  -o smtpd_client_restrictions=permit_sasl_authenticated,reject",
        "  -o milter_macro_daemon_name=ORIGINATING",
    ]


def messages(pf: PostfixInstance) -> dict[str, bytes]:
    """Delivered messages by Subject, CRLF line ends (the mailbox has LF)."""
    found = {}
    for message in mailbox.mbox(pf.mail_directory / "root"):
        raw = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        found[str(message["Subject"])] = raw
    return found


def fields(raw: bytes, name: str) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    return [line.split(":", 1)[1].strip() for line in unfolded.split("\r\n")
            if line.lower().startswith(name.lower() + ":")]


def body(subject: str, sender: str, extra: str = "") -> bytes:
    return (f"{extra}From: {sender}\r\nTo: {LOCAL}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 30 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n"
            f"\r\nHello,\r\nthis is {subject}.\r\n").encode()


def opendkim_verdicts(raw: bytes, lab: Lab, work: Path) -> list[str]:
    """OpenDKIM's test mode (``opendkim -t``, keys from a TestPublicKeys file) on ``raw``:
    its verification lines."""
    opendkim = shutil.which("opendkim") or shutil.which("opendkim", path="/usr/sbin:/sbin")
    assert opendkim is not None, "run scripts/setup.sh as root: it installs opendkim"
    work.mkdir(exist_ok=True)
    (work / "keys").write_text("".join(f"{n} {r}\n" for n, r in lab.records.items()))
    (work / "opendkim.conf").write_text(f"Mode v\nTestPublicKeys {work / 'keys'}\n"
                                        "Syslog no\nRequireSafeKeys false\n")
    (work / "message.eml").write_bytes(raw)
    done = subprocess.run([opendkim, "-x", str(work / "opendkim.conf"), "-vv", "-t",
                           str(work / "message.eml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in (done.stdout + done.stderr).splitlines()
            if " verification (" in line]


def without_signatures(raw: bytes, count: int) -> bytes:
    """``raw`` without its first ``count`` DKIM-Signature fields."""
    for _ in range(count):
        raw = re.sub(rb"(?m)^DKIM-Signature:.*\r\n(?:[ \t].*\r\n)*", b"", raw, count=1)
    return raw


def scrape(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, text = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return text


def verify_both(raw: bytes, lab: Lab) -> list[tuple[str, str, str]]:
    """(result, algorithm, d=) per signature by postwarden, each checked by dkimpy too."""
    resolver = DnsResolver(nameserver=lab.dns.address, timeout=5)
    found = asyncio.run(dkim.verify(raw, resolver))
    for index in range(len(found)):
        assert dkimpy.DKIM(raw).verify(idx=index, dnsfunc=lambda name, timeout=5: lab
                                       .records[name.decode().rstrip(".")].encode())
    return [(r.result.value, r.algorithm, r.domain) for r in found]


@pytest.mark.postfix
def test_postfix_with_the_milter(new_root: NewRoot, lab: Lab,
                                 milter: subprocess.Popen[str]) -> None:
    submission = free_port("127.0.0.1")
    pf = PostfixInstance(new_root(), services=submission_service(submission), main_cf={
        "smtpd_milters": f"unix:{lab.socket}",
        "non_smtpd_milters": f"unix:{lab.socket}",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
    })
    with pf, DovecotAuth(new_root(), pf.queue_directory / "private" / "auth",
                         {USER: PASSWORD}):
        # (a) submission by an authenticated user: signed with RSA and Ed25519.
        with smtplib.SMTP(pf.address, submission, source_address=(OUTSIDE, 0),
                          timeout=30) as client:
            client.ehlo("laptop.example")
            token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            code, reply = client.docmd("AUTH", f"PLAIN {token}")
            assert code == 235, (reply, pf.log_text()[-2000:])
            client.sendmail("alice@example.org", [LOCAL], body("submitted", "alice@example.org"))
        # (b) inbound, signed by good.example, with a forged A-R claiming our authserv-id.
        forged = (f"Authentication-Results: {AUTHSERV}; dkim=pass header.d=reject.example\r\n"
                  "Authentication-Results: other.example; spf=pass\r\n")
        inbound = body("inbound", "news@good.example", forged)
        inbound = dkim.sign(inbound, domain="good.example", selector="x1",
                            key=lab.external) + inbound
        with smtplib.SMTP(pf.address, pf.port, source_address=(OUTSIDE, 0),
                          timeout=30) as client:
            client.ehlo("mail.good.example")
            client.sendmail("news@good.example", [LOCAL], inbound)
            # (c) a forged From of a p=reject domain, no signature, SPF fail: 550 5.7.1.
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("ceo@reject.example", [LOCAL],
                                body("forged", "ceo@reject.example"))
        assert refused.value.smtp_code == 550
        error = refused.value.smtp_error
        assert (error if isinstance(error, bytes) else error.encode()).startswith(b"5.7.1 ")
        # (d) the sendmail command (non_smtpd_milters): local mail is signed.
        sent = subprocess.run(["/usr/sbin/sendmail", "-C", str(pf.config_dir), "-i",
                               "-f", "alice@example.org", LOCAL],
                              input=body("local", "alice@example.org"), capture_output=True,
                              timeout=30)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 30
        while len(delivered := messages(pf)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        log = pf.log_text()
    assert set(delivered) == {"submitted", "inbound", "local"}, log[-3000:]

    for subject in ("submitted", "local"):
        raw = delivered[subject]
        assert sorted(verify_both(raw, lab)) == [
            ("pass", "ed25519-sha256", "example.org"), ("pass", "rsa-sha256", "example.org")]
        # OpenDKIM reports on the topmost signature only: ask it once per signature
        seen = []
        for n in range(2):
            [line] = opendkim_verdicts(without_signatures(raw, n), lab,
                                       lab.state / f"opendkim-{subject}-{n}")
            assert line.endswith("succeeded"), line
            seen.append(re.search(r"\(s=(\w+), d=example.org", line).group(1))  # type: ignore[union-attr]
        assert sorted(seen) == ["e1", "r1"]
        assert not any(a.startswith(AUTHSERV) for a in fields(raw, "Authentication-Results"))

    raw = delivered["inbound"]
    head = raw.split(b"\r\n\r\n")[0].decode()
    # inserted at index 0: above Postfix's own Received header
    assert head.index(f"Authentication-Results: {AUTHSERV};") < head.index("Received: from")
    results = fields(raw, "Authentication-Results")
    ours = [a for a in results if a.split(";")[0].strip().lower() == AUTHSERV]
    assert len(ours) == 1, results
    assert "dkim=pass" in ours[0] and "good.example" in ours[0], ours
    assert "spf=pass" in ours[0] and "dmarc=pass" in ours[0], ours
    assert "reject.example" not in ours[0]             # the forged one is gone
    assert "other.example; spf=pass" in results        # someone else's stays
    assert verify_both(raw, lab) == [("pass", "ed25519-sha256", "good.example")]

    # Two workers (prefork) serve the socket; each answers scrapes with its own counters.
    # A worker that has had no message yet has no messages_total series.
    scraped = [scrape(lab.metrics) for _ in range(6)]
    for text in scraped:
        count = re.search(r'postwarden_milter_message_seconds_count\{worker="\d"\} (\d+)', text)
        assert count is not None, text
        assert int(count.group(1)) == 0 or "postwarden_milter_messages_total{worker=" in text
    assert {re.search(r'worker="(\d)"', text).group(1) for text in scraped} <= {"0", "1"}  # type: ignore[union-attr]

    async def recorded() -> list[tuple[str, str]]:
        store = await open_evaluation_store(f"sqlite://{lab.state}/data/dmarc.db")
        try:
            return [(e.header_from, e.disposition)
                    for e in await store.between(0, time.time() + 60)]
        finally:
            await store.close()
    assert sorted(asyncio.run(recorded())) == [("good.example", "none"),
                                               ("reject.example", "reject")]
