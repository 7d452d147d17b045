"""TLS checks of the probed port: protocol versions, the certificate chain, AUTH before TLS.

Security: the server and everything it sends are untrusted. Each check opens a bounded
number of connections (at most four for the versions, one for the chain, one for AUTH),
every read under the client's timeout. Certificates are parsed by ``cryptography`` and a
chain that does not parse is a finding, never an exception. AUTH is tried with a fixed
dummy credential only (``DUMMY_USER``), never a real password, and is masked in the
transcript anyway; no message is sent.
Standards: RFC 3207 (STARTTLS), RFC 8314 3.3 (implicit TLS on 465) and 4.1 (submission
clients verify the certificate), RFC 8996 (TLS 1.0 and 1.1 deprecated), RFC 7435
(opportunistic security), RFC 7672 (DANE for SMTP) and RFC 8461 (MTA-STS), RFC 5280
4.1.2.5 (validity), RFC 6125 6.4 (name matching), RFC 4954 4 (AUTH; 503 and 538
"Encryption required for requested authentication mechanism"), RFC 4616 6 (PLAIN only
under TLS), Postfix TLS_README and SASL_README (``smtpd_tls_auth_only``).

Theory of operation
-------------------
1. Roles. The same finding weighs differently on an MX (port 25) and on submission (587,
   465). Port 25 TLS is opportunistic (RFC 7435): senders do not authenticate the server
   unless DANE or MTA-STS say so, and old peers still exist, so old TLS versions, a
   self-signed or mismatched certificate are warnings there. Submission clients check the
   certificate and send passwords (RFC 8314 4.1), so the same findings fail there.
   ``role_of`` decides by port; the ports come from ``ctx.submission_ports`` and
   ``ctx.implicit_tls_ports`` when the context has them (the tests set them, because test
   instances listen on random ports), else 587/465 and 465.
2. Versions. Each of TLS 1.0 to 1.3 is tried on a fresh connection with a client context
   pinned to that version alone (``client.tls_context``; below 1.2 it sets SECLEVEL 0, so a
   refusal is the server's). A handshake that fails before the server had a say
   (``LOCAL_FAILURES``) makes that version not testable here, never "refused".
3. Chain. The chain is judged by ``judge_chain``, which does no I/O: validity, names,
   issuer (self-signed, or not verifiable against the system trust store with
   ``cryptography.x509.verification``), key size and signature hash. Trust is verified at a
   moment inside the leaf's validity, so an expired certificate is one finding (expiry),
   not two. The names to cover are the greeting's host name and the probed host when it is
   a name; a target given as an address is checked by the greeting name only (an MX is
   looked up by name, and certificates rarely name addresses).
4. AUTH before TLS: the EHLO before STARTTLS must not list AUTH, and ``AUTH PLAIN`` with a
   dummy credential must be refused as not enabled (503) or needing encryption (538),
   not judged (535, 235) or continued (334, then cancelled with "*").
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import ssl
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from postwarden.audit.certs import covers, names, subject
from postwarden.audit.model import Role, Severity
from postwarden.probe.checks import ProbeContext, _this, check
from postwarden.probe.client import (
    SmtpClient,
    SmtpConnectionError,
    SmtpTlsError,
    TlsInfo,
    tls_context,
)
from postwarden.probe.model import CheckResult, Verdict
from postwarden.probe.smtp import SmtpError
from postwarden.probe.vantage import PROBE_HELO

DEFAULT_SUBMISSION_PORTS = frozenset({587, 465})
DEFAULT_IMPLICIT_TLS_PORTS = frozenset({465})
VERSIONS = (("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
            ("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3))
LEGACY = frozenset({"TLSv1", "TLSv1.1"})   # RFC 8996
# OpenSSL reasons for a handshake that failed on this side, before the server chose.
LOCAL_FAILURES = ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")
EXPIRY_WARNING = datetime.timedelta(days=14)
MIN_RSA_BITS = 2048      # NIST SP 800-57 part 1: 112-bit security
MIN_EC_BITS = 224
WEAK_HASHES = ("md5", "sha1")
DUMMY_USER, DUMMY_PASSWORD = "postwarden-probe", "not-a-real-password"
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})


def role_of(port: int, submission_ports: frozenset[int] = DEFAULT_SUBMISSION_PORTS) -> Role:
    """Theory point 1: submission on the submission ports, an MX everywhere else."""
    return Role.SUBMISSION if port in submission_ports else Role.MX


def _role(ctx: ProbeContext) -> Role:
    return role_of(ctx.port, getattr(ctx, "submission_ports", DEFAULT_SUBMISSION_PORTS))


def _implicit(ctx: ProbeContext) -> bool:
    return ctx.port in getattr(ctx, "implicit_tls_ports", DEFAULT_IMPLICIT_TLS_PORTS)


# -- one TLS session -------------------------------------------------------------------------

@dataclass(frozen=True)
class Handshake:
    offered: bool              # STARTTLS offered (always, for implicit TLS)
    tls: TlsInfo | None        # None: no TLS session; ``detail`` says why
    detail: str
    evidence: tuple[str, ...]


async def handshake(ctx: ProbeContext, context: ssl.SSLContext) -> Handshake:
    """One fresh connection: EHLO and STARTTLS (or implicit TLS) with ``context``."""
    implicit = _implicit(ctx)
    client = SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout, implicit_tls=implicit,
                        tls_context=context)
    try:
        try:
            await client.connect()
        except SmtpTlsError as error:      # implicit TLS: the handshake is the connect
            return Handshake(True, None, str(error).rpartition(": ")[2],
                             tuple(client.transcript.lines()[-2:]))
        if not implicit:
            await client.ehlo(PROBE_HELO)
            if "STARTTLS" not in client.extensions:
                return Handshake(False, None, "STARTTLS is not offered",
                                 tuple(client.transcript.lines()[-2:]))
            try:
                reply = await client.starttls(context)
            except SmtpConnectionError as error:   # an alert, or a server that hangs up
                return Handshake(True, None, str(error).rpartition(": ")[2],
                                 tuple(client.transcript.lines()[-3:]))
            if reply.code != 220:
                return Handshake(True, None, f"STARTTLS refused: {reply}",
                                 tuple(client.transcript.lines()[-2:]))
        return Handshake(True, client.tls, "", tuple(client.transcript.lines()[-3:]))
    finally:
        await client.close()


# -- PRB-TLS-VERSIONS -----------------------------------------------------------------------

@check("PRB-TLS-VERSIONS", "Old TLS versions (1.0, 1.1) accepted", Severity.MEDIUM)
async def tls_versions(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-TLS-VERSIONS")
    role = _role(ctx)
    lines: list[str] = []
    accepted: list[str] = []
    untested = 0
    for name, version in VERSIONS:
        shake = await handshake(ctx, tls_context(minimum=version, maximum=version))
        if not shake.offered:
            return me.result(Verdict.NOT_TESTABLE, shake.detail, shake.evidence, ctx.port)
        if shake.tls is not None:
            accepted.append(name)
            lines.append(f"{name}: accepted (cipher {shake.tls.cipher})")
        elif any(reason in shake.detail for reason in LOCAL_FAILURES):
            untested += 1
            lines.append(f"{name}: not testable here ({shake.detail})")
        else:
            lines.append(f"{name}: refused ({shake.detail})")
    old = [name for name in accepted if name in LEGACY]
    if old and role is Role.MX:
        return me.result(Verdict.WARN, f"{' and '.join(old)} accepted on an MX port: "
                         "tolerable for opportunistic TLS (RFC 7435), deprecated by RFC 8996",
                         lines, ctx.port, severity=Severity.LOW)
    if old:
        return me.result(Verdict.FAIL, f"{' and '.join(old)} accepted on a submission "
                         "port (RFC 8996, RFC 8314)", lines, ctx.port,
                         severity=Severity.MEDIUM)
    if not accepted:
        if untested == len(VERSIONS):
            return me.result(Verdict.NOT_TESTABLE, "no TLS version can be tried from here",
                             lines, ctx.port)
        return me.result(Verdict.FAIL, "TLS is offered but no version completes a handshake",
                         lines, ctx.port)
    return me.result(Verdict.PASS, f"only {' and '.join(accepted)} accepted", lines,
                     ctx.port)


# -- PRB-CERT ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    severity: Severity
    text: str


def _ok(text: str) -> Finding:
    return Finding(Verdict.PASS, Severity.INFO, text)


@functools.cache
def trust_store() -> Store | None:
    """The system's trust anchors (OpenSSL's default CA file), or None if there are none."""
    path = ssl.get_default_verify_paths().cafile
    if not path:
        return None
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            # Some system roots have a serial number RFC 5280 disallows; still roots.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            anchors = x509.load_pem_x509_certificates(handle.read())
    except (OSError, ValueError):
        return None
    return Store(anchors) if anchors else None


def _validity(leaf: x509.Certificate, now: datetime.datetime, role: Role) -> Finding:
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now > end:
        return Finding(Verdict.FAIL, Severity.HIGH, f"expiry: expired on {end:%Y-%m-%d}")
    if now < start:
        return Finding(Verdict.FAIL, Severity.HIGH,
                       f"expiry: not valid before {start:%Y-%m-%d}")
    left = end - now
    if left < EXPIRY_WARNING:
        return Finding(Verdict.WARN, Severity.LOW if role is Role.MX else Severity.MEDIUM,
                       f"expiry: expires in {left.days} days ({end:%Y-%m-%d})")
    return _ok(f"expiry: valid until {end:%Y-%m-%d} ({left.days} days)")


def _names(leaf: x509.Certificate, wanted: Iterable[str], role: Role) -> Finding:
    have = names(leaf)
    missing = [name for name in wanted if not any(covers(p, name.lower()) for p in have)]
    if missing:
        return Finding(Verdict.WARN if role is Role.MX else Verdict.FAIL,
                       Severity.LOW if role is Role.MX else Severity.MEDIUM,
                       f"name: {', '.join(missing)} not covered (certificate names "
                       f"{', '.join(have) or 'nothing'})")
    return _ok(f"name: {', '.join(wanted)} covered")


def _issuer(chain: list[x509.Certificate], role: Role, store: Store | None) -> Finding:
    leaf = chain[0]
    problem = None
    if len(chain) == 1 and leaf.issuer == leaf.subject:
        problem = "self-signed"
    elif store is None:
        problem = "not verified: no system trust store"
    else:
        # Theory point 3: verify inside the validity, by a name the leaf has.
        at = min(max(datetime.datetime.now(datetime.UTC), leaf.not_valid_before_utc),
                 leaf.not_valid_after_utc)
        name = next(iter(names(leaf)), "").removeprefix("*.") or "invalid"
        try:
            verifier = PolicyBuilder().store(store).time(at).build_server_verifier(
                x509.DNSName(name))
            verifier.verify(leaf, chain[1:])
        except (VerificationError, ValueError) as error:
            problem = f"not trusted ({error})"
    if problem is None:
        return _ok("issuer: chains to a trusted root")
    if role is Role.MX:
        return Finding(Verdict.WARN, Severity.LOW, f"issuer: {problem}; port 25 TLS is "
                       "opportunistic and not authenticated without DANE or MTA-STS")
    return Finding(Verdict.FAIL, Severity.MEDIUM,
                   f"issuer: {problem}; submission clients check certificates")


def _key(leaf: x509.Certificate) -> Finding:
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else "DSA"
        if key.key_size < MIN_RSA_BITS:
            return Finding(Verdict.FAIL, Severity.MEDIUM,
                           f"key: {kind} {key.key_size} bits, below {MIN_RSA_BITS}")
        return _ok(f"key: {kind} {key.key_size} bits")
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_BITS:
            return Finding(Verdict.FAIL, Severity.MEDIUM,
                           f"key: EC {key.curve.name}, below {MIN_EC_BITS} bits")
        return _ok(f"key: EC {key.curve.name}")
    return _ok(f"key: {type(key).__name__.removeprefix('_')}")


def _signature(leaf: x509.Certificate) -> Finding | None:
    if leaf.issuer == leaf.subject:
        return None  # a self-signature proves nothing either way
    try:
        algorithm = leaf.signature_hash_algorithm
    except UnsupportedAlgorithm:  # not one of the weak hashes this knows
        return None
    if isinstance(algorithm, hashes.HashAlgorithm) and algorithm.name in WEAK_HASHES:
        return Finding(Verdict.FAIL, Severity.MEDIUM, f"signature: {algorithm.name}")
    return None


def judge_chain(chain: list[x509.Certificate], wanted: list[str], role: Role,
                now: datetime.datetime, store: Store | None) -> list[Finding]:
    """Theory point 3; no I/O. ``chain`` is leaf first and not empty."""
    found = [_validity(chain[0], now, role), _names(chain[0], wanted, role),
             _issuer(chain, role, store), _key(chain[0])]
    signature = _signature(chain[0])
    return found + ([signature] if signature else [])


def worst(findings: list[Finding]) -> Finding:
    """The finding that decides the verdict: fail over warn over pass, then severity."""
    order = {Verdict.FAIL: 0, Verdict.WARN: 1, Verdict.PASS: 2}
    return min(findings, key=lambda f: (order.get(f.verdict, 3), f.severity.rank))


def _wanted(ctx: ProbeContext) -> list[str]:
    wanted = [ctx.server_name.lower()] if ctx.server_name else []
    try:
        ipaddress.ip_address(ctx.host)
    except ValueError:
        if ctx.host.lower() not in wanted:
            wanted.append(ctx.host.lower())
    return wanted


@check("PRB-CERT", "Certificate expired, misnamed, untrusted or weak", Severity.MEDIUM)
async def certificate(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-CERT")
    shake = await handshake(ctx, tls_context(minimum=ssl.TLSVersion.TLSv1))
    if shake.tls is None:
        return me.result(Verdict.NOT_TESTABLE, f"no TLS session: {shake.detail}",
                         shake.evidence, ctx.port)
    if not shake.tls.peer_chain:
        return me.result(Verdict.FAIL, "the server sent no certificate", shake.evidence,
                         ctx.port)
    try:
        chain = [x509.load_der_x509_certificate(der) for der in shake.tls.peer_chain]
    except ValueError as error:
        return me.result(Verdict.FAIL, f"the certificate does not parse: {error}",
                         shake.evidence, ctx.port)
    wanted = _wanted(ctx)
    findings = judge_chain(chain, wanted, _role(ctx), datetime.datetime.now(datetime.UTC),
                           trust_store())
    leaf = chain[0]
    lines = [f"leaf: {subject(leaf)}; issuer {leaf.issuer.rfc4514_string()}; "
             f"names {', '.join(names(leaf)) or '(none)'}; {len(chain)} in chain",
             *(f.text for f in findings)]
    decisive = worst(findings)
    if decisive.verdict is Verdict.PASS:
        return me.result(Verdict.PASS, "certificate valid, named, trusted and strong",
                         lines, ctx.port)
    bad = [f.text.partition(":")[0] for f in findings if f.verdict is not Verdict.PASS]
    return me.result(decisive.verdict, f"certificate problems: {', '.join(bad)}", lines,
                     ctx.port, severity=decisive.severity)


# -- PRB-AUTH-PLAINTEXT ---------------------------------------------------------------------

def _mechanisms(client: SmtpClient) -> list[str] | None:
    """The AUTH mechanisms EHLO listed; None when it did not list AUTH at all."""
    if "AUTH" not in client.extensions:
        return None
    return client.extensions["AUTH"].upper().split()


@check("PRB-AUTH-PLAINTEXT", "AUTH offered or accepted before TLS", Severity.HIGH)
async def auth_plaintext(ctx: ProbeContext) -> CheckResult:
    me = _this("PRB-AUTH-PLAINTEXT")
    severity = Severity.HIGH if _role(ctx) is Role.SUBMISSION else Severity.MEDIUM
    if _implicit(ctx):
        shake = await handshake(ctx, tls_context())
        return me.result(Verdict.PASS, "implicit TLS: nothing is said before TLS",
                         shake.evidence or (f"*: {shake.detail}",), ctx.port)
    async with SmtpClient(ctx.host, ctx.port, timeout=ctx.timeout) as client:
        await client.ehlo(PROBE_HELO)
        before = _mechanisms(client)
        # Theory point 4: a dummy credential only; the reply says whether AUTH is live.
        reply = await client.auth_plain(DUMMY_USER, DUMMY_PASSWORD)
        if reply.code == 334:
            await client.send_raw(b"*\r\n")   # RFC 4954 4: cancel the exchange
            await client.read_reply()
        after: list[str] | None = None
        if "STARTTLS" in client.extensions:
            try:
                if (await client.starttls()).code == 220:
                    await client.ehlo(PROBE_HELO)
                    after = _mechanisms(client)
            except SmtpError as error:
                client.transcript.note(f"STARTTLS failed: {error}")
        # The lines that show the verdict: the EHLOs, AUTH lines, and the TLS boundary.
        lines = [line for line in client.transcript.lines()
                 if any(word in line.upper() for word in ("EHLO", "AUTH", "TLS"))]
    # 235/535 judged the credential, 334 asked for more, 454 tried the backend: all live.
    live = reply.code in (235, 334, 454, 535)
    problems = []
    if before is not None:
        plain = sorted(PLAINTEXT_MECHANISMS.intersection(before))
        problems.append(f"AUTH {' '.join(before)} advertised before STARTTLS"
                        + (f" ({', '.join(plain)} send the password in clear)" if plain
                           else ""))
    if live:
        problems.append(f"AUTH PLAIN before TLS was taken up ({reply.code})")
    if problems:
        return me.result(Verdict.FAIL, "; ".join(problems), lines, ctx.port,
                         severity=severity)
    summary = f"AUTH before TLS refused ({reply.code})"
    if after is not None:
        summary += f"; after STARTTLS AUTH {' '.join(after)} is offered"
    return me.result(Verdict.PASS, summary, lines, ctx.port, severity=severity)
