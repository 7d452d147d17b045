"""Certificate, key and DH parameter material named by smtpd's TLS settings.

Security: every byte of these files is untrusted. Files are read through the audit
``Context`` (at most ``context.MAX_READ`` bytes each) and parsed by the ``cryptography``
package (PEM certificates and keys) or by hand (the size of a DH prime); a file that is
missing, unreadable, not PEM or not parseable becomes a ``Problem``, never an exception.
Standards: postconf(5) smtpd_tls_chain_files, smtpd_tls_cert_file/key_file (and the ec/dsa
variants); TLS_README "Server-side certificate and private key configuration"; RFC 6125
6.4 (DNS-ID and CN matching); RFC 7468 (PEM); PKCS #3 (DH parameters).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from postwarden.audit.context import Context
from postwarden.postfix.mastercf import Service

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 .]+)-----\r?\n(?:.*?)-----END \1-----", re.S)


@dataclass(frozen=True)
class Bundle:
    """A private key and the certificate chain that goes with it (leaf first)."""

    parameter: str
    path: str  # the file holding the leaf certificate
    key: PrivateKeyTypes | None
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class Problem:
    parameter: str
    path: str | None
    reason: str


@dataclass
class Material:
    bundles: list[Bundle] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def blocks(ctx: Context, parameter: str, path: str, found: Material,
            ) -> list[x509.Certificate | PrivateKeyTypes] | None:
    """The parsed PEM objects of one file, in order; None (and a problem) if unusable."""
    facts = ctx.file(path)
    if not facts.exists:
        found.problems.append(Problem(parameter, facts.path, "file does not exist"))
        return None
    if not facts.is_file:
        found.problems.append(Problem(parameter, facts.path, "not a regular file"))
        return None
    data = ctx.read(path)
    if data is None:
        # XXX: an unprivileged audit cannot read root-only keys; only root can tell that
        # the file is unreadable for Postfix (which loads it as root). Way out: run as root.
        if os.geteuid() == 0:
            found.problems.append(Problem(parameter, facts.path, "file is unreadable"))
        return None
    items: list[x509.Certificate | PrivateKeyTypes] = []
    for match in PEM_BLOCK.finditer(data):
        label, block = match.group(1).decode("ascii"), match.group(0)
        try:
            if label in ("CERTIFICATE", "TRUSTED CERTIFICATE"):
                items.append(x509.load_pem_x509_certificate(block))
            elif label.endswith("PRIVATE KEY"):
                if "ENCRYPTED" in label or b"Proc-Type: 4,ENCRYPTED" in block:
                    found.problems.append(Problem(
                        parameter, facts.path,
                        "private key is passphrase-protected; smtpd cannot unlock it"))
                    continue
                items.append(serialization.load_pem_private_key(block, password=None))
        except Exception as error:  # any parse failure is a finding
            found.problems.append(Problem(parameter, facts.path,
                                           f"cannot parse {label} block: {error}"))
    if not items:
        found.problems.append(Problem(parameter, facts.path, "no usable PEM data"))
        return None
    return items


def public_bytes(obj: x509.Certificate | PrivateKeyTypes) -> bytes | None:
    try:
        return obj.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # key types without an SPKI form cannot match
        return None


def check_match(bundle: Bundle, found: Material) -> None:
    if bundle.key is None or not bundle.chain:
        return
    if public_bytes(bundle.key) != public_bytes(bundle.chain[0]):
        found.problems.append(Problem(bundle.parameter, bundle.path,
                                       "private key does not match the certificate"))


def chain_files(ctx: Context, svc: Service, found: Material) -> None:
    """smtpd_tls_chain_files: each key followed by its chain, possibly across files."""
    parameter = "smtpd_tls_chain_files"
    key: PrivateKeyTypes | None = None
    chain: list[x509.Certificate] = []
    path = ""

    def close() -> None:
        if key is not None and not chain:
            found.problems.append(Problem(parameter, path, "private key without certificate"))
        elif chain:
            bundle = Bundle(parameter, path, key, tuple(chain))
            found.bundles.append(bundle)
            check_match(bundle, found)

    for name in ctx.words(parameter, svc):
        items = blocks(ctx, parameter, name, found)
        for item in items or ():
            if isinstance(item, x509.Certificate):
                if key is None and not chain:
                    found.problems.append(Problem(parameter, ctx.file(name).path,
                                                   "certificate before its private key"))
                if not chain:
                    path = ctx.file(name).path
                chain.append(item)
            else:
                close()
                key, chain, path = item, [], ctx.file(name).path
    close()


def legacy_files(ctx: Context, svc: Service, found: Material) -> None:
    for cert_param, key_param in (("smtpd_tls_cert_file", "smtpd_tls_key_file"),
                                  ("smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
                                  ("smtpd_tls_dcert_file", "smtpd_tls_dkey_file")):
        cert_path = ctx.value(cert_param, svc)
        if not cert_path:
            continue
        # postconf(5): an empty key file setting means the key is in the certificate file.
        key_path = ctx.value(key_param, svc) or cert_path
        certs = [i for i in blocks(ctx, cert_param, cert_path, found) or ()
                 if isinstance(i, x509.Certificate)]
        keys = [i for i in (blocks(ctx, key_param, key_path, found) or ())
                if not isinstance(i, x509.Certificate)]
        if not keys and ctx.file(key_path).exists and ctx.read(key_path) is not None:
            found.problems.append(Problem(key_param, ctx.file(key_path).path,
                                           "no private key in the file"))
        if not certs:
            continue
        bundle = Bundle(cert_param, ctx.file(cert_path).path, keys[0] if keys else None,
                         tuple(certs))
        found.bundles.append(bundle)
        check_match(bundle, found)


def material(ctx: Context, svc: Service) -> Material:
    found = Material()
    if ctx.words("smtpd_tls_chain_files", svc):
        # Postfix smtpd.c: a non-empty chain_files makes smtpd ignore the legacy files.
        chain_files(ctx, svc, found)
    else:
        legacy_files(ctx, svc, found)
    if not found.bundles and not found.problems:
        found.problems.append(Problem("smtpd_tls_cert_file", None,
                                       "TLS is on but no certificate is configured"))
    return found


def names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    except Exception:  # a malformed extension names nothing
        return []
    # RFC 6125 6.4.4: the CN is a fallback only when there is no DNS-ID at all.
    return [str(a.value).lower()
            for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def covers(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    # RFC 6125 6.4.3: a wildcard stands for exactly one left-most label.
    return (pattern.startswith("*.") and "." in name
            and name.split(".", 1)[1] == pattern[2:])


def subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except Exception:  # an odd subject is still evidence
        return "(unprintable subject)"


def der_length(data: bytes, at: int) -> tuple[int, int] | None:
    """(length, offset of the contents) of the DER element whose length byte is at ``at``."""
    if at >= len(data):
        return None
    first = data[at]
    if first < 0x80:
        return first, at + 1
    count = first & 0x7F
    if not 0 < count <= 4 or at + 1 + count > len(data):
        return None
    return int.from_bytes(data[at + 1:at + 1 + count], "big"), at + 1 + count


def dh_bits(data: bytes) -> int | None:
    """Size of the prime in a PEM "DH PARAMETERS" block (PKCS #3: SEQUENCE { p, g, ... }).

    Read by hand: the cryptography package deprecates finite-field DH, and only p's size is
    needed.
    """
    match = re.search(rb"-----BEGIN (?:X9.42 )?DH PARAMETERS-----(.*?)-----END", data, re.S)
    if match is None:
        return None
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError:
        return None
    outer = der_length(der, 1) if der[:1] == b"\x30" else None
    if outer is None or der[outer[1]:outer[1] + 1] != b"\x02":
        return None
    inner = der_length(der, outer[1] + 1)
    if inner is None or inner[1] + inner[0] > len(der):
        return None
    prime = int.from_bytes(der[inner[1]:inner[1] + inner[0]], "big")
    return prime.bit_length() or None
