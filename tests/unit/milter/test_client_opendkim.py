"""The milter client against a real OpenDKIM milter (Debian's opendkim, run from a private
configuration on a unix socket in the test's directory).

OpenDKIM signs what the client sends from an internal host, and the signature it returns
verifies in postwarden; in verify mode (keys from a TestPublicKeys file) OpenDKIM reports
dkim=pass for a postwarden signature and dkim=fail once the body is changed. So the
client speaks the protocol as libmilter expects it from an MTA.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.milter import dkim, keys
from postwarden.milter.client import Envelope, MilterClient, deliver, prepare
from postwarden.milter.protocol import SMFIP_HDR_LEADSPC, Verdict
from postwarden.testing.dns import FakeResolver

OPENDKIM = shutil.which("opendkim") or shutil.which("opendkim", path="/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(OPENDKIM is None, reason="opendkim (Debian opendkim) missing")

DOMAIN = "example.com"
MESSAGE = (b"From: Alice <alice@example.com>\r\n"
           b"To: Bob <bob@example.org>\r\n"
           b"Subject: Lunch\r\n"
           b"  tomorrow?\r\n"
           b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <1@example.com>\r\n"
           b"\r\n"
           b"Shall we meet at  noon?  \r\n")
INTERNAL = Envelope(sender="alice@example.com", recipients=("bob@example.org",),
                    client_address="127.0.0.1", client_name="localhost",
                    macros={"C": {"j": "mail.example.com"}, "M": {"i": "ABC"},
                            "E": {"i": "ABC"}})
EXTERNAL = Envelope(sender="alice@example.com", recipients=("bob@example.org",),
                    client_address="192.0.2.9", client_name="mail.example.com",
                    macros={"C": {"j": "mx.example.org"}, "E": {"i": "DEF"}})

Start = Callable[[str], str]


@pytest.fixture
def opendkim(tmp_path: Path) -> Iterator[Start]:
    """Start OpenDKIM with ``settings`` added to a private configuration; its endpoint."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: str) -> str:
        assert OPENDKIM is not None
        path = tmp_path / f"opendkim{len(started)}.sock"
        conf = tmp_path / f"opendkim{len(started)}.conf"
        conf.write_text(f"Syslog no\nRequireSafeKeys false\nSocket local:{path}\n"
                        f"Canonicalization relaxed/relaxed\n{settings}")
        process = subprocess.Popen([OPENDKIM, "-f", "-x", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(process)
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return f"unix:{path}"
                except OSError:
                    assert time.monotonic() < deadline, "OpenDKIM did not start"
            time.sleep(0.05)

    yield start
    for process in started:
        process.kill()  # libmilter takes 5 s to stop on SIGTERM; nothing here needs saving
        process.wait()


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_opendkim_signs_what_the_client_sends(opendkim: Start, tmp_path: Path,
                                              kind: keys.KeyKind) -> None:
    key = keys.generate(kind)
    keys.write_private(tmp_path / "key.private", key)
    algorithm = "ed25519-sha256" if kind == "ed25519" else "rsa-sha256"
    endpoint = opendkim(f"Mode s\nDomain {DOMAIN}\nSelector od\nInternalHosts 127.0.0.1\n"
                        f"KeyFile {tmp_path / 'key.private'}\nSignatureAlgorithm {algorithm}\n")
    outcome = asyncio.run(deliver(endpoint, INTERNAL, MESSAGE))
    assert outcome.stage == "eom" and outcome.reply in (Verdict.CONTINUE, Verdict.ACCEPT)
    [value] = outcome.headers("DKIM-Signature")
    assert f"a={algorithm}".encode() in value
    signed = b"DKIM-Signature:" + value.replace(b"\n", b"\r\n") + b"\r\n" + MESSAGE
    resolver = FakeResolver({f"od._domainkey.{DOMAIN}": [
        ("TXT", keys.dns_record(key.public_key()))]})
    results = asyncio.run(dkim.verify(signed, resolver))
    assert [(r.result.value, r.domain, r.selector) for r in results] == [
        ("pass", DOMAIN, "od")], results


def test_opendkim_verifies_a_postwarden_signature(opendkim: Start, tmp_path: Path) -> None:
    key = keys.generate("rsa")
    (tmp_path / "keys").write_text(
        f"pw._domainkey.{DOMAIN} {keys.dns_record(key.public_key())}\n")
    endpoint = opendkim(f"Mode v\nTestPublicKeys {tmp_path / 'keys'}\n"
                        "AuthservID mx.example.org\n")
    signed = dkim.sign(MESSAGE, domain=DOMAIN, selector="pw", key=key) + MESSAGE
    good = asyncio.run(deliver(endpoint, EXTERNAL, signed))
    [result] = good.headers("Authentication-Results")
    assert b"mx.example.org" in result and b"dkim=pass" in result and b"header.d=example.com" \
        in result, good
    bad = asyncio.run(deliver(endpoint, EXTERNAL, signed.replace(b"noon", b"nine")))
    [result] = bad.headers("Authentication-Results")
    assert b"dkim=fail" in result, bad


def test_negotiation_with_opendkim(opendkim: Start, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("")
    endpoint = opendkim(f"Mode v\nTestPublicKeys {tmp_path / 'keys'}\n")

    async def main() -> None:
        client = await MilterClient.open(endpoint)
        agreed = await client.negotiate()
        # libmilter asks for the leading space of header values, as postwarden does
        assert agreed.protocol & SMFIP_HDR_LEADSPC
        outcome = await client.session(EXTERNAL, prepare(MESSAGE))
        assert outcome.stage == "eom"
        await client.quit()
        await client.close()

    asyncio.run(main())
