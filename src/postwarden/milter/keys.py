"""DKIM keys: generate, store, load, and publish them as DNS TXT records.

Security: private keys are the one secret the milter holds. They are created with mode 0600
from the first byte (``os.open`` with ``0o600`` and ``O_EXCL`` into a temporary file in the
target directory, fsynced, then renamed over the final name), never widened by a later
``chmod``. RSA signing keys under 2048 bits are refused; the ``allow_weak`` escape exists
only for tests that need a short key to check a verifier's RFC 8301 behaviour. Key files
read back are untrusted input: a file that does not parse as a PEM RSA or Ed25519 private
key is a ``KeyError`` with the path, never a traceback.
Standards: RFC 6376 3.6.1 (the key record: ``v=DKIM1; k=...; p=...``, p= being the base64
SubjectPublicKeyInfo for RSA), RFC 8463 4 (for Ed25519, p= is the raw 32-byte public key),
RFC 8301 3.2 (RSA keys of at least 1024 bits, 2048 recommended), RFC 1035 3.3.14 and 5.1
(a TXT record is a sequence of character-strings of at most 255 octets each, written in a
zone file as quoted strings inside parentheses).

Theory of operation
-------------------
A key is a ``cryptography`` private key object from birth to use: ``generate`` makes one,
``write_private`` stores it as PKCS#8 PEM (what ``openssl genpkey`` and OpenSSL 3's
``opendkim-genkey`` write, so keys move freely between postwarden and OpenDKIM), and
``load_private`` reads PKCS#8 or traditional ``BEGIN RSA PRIVATE KEY`` files. ``dns_record``
derives the TXT value from the public half, and ``zone_line`` cuts it into 255-octet
character-strings for a zone file (DNS joins them back without separators).
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwarden.errors import PostwardenError

KeyKind = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_SIGNING_BITS = 2048  # RFC 8301 3.2: SHOULD be at least 2048
MIN_RSA_BITS = 1024  # RFC 8301 3.2: MUST be at least 1024
MAX_RSA_BITS = 8192
MAX_KEY_FILE = 64 * 1024
TXT_STRING = 255  # RFC 1035 3.3: a character-string holds at most 255 octets


class DkimKeyError(PostwardenError):
    """A DKIM key that cannot be made, read or used."""


def generate(kind: KeyKind, bits: int = 2048, *, allow_weak: bool = False) -> PrivateKey:
    """A fresh private key. RSA under 2048 bits only with ``allow_weak`` (tests)."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind != "rsa":
        raise DkimKeyError(f"key type {kind!r}: expected rsa or ed25519")
    if bits > MAX_RSA_BITS or bits < (MIN_RSA_BITS if allow_weak else MIN_SIGNING_BITS):
        raise DkimKeyError(f"RSA key of {bits} bits: signing keys need 2048 to "
                           f"{MAX_RSA_BITS} bits (RFC 8301 3.2)")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def kind_of(key: PrivateKey | PublicKey) -> KeyKind:
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey) \
        else "rsa"


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_private(path: Path, key: PrivateKey) -> None:
    """Write ``key`` to ``path`` as PKCS#8 PEM, mode 0600, atomically (temp file + rename)."""
    data = private_pem(key)
    directory = path.parent
    name = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, path)
    except BaseException:
        name.unlink(missing_ok=True)
        raise


def load_private(path: Path) -> PrivateKey:
    """Read a PEM private key (PKCS#8 or traditional RSA) for signing."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise DkimKeyError(f"{path}: cannot read key: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise DkimKeyError(f"{path}: too large for a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise DkimKeyError(f"{path}: not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{path}: RSA key of {key.key_size} bits is too short "
                               "(RFC 8301 3.2)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DkimKeyError(f"{path}: not an RSA or Ed25519 key")


def public_key_data(public_key: PublicKey) -> bytes:
    """The bytes that p= carries, before base64."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        # RFC 8463 4: the raw 32-octet public key, not a SubjectPublicKeyInfo
        return public_key.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw)
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def dns_record(public_key: PublicKey, kind: KeyKind | None = None) -> str:
    """The TXT value to publish at ``selector._domainkey.domain`` (RFC 6376 3.6.1)."""
    actual = kind_of(public_key)
    if kind is not None and kind != actual:
        raise DkimKeyError(f"key is {actual}, not {kind}")
    data = base64.b64encode(public_key_data(public_key)).decode("ascii")
    return f"v=DKIM1; k={actual}; p={data}"


def zone_line(domain: str, selector: str, record: str) -> str:
    """``S._domainkey.D. IN TXT ( "..." "..." )``, strings of at most 255 octets."""
    raw = record.encode("ascii")
    strings = [raw[i:i + TXT_STRING].decode("ascii") for i in range(0, len(raw), TXT_STRING)]
    quoted = " ".join(f'"{s}"' for s in strings)
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {quoted} )"
