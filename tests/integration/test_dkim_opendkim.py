"""Cross-verification with OpenDKIM: what postwarden signs, OpenDKIM verifies, and back.

OpenDKIM runs in its offline test mode (``opendkim -x CONF -t FILE``): keys come from a
``TestPublicKeys`` file instead of DNS, and in sign mode ``-vv`` prints the header it
would insert. ``RequireSafeKeys false`` because pytest's directories sit under /tmp, which
OpenDKIM rightly calls unsafe for keys. Skipped when Debian's opendkim is not installed.

Found here: OpenDKIM's Ed25519 signatures with simple header canonicalization do not verify,
in OpenDKIM either (the signature header is folded differently from how it was hashed);
that case is an expected failure with the evidence checked each run.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from postwarden.milter import dkim, keys
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
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=us-ascii\r\n"
           b"\r\n"
           b"Shall we meet at  noon?  \r\n"
           b"\r\n\r\n")


def opendkim(tmp_path: Path, conf: str, message: bytes) -> str:
    assert OPENDKIM is not None
    (tmp_path / "opendkim.conf").write_text(conf + "Syslog no\nRequireSafeKeys false\n")
    (tmp_path / "message.eml").write_bytes(message)
    done = subprocess.run([OPENDKIM, "-x", str(tmp_path / "opendkim.conf"), "-vv", "-t",
                           str(tmp_path / "message.eml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def verify_with_opendkim(tmp_path: Path, selector: str, record: str, message: bytes) -> str:
    (tmp_path / "keys").write_text(f"{selector}._domainkey.{DOMAIN} {record}\n")
    output = opendkim(tmp_path, f"Mode v\nTestPublicKeys {tmp_path / 'keys'}\n", message)
    line = [x for x in output.splitlines()
            if x.startswith("opendkim: ") and " verification (" in x]
    assert len(line) == 1, output
    return line[0]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", [("relaxed", "relaxed"), ("simple", "simple")])
def test_opendkim_verifies_postwarden_signatures(tmp_path: Path, kind: keys.KeyKind,
                                                 canon: tuple[str, str]) -> None:
    key = keys.generate(kind)
    signed = dkim.sign(MESSAGE, domain=DOMAIN, selector="pw", key=key,
                       canonicalization=canon) + MESSAGE
    record = keys.dns_record(key.public_key())
    line = verify_with_opendkim(tmp_path, "pw", record, signed)
    assert line.endswith("succeeded"), line
    assert "s=pw, d=example.com" in line
    tampered = signed.replace(b"noon", b"nine")
    assert "failed" in verify_with_opendkim(tmp_path, "pw", record, tampered)


def test_opendkim_verifies_postwarden_signature_on_lf_message(tmp_path: Path) -> None:
    key = keys.generate("ed25519")
    message = MESSAGE.replace(b"\r\n", b"\n")
    signed = dkim.sign(message, domain=DOMAIN, selector="pw", key=key) + message
    record = keys.dns_record(key.public_key())
    assert verify_with_opendkim(tmp_path, "pw", record, signed).endswith("succeeded")


def opendkim_sign(tmp_path: Path, kind: keys.KeyKind, canon: str) -> tuple[bytes, str]:
    """Sign MESSAGE with OpenDKIM; the signed message and the key record."""
    key = keys.generate(kind)
    keys.write_private(tmp_path / "od.private", key)
    algorithm = "ed25519-sha256" if kind == "ed25519" else "rsa-sha256"
    output = opendkim(tmp_path, (f"Mode s\nDomain {DOMAIN}\nSelector od\n"
                                 f"KeyFile {tmp_path / 'od.private'}\n"
                                 f"Canonicalization {canon}\n"
                                 f"SignatureAlgorithm {algorithm}\n"), MESSAGE)
    found = re.search(r"hname='DKIM-Signature' hvalue='([^']*)'", output)
    assert found, output
    header = b"DKIM-Signature: " + found.group(1).replace("\n", "\r\n").encode() + b"\r\n"
    return header + MESSAGE, keys.dns_record(key.public_key())


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_postwarden_verifies_opendkim_signatures(tmp_path: Path, kind: keys.KeyKind,
                                                 canon: str) -> None:
    signed, record = opendkim_sign(tmp_path, kind, canon)
    assert f"c={canon}".encode() in signed
    resolver = FakeResolver({f"od._domainkey.{DOMAIN}": [("TXT", record)]})
    found = asyncio.run(dkim.verify(signed, resolver))
    if kind == "ed25519" and canon.startswith("simple/") \
            and "failed" in verify_with_opendkim(tmp_path, "od", record, signed):
        # XXX: OpenDKIM 2.11.0~beta2 hashes its Ed25519 signature header with
        # "h=...; b=" on one line but inserts it with b= folded onto the next, which
        # simple header canonicalization does not forgive: OpenDKIM cannot verify it either.
        assert [r.result.value for r in found] == ["fail"]
        pytest.xfail("OpenDKIM's own ed25519 + simple header signature does not verify")
    assert [(r.result.value, r.selector, r.domain) for r in found] == [
        ("pass", "od", DOMAIN)], found
    tampered = asyncio.run(dkim.verify(signed.replace(b"Lunch", b"Brunch"), resolver))
    assert [r.result.value for r in tampered] == ["fail"]
