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
Each rule looks at the inbound services (``_inbound``): the public smtpd services and, for
a public postscreen, the ``smtpd pass`` service it hands clients to, because that smtpd's
settings are the ones a client meets. A service's settings are main.cf plus its master.cf
``-o`` overrides (``ctx.value(name, service)``).

smtpd picks its protocol and cipher settings by whether TLS is enforced: the
``*_mandatory_*`` parameters when it is (security level ``encrypt``, or wrapper mode),
the plain ones otherwise (Postfix ``src/smtpd/smtpd.c``). ``enabled_protocols`` turns
either spelling of a protocol list (``!SSLv2, !SSLv3`` or ``>=TLSv1.2``) into the set of
protocols it leaves on, so rules compare sets, not strings.

Certificate rules read the files (``audit.certs``) once per rule run (``_collect``), group
them by file so a certificate shared by several services is reported once, and take the
severity from the most exposed service that uses it (submission before MX).

Remedies (``audit.fixes``) switch TLS on only where smtpd can load a certificate, or with
the certificate and key the operator gives (``--tls-cert``, ``--tls-key``): without one,
smtpd logs "No server certs available. TLS won't be enabled", so ``encrypt`` would refuse
every client of a submission service and ``smtpd_tls_auth_only`` would hide AUTH. Protocol
lists keep the operator's words and gain the exclusions they lack; a grade or cipher list
goes back to Postfix's default. Choices that need the operator (a CA certificate, key
permissions, TLS 1.2 on port 25, server cipher order) have no remedy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from postwarden.audit.certs import Bundle, Problem, covers, dh_bits, material, names, subject
from postwarden.audit.context import Context, parse_version
from postwarden.audit.fixes import (
    Change,
    Inputs,
    Needs,
    Op,
    Outcome,
    Remedy,
    insert,
    scope,
)
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
TLS = "TLS_README"
MX_MSA = (Role.MX, Role.SUBMISSION)

# Oldest first: ">=" and "<=" in a protocol list select a slice of this tuple.
PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_PROTOCOL_NAMES = {p.lower(): p for p in PROTOCOLS}
BROKEN = frozenset({"SSLv2", "SSLv3"})
DEPRECATED = frozenset({"TLSv1", "TLSv1.1"})  # RFC 8996 2 and 3

WEAK_GRADES = ("export", "low", "null")
# OpenSSL cipher-string words that switch on export, low-grade, NULL or broken ciphers.
WEAK_CIPHER_WORDS = frozenset({"EXPORT", "EXP", "LOW", "NULL", "ANULL", "ENULL", "RC4", "3DES",
                               "MD5"})
# smtpd_tls_exclude_ciphers words that only drop ciphers no MTA should choose anyway.
HARMLESS_EXCLUSIONS = frozenset({"anull", "enull", "null", "export", "exp", "low", "des",
                                 "3des", "rc4", "md5", "seed", "idea", "psk", "srp", "adh",
                                 "aecdh", "kecdh", "adss", "dss", "camellia"})
EXPIRY_WARNING = timedelta(days=14)
# The server certificate parameters; a service with none of them set has no certificate.
CERTIFICATE_PARAMETERS = ("smtpd_tls_chain_files", "smtpd_tls_cert_file",
                          "smtpd_tls_eccert_file", "smtpd_tls_dcert_file")
# Legacy certificate/key pairs that smtpd_tls_chain_files replaces (postconf(5)).
LEGACY_FILES = ("smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_eccert_file",
                "smtpd_tls_eckey_file", "smtpd_tls_dcert_file", "smtpd_tls_dkey_file")
MODERN_PROTOCOLS = (3, 6)  # Postfix 3.6: ">=TLSv1.2" bounds in protocol lists
BUILTIN_DH_2048 = (3, 1)   # Postfix 3.1: the built-in DH group is 2048 bits
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 .]+)-----\r?\n(?:.*?)-----END \1-----", re.S)


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


def _show(protocols: frozenset[str]) -> str:
    return ", ".join(p for p in PROTOCOLS if p in protocols) or "none"


