"""TLS: inbound TLS of every public smtpd service, as that service sees its settings.

Security: reads the parsed configuration and, for the certificate rules, the certificate,
key and DH parameter files it names (at most ``context.MAX_READ`` bytes each, parsed by the
``cryptography`` package). Every byte of those files is untrusted: a file that is missing,
unreadable, not PEM or not parseable is a finding, never an exception.
Standards: postconf(5) smtpd_tls_* and tls_*; TLS_README ("Server-side TLS"); RFC 3207
(STARTTLS), RFC 8314 3.3 and 7.3 (implicit TLS and TLS for submission), RFC 8996
(TLS 1.0/1.1 deprecated), RFC 7525 / RFC 9325 (recommendations), RFC 6125 6.4 (names).

Theory of operation
-------------------
Each rule looks at the inbound services as ``tlsbase`` finds them (a service's main.cf
settings plus its master.cf ``-o`` overrides; for a public postscreen, the ``smtpd pass``
service behind it), compares protocol lists as sets (``enabled_protocols``) and reads
certificate files once per rule run (``collect``); ``tlsbase`` explains each. The remedies
are in ``tlsfix``, which says what harden changes and what it leaves to the operator.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from postwarden.audit.certs import covers, dh_bits, names, subject
from postwarden.audit.checks.tlsbase import (
    BROKEN,
    DEPRECATED,
    HARMLESS_EXCLUSIONS,
    PROTOCOLS,
    cert_hits,
    cipher_parameter,
    collect,
    enabled_protocols,
    inbound_services,
    key_files,
    level,
    protocol_parameter,
    severity,
    tls_on,
    weak_words,
    with_tls,
)
from postwarden.audit.checks.tlsfix import (
    builtin_dh,
    certificate,
    chain_files_only,
    exclude_broken,
    excluding,
    lenient_mx,
    log_level_1,
    opportunistic_mx,
    stock_ciphers,
    switch_on,
    tls12,
)
from postwarden.audit.context import Context
from postwarden.audit.fixes import insert
from postwarden.audit.model import Hit, Role, Severity, rule

P5 = "postconf(5)"
TLS = "TLS_README"
MX_MSA = (Role.MX, Role.SUBMISSION)

WEAK_GRADES = ("export", "low", "null")
EXPIRY_WARNING = timedelta(days=14)


def _show(protocols: frozenset[str]) -> str:
    return ", ".join(p for p in PROTOCOLS if p in protocols) or "none"


# -- rules: protocol level -------------------------------------------------------------------

@rule(id="TLS-001", title="Public SMTP service offers no TLS",
      severity=Severity.HIGH, roles=MX_MSA,
      by_role={Role.SUBMISSION: Severity.CRITICAL},
      parameters=("smtpd_tls_security_level", "smtpd_use_tls", "smtpd_tls_wrappermode"),
      rationale="Postfix's own default is no TLS at all, so unless a security level is set "
                "every message, and on a submission port every password, crosses the network "
                "in clear text.",
      fix="Set smtpd_tls_security_level = may on port 25 and = encrypt (or wrapper mode on "
          "465) on the submission services, with a certificate and key.",
      references=(f"{P5} smtpd_tls_security_level", TLS, "RFC 3207", "RFC 8314 3.3"),
      remedy=switch_on, takes=("tls-cert", "tls-key"))

def no_starttls(ctx: Context) -> Iterator[Hit]:
    for inbound in inbound_services(ctx):
        svc = inbound.service
        if not tls_on(ctx, svc):
            shown = ctx.value("smtpd_tls_security_level", svc) or "(empty)"
            yield Hit(f"{svc.key}: smtpd_tls_security_level = {shown}, no wrapper mode",
                      parameter="smtpd_tls_security_level", service=svc.key,
                      severity=Severity.CRITICAL if inbound.submission else Severity.HIGH)


@rule(id="TLS-002", title="TLS required on the public MX port",
      severity=Severity.HIGH, roles=(Role.MX,),
      parameters=("smtpd_tls_security_level", "smtpd_enforce_tls"),
      rationale="postconf(5) and RFC 3207 4 forbid enforcing TLS on a publicly referenced "
                "server: senders without STARTTLS, or whose handshake fails, cannot deliver "
                "and their mail bounces or waits in their queue.",
      fix="Use smtpd_tls_security_level = may on the port-25 service; enforce TLS on the "
          "submission services only.",
      references=(f"{P5} smtpd_tls_security_level", "RFC 3207 4", TLS),
      remedy=opportunistic_mx)

def mandatory_on_mx(ctx: Context) -> Iterator[Hit]:
    for inbound in inbound_services(ctx):
        svc = inbound.service
        if inbound.mx and ctx.enforces_tls(svc):
            yield Hit(f"{svc.key}: smtpd_tls_security_level = {level(ctx, svc)} on port 25",
                      parameter="smtpd_tls_security_level", service=svc.key)


@rule(id="TLS-003", title="Submission service does not enforce TLS",
      severity=Severity.HIGH, roles=(Role.SUBMISSION,),
      parameters=("smtpd_tls_security_level", "smtpd_tls_wrappermode"),
      rationale="With opportunistic TLS an attacker on the path can strip STARTTLS and read "
                "the client's credentials and mail; RFC 8314 wants submission always "
                "encrypted, implicit TLS on 465 and mandatory STARTTLS on 587.",
      fix="Add -o smtpd_tls_security_level=encrypt to the 587 service and "
          "-o smtpd_tls_wrappermode=yes to the 465 service in master.cf.",
      references=("RFC 8314 3.3", "RFC 8314 7.3", TLS, f"{P5} smtpd_tls_wrappermode"),
      remedy=switch_on, takes=("tls-cert", "tls-key"))

def submission_not_enforced(ctx: Context) -> Iterator[Hit]:
    for inbound in inbound_services(ctx):
        svc = inbound.service
        port = ctx.port(svc)
        if not inbound.submission or port == 25:
            continue  # SASL on port 25 is the SASL rules' business; TLS-002 forbids encrypt
        if port == 465 and not ctx.yes("smtpd_tls_wrappermode", svc):
            yield Hit(f"{svc.key}: port 465 without smtpd_tls_wrappermode = yes",
                      parameter="smtpd_tls_wrappermode", service=svc.key)
        elif port != 465 and not ctx.enforces_tls(svc):
            # Point at the service line when it has no -o of its own: that is where the fix goes.
            file, line = ((None, None) if ctx.overridden("smtpd_tls_security_level", svc)
                          else (ctx.master_path, svc.lineno))
            yield Hit(f"{svc.key}: smtpd_tls_security_level = {level(ctx, svc)}",
                      parameter="smtpd_tls_security_level", service=svc.key, file=file,
                      line=line)


@rule(id="TLS-004", title="SSLv2 or SSLv3 accepted",
      severity=Severity.HIGH, roles=MX_MSA,
      parameters=("smtpd_tls_protocols", "smtpd_tls_mandatory_protocols"),
      rationale="SSL 2 and SSL 3 are broken (DROWN, POODLE; RFC 6176, RFC 7568); a "
                "protocol list that leaves them on lets a downgrade expose the session.",
      fix="Exclude SSLv2 and SSLv3: add !SSLv2, !SSLv3 to the list, or use the default "
          "(>=TLSv1 since Postfix 3.6); >=TLSv1.2 where clients allow it.",
      references=(f"{P5} smtpd_tls_protocols", "RFC 6176", "RFC 7568", TLS),
      remedy=exclude_broken)

def ssl_protocols(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        name = protocol_parameter(ctx, svc)
        enabled = enabled_protocols(ctx.value(name, svc))
        if enabled is not None and enabled & BROKEN:
            yield Hit(f"{svc.key}: {name} = {ctx.value(name, svc) or '(empty)'} enables "
                      f"{_show(enabled & BROKEN)}", parameter=name, service=svc.key)


@rule(id="TLS-005", title="TLS 1.0/1.1 accepted where TLS is enforced",
      severity=Severity.MEDIUM, roles=(Role.SUBMISSION,),
      parameters=("smtpd_tls_mandatory_protocols",),
      rationale="RFC 8996 deprecates TLS 1.0 and 1.1; a service that requires TLS talks to "
                "mail clients, all of which speak TLS 1.2, so the old versions add only risk.",
      fix="smtpd_tls_mandatory_protocols = >=TLSv1.2 (before Postfix 3.6: "
          "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1), or add !TLSv1, !TLSv1.1 to a list you wrote.",
      references=("RFC 8996 2", "RFC 8996 3", "RFC 8314 4.1",
                  f"{P5} smtpd_tls_mandatory_protocols"),
      remedy=excluding(DEPRECATED, tls12))

def old_tls_enforced(ctx: Context) -> Iterator[Hit]:
    for inbound in inbound_services(ctx):
        svc = inbound.service
        if not ctx.enforces_tls(svc):
            continue
        name = "smtpd_tls_mandatory_protocols"
        enabled = enabled_protocols(ctx.value(name, svc))
        if enabled is not None and enabled & DEPRECATED:
            yield Hit(f"{svc.key}: {name} = {ctx.value(name, svc) or '(empty)'} enables "
                      f"{_show(enabled & DEPRECATED)}", parameter=name, service=svc.key)


@rule(id="TLS-006", title="TLS 1.0/1.1 accepted on the opportunistic MX",
      severity=Severity.LOW, roles=(Role.MX,), parameters=("smtpd_tls_protocols",),
      rationale="RFC 8996 deprecates TLS 1.0 and 1.1 and test suites such as internet.nl ask "
                "for their removal; on port 25 the trade-off is real, since a sender that "
                "cannot do TLS 1.2 falls back to plain text, so this is a profile choice.",
      fix="For a modern profile set smtpd_tls_protocols = >=TLSv1.2; to keep maximum "
          "reach, accept the finding.",
      references=("RFC 8996", f"{P5} smtpd_tls_protocols", TLS))
def old_tls_mx(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        if not inbound.mx or ctx.enforces_tls(svc):
            continue
        enabled = enabled_protocols(ctx.value("smtpd_tls_protocols", svc))
        if enabled is not None and enabled & DEPRECATED:
            yield Hit(f"{svc.key}: smtpd_tls_protocols = "
                      f"{ctx.value('smtpd_tls_protocols', svc) or '(empty)'} enables "
                      f"{_show(enabled & DEPRECATED)}",
                      parameter="smtpd_tls_protocols", service=svc.key)


@rule(id="TLS-007", title="Weak cipher grade",
      severity=Severity.HIGH, roles=MX_MSA,
      parameters=("smtpd_tls_ciphers", "smtpd_tls_mandatory_ciphers",
                  "tls_medium_cipherlist", "tls_high_cipherlist"),
      rationale="The export, low and null grades, and custom cipher lists that switch on "
                "EXPORT, LOW, NULL, RC4, 3DES or MD5 suites, give no real confidentiality or "
                "integrity (RFC 7465 forbids RC4).",
      fix="Use the medium grade (the default) and remove custom tls_*_cipherlist "
          "settings: the stock lists exclude broken ciphers.",
      references=(f"{P5} smtpd_tls_mandatory_ciphers", f"{P5} tls_medium_cipherlist",
                  "RFC 7465", "RFC 9325 4.1"),
      remedy=stock_ciphers)

def weak_ciphers(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        name = cipher_parameter(ctx, svc)
        grade = ctx.value(name, svc).lower()
        if grade in WEAK_GRADES:
            yield Hit(f"{svc.key}: {name} = {grade}", parameter=name, service=svc.key)
            continue
        if grade not in ("medium", "high"):
            continue
        listname = f"tls_{grade}_cipherlist"
        weak = weak_words(ctx.value(listname, svc))
        if weak:
            yield Hit(f"{svc.key}: {listname} enables {', '.join(weak)}",
                      parameter=listname, service=svc.key)


@rule(id="TLS-008", title="Cipher choice too strict for the public MX",
      severity=Severity.LOW, roles=(Role.MX,),
      parameters=("smtpd_tls_ciphers", "smtpd_tls_exclude_ciphers"),
      rationale="postconf(5) warns that insisting on high-grade ciphers, or excluding "
                "ciphers that are not broken, on an opportunistic server only makes senders "
                "that cannot agree fall back to plain text.",
      fix="Leave smtpd_tls_ciphers at medium on port 25 and exclude only broken ciphers.",
      references=(f"{P5} smtpd_tls_ciphers", f"{P5} smtpd_tls_exclude_ciphers", TLS),
      remedy=lenient_mx)

def strict_mx_ciphers(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        if not inbound.mx or ctx.enforces_tls(svc):
            continue
        if ctx.value("smtpd_tls_ciphers", svc).lower() == "high":
            yield Hit(f"{svc.key}: smtpd_tls_ciphers = high on port 25",
                      parameter="smtpd_tls_ciphers", service=svc.key)
        broad = [w for w in ctx.words("smtpd_tls_exclude_ciphers", svc)
                 if w.lstrip("!").lower() not in HARMLESS_EXCLUSIONS]
        if broad:
            yield Hit(f"{svc.key}: smtpd_tls_exclude_ciphers drops {', '.join(broad)}",
                      parameter="smtpd_tls_exclude_ciphers", service=svc.key)


@rule(id="TLS-009", title="Client chooses the cipher order",
      severity=Severity.INFO, roles=MX_MSA, parameters=("tls_preempt_cipherlist",),
      rationale="Some test suites (internet.nl) expect the server's cipher preference to "
                "win; Postfix's default and Mozilla's intermediate profile let the client "
                "choose, which is sound when every enabled cipher is good. Informational.",
      fix="Set tls_preempt_cipherlist = yes if you follow a profile that asks for server "
          "order; otherwise no change is needed.",
      references=(f"{P5} tls_preempt_cipherlist", TLS))
def cipher_order(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        if not ctx.yes("tls_preempt_cipherlist", svc):
            yield Hit(f"{svc.key}: tls_preempt_cipherlist = "
                      f"{ctx.value('tls_preempt_cipherlist', svc) or 'no'}",
                      parameter="tls_preempt_cipherlist", service=svc.key)


@rule(id="TLS-010", title="Client-initiated renegotiation allowed",
      severity=Severity.LOW, roles=MX_MSA, parameters=("tls_ssl_options",),
      rationale="Client-initiated renegotiation lets one client make the server repeat "
                "expensive handshakes (a CPU denial of service) and has no use in SMTP.",
      fix="tls_ssl_options = NO_RENEGOTIATION (add NO_COMPRESSION when Postfix is built "
          "with OpenSSL older than 1.1.0, which still compressed).",
      references=(f"{P5} tls_ssl_options", "RFC 5746", "RFC 7457 2.6"),
      remedy=insert("tls_ssl_options", "NO_RENEGOTIATION"))

def renegotiation(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        options = [w.upper() for w in ctx.words("tls_ssl_options", svc)]
        if "NO_RENEGOTIATION" not in options:
            yield Hit(f"{svc.key}: tls_ssl_options = "
                      f"{ctx.value('tls_ssl_options', svc) or '(empty)'} lacks "
                      "NO_RENEGOTIATION", parameter="tls_ssl_options", service=svc.key)


@rule(id="TLS-011", title="Weak Diffie-Hellman parameters",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("smtpd_tls_dh1024_param_file", "smtpd_tls_dh512_param_file"),
      rationale="Finite-field DH groups under 2048 bits are within reach of precomputation "
                "(Logjam); Postfix's built-in group is 2048 bits since 3.1, so a custom file "
                "can only make it weaker, and the 512-bit file is export grade.",
      fix="Remove smtpd_tls_dh1024_param_file and smtpd_tls_dh512_param_file, or point the "
          "former at parameters of at least 2048 bits.",
      references=(f"{P5} smtpd_tls_dh1024_param_file", f"{P5} smtpd_tls_dh512_param_file",
                  "RFC 7919", "RFC 9325 4.2.1"),
      remedy=builtin_dh)

def weak_dh(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str, str]] = set()
    for inbound in with_tls(ctx):
        svc = inbound.service
        for name in ("smtpd_tls_dh512_param_file", "smtpd_tls_dh1024_param_file"):
            path = ctx.value(name, svc)
            if not path or (name, path) in seen:
                continue
            seen.add((name, path))
            if name == "smtpd_tls_dh512_param_file":
                yield Hit(f"{name} = {path} (export-grade group)", parameter=name,
                          service=svc.key)
                continue
            data = ctx.read(path)
            bits = dh_bits(data) if data is not None else None
            if bits is None:
                yield Hit(f"{name} = {path}: no readable DH parameters; Postfix warns and "
                          "uses its built-in group", parameter=name, service=svc.key,
                          file=ctx.file(path).path, severity=Severity.LOW)
            elif bits < 2048:
                yield Hit(f"{name} = {path}: {bits}-bit group", parameter=name,
                          service=svc.key, file=ctx.file(path).path)


# -- rules: certificates and keys ------------------------------------------------------------

@rule(id="TLS-012", title="Certificate or key missing, unreadable or mismatched",
      severity=Severity.HIGH, roles=MX_MSA, by_role={Role.SUBMISSION: Severity.CRITICAL},
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file",
                  "smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
      rationale="smtpd still offers STARTTLS when it cannot load its certificate, then "
                "answers 454 4.7.0 'TLS not available due to local problem'; senders carry on "
                "in plain text and submission clients cannot connect securely.",
      fix="Point the parameters at existing, root-readable PEM files whose private key "
          "matches the certificate (smtpd_tls_chain_files: key first, then the chain).",
      references=(f"{P5} smtpd_tls_chain_files", f"{P5} smtpd_tls_cert_file", TLS),
      remedy=certificate, takes=("tls-cert", "tls-key"))

def cert_missing(ctx: Context) -> Iterator[Hit]:
    for problem, users in collect(ctx).problems.items():
        where = problem.path or ctx.value(problem.parameter, users[0].service) or "(unset)"
        yield Hit(f"{problem.parameter} {where}: {problem.reason}",
                  parameter=problem.parameter, service=users[0].service.key,
                  file=problem.path,
                  severity=severity(users, Severity.HIGH, Severity.CRITICAL))


@rule(id="TLS-013", title="Private key readable by other users",
      severity=Severity.HIGH,
      parameters=("smtpd_tls_key_file", "smtpd_tls_chain_files", "smtp_tls_key_file",
                  "smtp_tls_chain_files"),
      rationale="TLS_README: the key should be owned by root and readable by no other user; "
                "anyone who can read it can impersonate the server or decrypt sessions "
                "without forward secrecy.",
      fix="chown root and chmod 600 the key (or 640 with a dedicated key group such as "
          "ssl-cert).",
      references=(TLS, f"{P5} smtpd_tls_key_file", f"{P5} smtpd_tls_chain_files"))
def key_permissions(ctx: Context) -> Iterator[Hit]:
    for path, name in key_files(ctx).items():
        facts = ctx.file(path)
        if not (facts.exists and facts.is_file):
            continue  # TLS-012 reports missing and odd files
        # A group may read (Debian's ssl-cert group); nobody else may, and only root owns it.
        if facts.uid != 0 or facts.mode & 0o027:
            yield Hit(f"{path}: owner uid {facts.uid}, mode {facts.mode:04o}",
                      parameter=name, file=facts.path)


@rule(id="TLS-014", title="Self-signed or snakeoil certificate",
      severity=Severity.MEDIUM, roles=MX_MSA, by_role={Role.SUBMISSION: Severity.HIGH},
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="A certificate nobody vouches for rules out MTA-STS and DANE-TA, and mail "
                "clients warn or refuse; on port 25 most senders do not verify, so it "
                "matters more for submission.",
      fix="Use a certificate from a public CA (for example through ACME) for the MX and "
          "submission host names.",
      references=(TLS, "RFC 8461 3.3", "RFC 8314 4.1"))
def self_signed(ctx: Context) -> Iterator[Hit]:
    for bundle, leaf, users in cert_hits(ctx):
        reason = ("Debian snakeoil certificate" if "ssl-cert-snakeoil" in bundle.path
                  else "issuer equals subject" if leaf.issuer == leaf.subject else "")
        if reason:
            yield Hit(f"{bundle.path}: {reason} ({subject(leaf)})",
                      parameter=bundle.parameter, service=users[0].service.key,
                      file=bundle.path,
                      severity=severity(users, Severity.MEDIUM, Severity.HIGH))


@rule(id="TLS-015", title="Certificate does not name $myhostname",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("myhostname", "smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="Verifying senders (MTA-STS, DANE-TA) and mail clients match the host name "
                "against the certificate's subjectAltName; a mismatch fails verification.",
      fix="Reissue the certificate with $myhostname (and the MX and submission names) as "
          "DNS subjectAltNames.",
      references=("RFC 6125 6.4", "RFC 8461 4.1", TLS))
def name_mismatch(ctx: Context) -> Iterator[Hit]:
    for bundle, leaf, users in cert_hits(ctx):
        hostname = ctx.value("myhostname", users[0].service).lower().rstrip(".")
        listed = names(leaf)
        if hostname and not any(covers(n, hostname) for n in listed):
            yield Hit(f"{bundle.path}: names {', '.join(listed) or 'nothing'}, "
                      f"myhostname = {hostname}", parameter=bundle.parameter,
                      service=users[0].service.key, file=bundle.path)


@rule(id="TLS-016", title="Certificate expired or about to expire",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="Clients that verify refuse an expired certificate; renewal that has stopped "
                "working shows up here two weeks before the outage.",
      fix="Renew the certificate and automate renewal (ACME) with a reload of Postfix.",
      references=("RFC 5280 4.1.2.5", TLS))
def expiry(ctx: Context) -> Iterator[Hit]:
    now = datetime.now(UTC)
    for bundle, leaf, users in cert_hits(ctx):
        not_after = leaf.not_valid_after_utc
        if not_after < now:
            yield Hit(f"{bundle.path}: expired on {not_after:%Y-%m-%d}",
                      parameter=bundle.parameter, service=users[0].service.key,
                      file=bundle.path, severity=Severity.HIGH)
        elif not_after < now + EXPIRY_WARNING:
            yield Hit(f"{bundle.path}: expires on {not_after:%Y-%m-%d}",
                      parameter=bundle.parameter, service=users[0].service.key,
                      file=bundle.path)


def _weakness(cert: x509.Certificate) -> list[str]:
    found: list[str] = []
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        found.append(f"RSA {key.key_size}-bit key")
    elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        found.append(f"EC {key.curve.key_size}-bit key")
    elif isinstance(key, dsa.DSAPublicKey):
        found.append(f"DSA {key.key_size}-bit key")
    try:
        digest = cert.signature_hash_algorithm
    except Exception:  # an unknown algorithm is not evidence of weakness
        digest = None
    if digest is not None and digest.name in ("sha1", "md5"):
        found.append(f"{digest.name.upper()} signature")
    return found


@rule(id="TLS-017", title="Weak certificate key or signature",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="RSA keys under 2048 bits, EC keys under 256 bits, DSA keys and SHA-1 or MD5 "
                "signatures are below what verifying clients and CAs accept.",
      fix="Reissue with an RSA 2048+ or EC P-256+ key and a SHA-256 (or better) signature.",
      references=("RFC 9325 4.3", "RFC 9155", "NIST SP 800-131A"))
def weak_key(ctx: Context) -> Iterator[Hit]:
    for bundle, leaf, users in cert_hits(ctx):
        weak = _weakness(leaf)
        if weak:
            yield Hit(f"{bundle.path}: {', '.join(weak)}", parameter=bundle.parameter,
                      service=users[0].service.key, file=bundle.path)


@rule(id="TLS-018", title="Certificate without its intermediate chain",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="A CA-issued leaf sent without its intermediates cannot be verified by "
                "clients that do not happen to cache them (MTA-STS senders, many MUAs).",
      fix="Serve the full chain: the key, the leaf and the intermediates in one file listed "
          "in smtpd_tls_chain_files (or the intermediates appended to smtpd_tls_cert_file).",
      references=(f"{P5} smtpd_tls_chain_files", "RFC 8446 4.4.2", TLS))
def incomplete_chain(ctx: Context) -> Iterator[Hit]:
    for bundle, leaf, users in cert_hits(ctx):
        if len(bundle.chain) == 1 and leaf.issuer != leaf.subject:
            yield Hit(f"{bundle.path}: only the leaf certificate ({subject(leaf)})",
                      parameter=bundle.parameter, service=users[0].service.key,
                      file=bundle.path)


# -- rules: logging and presentation ---------------------------------------------------------

@rule(id="TLS-019", title="TLS logging switched off",
      severity=Severity.LOW, parameters=("smtpd_tls_loglevel", "smtp_tls_loglevel"),
      rationale="At log level 0 Postfix records nothing about TLS, so there is no evidence "
                "of which protocol and cipher a session used, or whether TLS was used at all.",
      fix="smtpd_tls_loglevel = 1 and smtp_tls_loglevel = 1.",
      references=(f"{P5} smtpd_tls_loglevel", f"{P5} smtp_tls_loglevel", TLS),
      remedy=log_level_1)

def tls_logging(ctx: Context) -> Iterator[Hit]:
    outbound = (ctx.value("smtp_tls_security_level").lower() not in ("", "none")
                or ctx.yes("smtp_use_tls") or ctx.yes("smtp_enforce_tls"))
    for name, used in (("smtpd_tls_loglevel", bool(with_tls(ctx))),
                       ("smtp_tls_loglevel", outbound)):
        if used and ctx.value(name) in ("", "0"):
            yield Hit(f"{name} = {ctx.value(name) or '0'}", parameter=name)


@rule(id="TLS-020", title="TLS details added to Received headers",
      severity=Severity.INFO, roles=MX_MSA, parameters=("smtpd_tls_received_header",),
      rationale="The protocol, cipher and client certificate subject go into every message; "
                "the recipient cannot trust them and they tell a reader about the sender's "
                "software.",
      fix="smtpd_tls_received_header = no unless something downstream needs the header.",
      references=(f"{P5} smtpd_tls_received_header",))
def received_header(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        if ctx.yes("smtpd_tls_received_header", svc):
            yield Hit(f"{svc.key}: smtpd_tls_received_header = yes",
                      parameter="smtpd_tls_received_header", service=svc.key)


@rule(id="TLS-021", title="Both chain files and legacy certificate files set",
      severity=Severity.LOW, roles=MX_MSA,
      parameters=("smtpd_tls_chain_files", "smtpd_tls_cert_file", "smtpd_tls_key_file"),
      rationale="With smtpd_tls_chain_files set, smtpd ignores the *_cert_file and *_key_file "
                "settings with only a warning; the file someone renews may not be the one in "
                "use.",
      fix="Keep one mechanism: smtpd_tls_chain_files, and remove the legacy parameters.",
      references=(f"{P5} smtpd_tls_chain_files", "Postfix src/smtpd/smtpd.c"),
      remedy=chain_files_only)

def conflicting_files(ctx: Context) -> Iterator[Hit]:
    for inbound in with_tls(ctx):
        svc = inbound.service
        if not ctx.words("smtpd_tls_chain_files", svc):
            continue
        legacy = [n for n in ("smtpd_tls_cert_file", "smtpd_tls_eccert_file",
                              "smtpd_tls_dcert_file")
                  if ctx.value(n, svc)]
        if ctx.explicit("smtpd_tls_key_file", svc) and ctx.value("smtpd_tls_key_file", svc):
            legacy.append("smtpd_tls_key_file")
        if legacy:
            yield Hit(f"{svc.key}: smtpd_tls_chain_files set, and also {', '.join(legacy)}",
                      parameter=legacy[0], service=svc.key)
