"""TLS vocabulary shared by the TLS rules and their remedies: protocols, ciphers, services.

Security: reads the parsed configuration and, in ``collect``, the certificate, key and DH
parameter files it names through ``audit.certs`` (at most ``context.MAX_READ`` bytes each,
parsed by the ``cryptography`` package); a file that is missing, unreadable, not PEM or not
parseable becomes a ``Problem``, never an exception. Protocol and cipher lists are only
split into words and matched against fixed sets of names.
Standards: postconf(5) smtpd_tls_protocols, smtpd_tls_*_ciphers, smtpd_tls_security_level,
smtpd_use_tls, smtpd_enforce_tls, smtpd_tls_wrappermode, smtpd_tls_chain_files;
TLS_README ("Server-side TLS"); POSTSCREEN_README; Postfix ``src/tls/tls_misc.c``
(tls_protocol_mask) and ``src/smtpd/smtpd.c``; OpenSSL ciphers(1); RFC 8996 (TLS 1.0/1.1
deprecated).

Theory of operation
-------------------
The TLS rules look at the inbound services (``inbound_services``): the public smtpd
services and, for a public postscreen, the ``smtpd pass`` service it hands clients to,
because that smtpd's settings are the ones a client meets. A service's settings are main.cf
plus its master.cf ``-o`` overrides (``ctx.value(name, service)``).

smtpd picks its protocol and cipher settings by whether TLS is enforced: the
``*_mandatory_*`` parameters when it is (security level ``encrypt``, or wrapper mode),
the plain ones otherwise (Postfix ``src/smtpd/smtpd.c``). ``enabled_protocols`` turns
either spelling of a protocol list (``!SSLv2, !SSLv3`` or ``>=TLSv1.2``) into the set of
protocols it leaves on, so rules compare sets, not strings.

Certificate rules read the files (``audit.certs``) once per rule run (``collect``), group
them by file so a certificate shared by several services is reported once, and take the
severity from the most exposed service that uses it (submission before MX).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography import x509

from postwarden.audit.certs import Bundle, Problem, material
from postwarden.audit.context import Context
from postwarden.audit.model import Severity
from postwarden.postfix.mastercf import Service

# Oldest first: ">=" and "<=" in a protocol list select a slice of this tuple.
PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_PROTOCOL_NAMES = {p.lower(): p for p in PROTOCOLS}
BROKEN = frozenset({"SSLv2", "SSLv3"})
DEPRECATED = frozenset({"TLSv1", "TLSv1.1"})  # RFC 8996 2 and 3

# OpenSSL cipher-string words that switch on export, low-grade, NULL or broken ciphers.
WEAK_CIPHER_WORDS = frozenset({"EXPORT", "EXP", "LOW", "NULL", "ANULL", "ENULL", "RC4", "3DES",
                               "MD5"})
# smtpd_tls_exclude_ciphers words that only drop ciphers no MTA should choose anyway.
HARMLESS_EXCLUSIONS = frozenset({"anull", "enull", "null", "export", "exp", "low", "des",
                                 "3des", "rc4", "md5", "seed", "idea", "psk", "srp", "adh",
                                 "aecdh", "kecdh", "adss", "dss", "camellia"})


def enabled_protocols(text: str) -> frozenset[str] | None:
    """The protocols a Postfix protocol list leaves enabled; None when a name is unknown.

    Both Postfix spellings are understood, alone or mixed: exclusions (``!SSLv2, !SSLv3``),
    inclusions (``TLSv1.2 TLSv1.3``: only those) and, since Postfix 3.6, bounds
    (``>=TLSv1.2``, ``<=TLSv1.3``). An empty list enables everything (postconf(5)
    smtpd_tls_protocols; Postfix ``src/tls/tls_misc.c`` tls_protocol_mask).
    """
    include: set[str] = set()
    exclude: set[str] = set()
    low, high = 0, len(PROTOCOLS) - 1
    for word in re.split(r"[\s,:]+", text.strip()):
        if not word:
            continue
        bound = word[:2] if word[:2] in (">=", "<=") else ""
        negated = word.startswith("!")
        name = _PROTOCOL_NAMES.get(word[len(bound) + negated:].lower())
        if name is None:
            return None
        if bound == ">=":
            low = max(low, PROTOCOLS.index(name))
        elif bound == "<=":
            high = min(high, PROTOCOLS.index(name))
        elif negated:
            exclude.add(name)
        else:
            include.add(name)
    chosen = set(PROTOCOLS[low:high + 1])
    if include:
        chosen &= include
    return frozenset(chosen - exclude)


def weak_words(cipherlist: str) -> list[str]:
    """Words of an OpenSSL cipher string that add weak ciphers and are not taken out later."""
    enabled: dict[str, str] = {}
    banned: set[str] = set()
    for word in re.split(r"[\s,:]+", cipherlist):
        upper = word.lstrip("!-+").upper()
        parts = re.split(r"[+-]", upper)
        if not word or not (set(parts) & WEAK_CIPHER_WORDS or "DES-CBC3" in upper):
            continue
        if word[0] in "!-":
            # OpenSSL ciphers(1): "!" removes for good, "-" removes until re-added.
            enabled.pop(upper, None)
            if word[0] == "!":
                banned.add(upper)
        elif word[0] != "+" and upper not in banned:
            enabled[upper] = word
    return list(enabled.values())


# -- services --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Inbound:
    service: Service
    mx: bool
    submission: bool


def inbound_services(ctx: Context) -> list[Inbound]:
    mx = {s.key for s in ctx.mx_services()}
    submission = {s.key for s in ctx.submission_services()}
    found: list[Inbound] = []
    for svc in ctx.public_smtpd_services():
        if svc.process_name == "postscreen":
            # POSTSCREEN_README: postscreen passes clients to "smtpd pass"; its TLS applies.
            passed = ctx.smtpd_behind(svc)
            if passed is not svc:
                found.append(Inbound(passed, svc.key in mx, False))
        else:
            found.append(Inbound(svc, svc.key in mx, svc.key in submission))
    return found


def level(ctx: Context, svc: Service) -> str:
    """The effective smtpd_tls_security_level, legacy smtpd_use_tls/enforce_tls folded in."""
    level = ctx.value("smtpd_tls_security_level", svc).lower()
    if level:
        return level
    # postconf(5): the legacy booleans apply only when smtpd_tls_security_level is empty.
    if ctx.yes("smtpd_enforce_tls", svc):
        return "encrypt"
    return "may" if ctx.yes("smtpd_use_tls", svc) else "none"


def tls_on(ctx: Context, svc: Service) -> bool:
    return level(ctx, svc) != "none" or ctx.yes("smtpd_tls_wrappermode", svc)


def with_tls(ctx: Context) -> list[Inbound]:
    return [i for i in inbound_services(ctx) if tls_on(ctx, i.service)]


def protocol_parameter(ctx: Context, svc: Service) -> str:
    # Postfix smtpd.c: mandatory protocols only when TLS is enforced.
    return ("smtpd_tls_mandatory_protocols" if ctx.enforces_tls(svc)
            else "smtpd_tls_protocols")


def cipher_parameter(ctx: Context, svc: Service) -> str:
    return "smtpd_tls_mandatory_ciphers" if ctx.enforces_tls(svc) else "smtpd_tls_ciphers"


# -- certificates ----------------------------------------------------------------------------

def severity(users: list[Inbound], mx: Severity, submission: Severity) -> Severity:
    return submission if any(u.submission for u in users) else mx


@dataclass
class Collected:
    bundles: dict[str, tuple[Bundle, list[Inbound]]] = field(default_factory=dict)
    problems: dict[Problem, list[Inbound]] = field(default_factory=dict)


def collect(ctx: Context) -> Collected:
    """Certificate material of every inbound TLS service, once per file."""
    collected = Collected()
    for inbound in with_tls(ctx):
        found = material(ctx, inbound.service)
        for bundle in found.bundles:
            collected.bundles.setdefault(bundle.path, (bundle, []))[1].append(inbound)
        for problem in found.problems:
            collected.problems.setdefault(problem, []).append(inbound)
    return collected


def cert_hits(ctx: Context) -> Iterator[tuple[Bundle, x509.Certificate, list[Inbound]]]:
    for bundle, users in collect(ctx).bundles.values():
        yield bundle, bundle.chain[0], users


def key_files(ctx: Context) -> dict[str, str]:
    """Every file a TLS private key lives in, server and client side -> its parameter."""
    found: dict[str, str] = {}
    scopes: list[Service | None] = [None, *ctx.smtpd_services()]
    for svc in scopes:
        for prefix in ("smtpd", "smtp"):
            params = [f"{prefix}_tls_chain_files"]
            if not ctx.words(params[0], svc):
                params = [f"{prefix}_tls_key_file", f"{prefix}_tls_eckey_file",
                          f"{prefix}_tls_dkey_file"]
            for name in params:
                for path in ctx.words(name, svc):
                    found.setdefault(ctx.file(path).path, name)
    return found