# -- services --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Inbound:
    service: Service
    mx: bool
    submission: bool


def _inbound(ctx: Context) -> list[_Inbound]:
    mx = {s.key for s in ctx.mx_services()}
    submission = {s.key for s in ctx.submission_services()}
    found: list[_Inbound] = []
    for svc in ctx.public_smtpd_services():
        if svc.process_name == "postscreen":
            # POSTSCREEN_README: postscreen passes clients to "smtpd pass"; its TLS applies.
            passed = ctx.smtpd_behind(svc)
            if passed is not svc:
                found.append(_Inbound(passed, svc.key in mx, False))
        else:
            found.append(_Inbound(svc, svc.key in mx, svc.key in submission))
    return found


def _level(ctx: Context, svc: Service) -> str:
    """The effective smtpd_tls_security_level, legacy smtpd_use_tls/enforce_tls folded in."""
    level = ctx.value("smtpd_tls_security_level", svc).lower()
    if level:
        return level
    # postconf(5): the legacy booleans apply only when smtpd_tls_security_level is empty.
    if ctx.yes("smtpd_enforce_tls", svc):
        return "encrypt"
    return "may" if ctx.yes("smtpd_use_tls", svc) else "none"


def _tls_on(ctx: Context, svc: Service) -> bool:
    return _level(ctx, svc) != "none" or ctx.yes("smtpd_tls_wrappermode", svc)


def _with_tls(ctx: Context) -> list[_Inbound]:
    return [i for i in _inbound(ctx) if _tls_on(ctx, i.service)]


def _protocol_parameter(ctx: Context, svc: Service) -> str:
    # Postfix smtpd.c: mandatory protocols only when TLS is enforced.
    return ("smtpd_tls_mandatory_protocols" if ctx.enforces_tls(svc)
            else "smtpd_tls_protocols")


def _cipher_parameter(ctx: Context, svc: Service) -> str:
    return "smtpd_tls_mandatory_ciphers" if ctx.enforces_tls(svc) else "smtpd_tls_ciphers"


def _severity(users: list[_Inbound], mx: Severity, submission: Severity) -> Severity:
    return submission if any(u.submission for u in users) else mx


@dataclass
class _Collected:
    bundles: dict[str, tuple[Bundle, list[_Inbound]]] = field(default_factory=dict)
    problems: dict[Problem, list[_Inbound]] = field(default_factory=dict)


def _collect(ctx: Context) -> _Collected:
    """Certificate material of every inbound TLS service, once per file."""
    collected = _Collected()
    for inbound in _with_tls(ctx):
        found = material(ctx, inbound.service)
        for bundle in found.bundles:
            collected.bundles.setdefault(bundle.path, (bundle, []))[1].append(inbound)
        for problem in found.problems:
            collected.problems.setdefault(problem, []).append(inbound)
    return collected


def _cert_hits(ctx: Context) -> Iterator[tuple[Bundle, x509.Certificate, list[_Inbound]]]:
    for bundle, users in _collect(ctx).bundles.values():
        yield bundle, bundle.chain[0], users


# -- remedies --------------------------------------------------------------------------------

def hit_service(ctx: Context, hit: Hit) -> Service | None:
    """The service a hit names, or None for a main.cf-wide one."""
    return ctx.service(*hit.service.split("/", 1)) if hit.service else None


def certificate_loads(ctx: Context, svc: Service) -> bool:
    """Whether smtpd finds a certificate for svc and every file it names is usable."""
    found = material(ctx, svc)
    return bool(found.bundles) and not found.problems


def certificate(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """The operator's certificate and key where the hit's service gets them from: as
    ``smtpd_tls_chain_files = key, cert`` when that is in use, else the legacy pair."""
    svc = hit_service(ctx, hit)
    chain = bool(ctx.words("smtpd_tls_chain_files", svc))
    cert, key = inputs.get("tls-cert"), inputs.get("tls-key")
    if cert is None:
        yield Needs("tls-cert", "smtpd_tls_chain_files" if chain else "smtpd_tls_cert_file")
    if key is None:
        yield Needs("tls-key", "smtpd_tls_chain_files" if chain else "smtpd_tls_key_file")
    if cert is None or key is None:
        return
    if chain:
        # postconf(5) smtpd_tls_chain_files: each key before its certificate chain.
        yield Change(Op.SET, "smtpd_tls_chain_files", f"{key}, {cert}",
                     scope(ctx, hit, "smtpd_tls_chain_files"))
        return
    where = scope(ctx, hit, "smtpd_tls_cert_file")
    yield Change(Op.SET, "smtpd_tls_cert_file", cert, where)
    yield Change(Op.SET, "smtpd_tls_key_file", key, where)
    if hit.parameter in LEGACY_FILES[2:]:
        # The broken ECDSA or DSA pair goes; the operator's pair replaces it.
        index = LEGACY_FILES.index(hit.parameter) // 2 * 2
        for name in LEGACY_FILES[index:index + 2]:
            yield Change(Op.UNSET, name, "", scope(ctx, hit, name))


def _with_certificate(ctx: Context, hit: Hit, inputs: Inputs, svc: Service,
                      ) -> tuple[list[Outcome], bool]:
    """The certificate changes TLS on svc first needs, and whether it can go on at all."""
    if certificate_loads(ctx, svc):
        return [], True
    outcomes = list(certificate(ctx, hit, inputs))
    return outcomes, not any(isinstance(o, Needs) for o in outcomes)


def _switch_on(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """TLS on the hit's service: ``may`` on port 25 and other opportunistic services,
    wrapper mode on 465 and ``encrypt`` on the other submission services (their -o)."""
    svc = hit_service(ctx, hit)
    if svc is None:
        return  # run for a given --tls-cert: TLS-012 places the certificate
    outcomes, ready = _with_certificate(ctx, hit, inputs, svc)
    yield from outcomes
    if not ready:
        return
    submission = any(s.key == svc.key for s in ctx.submission_services())
    port = ctx.port(svc)
    if not submission or port == 25:
        name = "smtpd_tls_security_level"
        yield Change(Op.SET, name, "may", scope(ctx, hit, name))
    elif port == 465:
        yield Change(Op.SET, "smtpd_tls_wrappermode", "yes", svc.key)
    else:
        yield Change(Op.SET, "smtpd_tls_security_level", "encrypt", svc.key)


def _opportunistic_mx(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    svc = hit_service(ctx, hit)
    name = "smtpd_tls_security_level"
    yield Change(Op.SET, name, "may", scope(ctx, hit, name))
    for legacy in ("smtpd_enforce_tls", "smtpd_tls_wrappermode"):
        if ctx.yes(legacy, svc):
            yield Change(Op.UNSET, legacy, "", scope(ctx, hit, legacy))


def _excluding(protocols: frozenset[str], fallback: Callable[[Context], str]) -> Remedy:
    """Add ``!name`` for each of protocols (and SSL) the list the hit names enables,
    keeping the operator's words (a ``<=`` bound, an inclusion list); fallback when
    nothing is written."""

    def remedy(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
        name = hit.parameter
        if name is None:
            return
        svc = hit_service(ctx, hit)
        enabled = enabled_protocols(ctx.value(name, svc))
        if enabled is None or not enabled & protocols:
            return
        where = scope(ctx, hit, name)
        written = (svc.overrides()[name] if where is not None and svc is not None
                   else ctx.config.main.get(name)) or ""
        if written.strip():
            dropped = enabled & (protocols | BROKEN)
            exclusions = ", ".join(f"!{p}" for p in PROTOCOLS if p in dropped)
            yield Change(Op.SET, name, f"{written.strip()}, {exclusions}", where)
        else:
            yield Change(Op.SET, name, fallback(ctx), where)

    return remedy


def _at_least(ctx: Context, version: tuple[int, ...]) -> bool:
    found = parse_version(ctx.value("mail_version"))
    return found is not None and found >= version


def _tls12(ctx: Context) -> str:
    if _at_least(ctx, MODERN_PROTOCOLS):
        return ">=TLSv1.2"
    return "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"  # every Postfix version reads this form


def _no_ssl(ctx: Context) -> str:
    return "!SSLv2, !SSLv3"  # the default since Postfix 3.0; also read by 3.6+


exclude_broken = _excluding(BROKEN, _no_ssl)


def _medium(ctx: Context, hit: Hit, name: str) -> Change:
    """The cipher grade back to medium: the default since 2015, so usually removed."""
    if ctx.config.table.defaults.get(name, "").lower() == "medium":
        return Change(Op.UNSET, name, "", scope(ctx, hit, name))
    return Change(Op.SET, name, "medium", scope(ctx, hit, name))


def _stock_ciphers(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    if name in ("smtpd_tls_ciphers", "smtpd_tls_mandatory_ciphers"):
        yield _medium(ctx, hit, name)
    elif name is not None:
        # postconf(5) tls_medium_cipherlist: "Do not change" -- the stock list it is.
        yield Change(Op.UNSET, name, "", scope(ctx, hit, name))


def _lenient_mx(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    svc = hit_service(ctx, hit)
    name = hit.parameter
    if name == "smtpd_tls_ciphers":
        yield _medium(ctx, hit, name)
        return
    if name != "smtpd_tls_exclude_ciphers" or svc is None:
        return
    keep = [w for w in ctx.words(name, svc) if w.lstrip("!").lower() in HARMLESS_EXCLUSIONS]
    where = scope(ctx, hit, name)
    shared = [i for i in _with_tls(ctx) if i.service.key != svc.key
              and not ctx.overridden(name, i.service)]
    if where is None and shared:
        # main.cf's list also serves the submission services: change only the MX.
        yield Change(Op.SET, name, ", ".join(keep), svc.key)
    elif keep or where is not None:
        yield Change(Op.SET, name, ", ".join(keep), where)
    else:
        yield Change(Op.UNSET, name, "", None)


def _builtin_dh(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    if name is None:
        return
    if name == "smtpd_tls_dh1024_param_file" and not _at_least(ctx, BUILTIN_DH_2048):
        return  # before Postfix 3.1 the built-in group is 1024 bits: a file is needed
    yield Change(Op.UNSET, name, "", scope(ctx, hit, name))


def _log_level_1(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if hit.parameter is not None:
        yield Change(Op.SET, hit.parameter, "1")


def _chain_files_only(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Remove the legacy files smtpd ignores, unless another service still loads them."""
    svc = hit_service(ctx, hit)
    for name in LEGACY_FILES:
        if not ctx.explicit(name, svc):
            continue
        where = scope(ctx, hit, name)
        users = [i.service for i in _with_tls(ctx)
                 if (i.service.key == where if where is not None
                     else not ctx.overridden(name, i.service))]
        if all(ctx.words("smtpd_tls_chain_files", u) for u in users):
            yield Change(Op.UNSET, name, "", where)


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
      remedy=_switch_on, takes=("tls-cert", "tls-key"))

def no_starttls(ctx: Context) -> Iterator[Hit]:
    for inbound in _inbound(ctx):
        svc = inbound.service
        if not _tls_on(ctx, svc):
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
      remedy=_opportunistic_mx)

def mandatory_on_mx(ctx: Context) -> Iterator[Hit]:
    for inbound in _inbound(ctx):
        svc = inbound.service
        if inbound.mx and ctx.enforces_tls(svc):
            yield Hit(f"{svc.key}: smtpd_tls_security_level = {_level(ctx, svc)} on port 25",
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
      remedy=_switch_on, takes=("tls-cert", "tls-key"))

def submission_not_enforced(ctx: Context) -> Iterator[Hit]:
    for inbound in _inbound(ctx):
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
            yield Hit(f"{svc.key}: smtpd_tls_security_level = {_level(ctx, svc)}",
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
    for inbound in _with_tls(ctx):
        svc = inbound.service
        name = _protocol_parameter(ctx, svc)
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
      remedy=_excluding(DEPRECATED, _tls12))

def old_tls_enforced(ctx: Context) -> Iterator[Hit]:
    for inbound in _inbound(ctx):
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
    for inbound in _with_tls(ctx):
        svc = inbound.service
        if not inbound.mx or ctx.enforces_tls(svc):
            continue
        enabled = enabled_protocols(ctx.value("smtpd_tls_protocols", svc))
        if enabled is not None and enabled & DEPRECATED:
            yield Hit(f"{svc.key}: smtpd_tls_protocols = "
                      f"{ctx.value('smtpd_tls_protocols', svc) or '(empty)'} enables "
                      f"{_show(enabled & DEPRECATED)}",
                      parameter="smtpd_tls_protocols", service=svc.key)


def _weak_words(cipherlist: str) -> list[str]:
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
      remedy=_stock_ciphers)

def weak_ciphers(ctx: Context) -> Iterator[Hit]:
    for inbound in _with_tls(ctx):
        svc = inbound.service
        name = _cipher_parameter(ctx, svc)
        grade = ctx.value(name, svc).lower()
        if grade in WEAK_GRADES:
            yield Hit(f"{svc.key}: {name} = {grade}", parameter=name, service=svc.key)
            continue
        if grade not in ("medium", "high"):
            continue
        listname = f"tls_{grade}_cipherlist"
        weak = _weak_words(ctx.value(listname, svc))
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
      remedy=_lenient_mx)

def strict_mx_ciphers(ctx: Context) -> Iterator[Hit]:
    for inbound in _with_tls(ctx):
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
    for inbound in _with_tls(ctx):
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
    for inbound in _with_tls(ctx):
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
      remedy=_builtin_dh)

def weak_dh(ctx: Context) -> Iterator[Hit]:
    seen: set[tuple[str, str]] = set()
    for inbound in _with_tls(ctx):
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
    for problem, users in _collect(ctx).problems.items():
        where = problem.path or ctx.value(problem.parameter, users[0].service) or "(unset)"
        yield Hit(f"{problem.parameter} {where}: {problem.reason}",
                  parameter=problem.parameter, service=users[0].service.key,
                  file=problem.path,
                  severity=_severity(users, Severity.HIGH, Severity.CRITICAL))


def _key_files(ctx: Context) -> dict[str, str]:
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
    for path, name in _key_files(ctx).items():
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
    for bundle, leaf, users in _cert_hits(ctx):
        reason = ("Debian snakeoil certificate" if "ssl-cert-snakeoil" in bundle.path
                  else "issuer equals subject" if leaf.issuer == leaf.subject else "")
        if reason:
            yield Hit(f"{bundle.path}: {reason} ({subject(leaf)})",
                      parameter=bundle.parameter, service=users[0].service.key,
                      file=bundle.path,
                      severity=_severity(users, Severity.MEDIUM, Severity.HIGH))


@rule(id="TLS-015", title="Certificate does not name $myhostname",
      severity=Severity.MEDIUM, roles=MX_MSA,
      parameters=("myhostname", "smtpd_tls_chain_files", "smtpd_tls_cert_file"),
      rationale="Verifying senders (MTA-STS, DANE-TA) and mail clients match the host name "
                "against the certificate's subjectAltName; a mismatch fails verification.",
      fix="Reissue the certificate with $myhostname (and the MX and submission names) as "
          "DNS subjectAltNames.",
      references=("RFC 6125 6.4", "RFC 8461 4.1", TLS))
def name_mismatch(ctx: Context) -> Iterator[Hit]:
    for bundle, leaf, users in _cert_hits(ctx):
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
    for bundle, leaf, users in _cert_hits(ctx):
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
    for bundle, leaf, users in _cert_hits(ctx):
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
    for bundle, leaf, users in _cert_hits(ctx):
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
      remedy=_log_level_1)

def tls_logging(ctx: Context) -> Iterator[Hit]:
    outbound = (ctx.value("smtp_tls_security_level").lower() not in ("", "none")
                or ctx.yes("smtp_use_tls") or ctx.yes("smtp_enforce_tls"))
    for name, used in (("smtpd_tls_loglevel", bool(_with_tls(ctx))),
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
    for inbound in _with_tls(ctx):
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
      remedy=_chain_files_only)

def conflicting_files(ctx: Context) -> Iterator[Hit]:
    for inbound in _with_tls(ctx):
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
