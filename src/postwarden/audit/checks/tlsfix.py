"""TLS remedies: the changes harden makes for the TLS rules (and SASL's certificate needs).

Security: reads the parsed configuration and, through ``certificate_loads``, the certificate
and key files it names (``audit.certs``: bounded reads, parse failures are problems, never
exceptions). The certificate and key paths the operator gives (``--tls-cert``,
``--tls-key``) are written into the configuration as given; nothing here writes a file.
Standards: postconf(5) smtpd_tls_* and tls_*; TLS_README ("Server-side TLS"); RFC 3207 4
(no enforced TLS on a public MX); RFC 8314 3.3 (submission); RFC 8996 (TLS 1.0/1.1
deprecated).

Theory of operation
-------------------
Remedies (``audit.fixes``) switch TLS on only where smtpd can load a certificate, or with
the certificate and key the operator gives (``--tls-cert``, ``--tls-key``): without one,
smtpd logs "No server certs available. TLS won't be enabled", so ``encrypt`` would refuse
every client of a submission service and ``smtpd_tls_auth_only`` would hide AUTH. Protocol
lists keep the operator's words and gain the exclusions they lack; a grade or cipher list
goes back to Postfix's default. Choices that need the operator (a CA certificate, key
permissions, TLS 1.2 on port 25, server cipher order) have no remedy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from postwarden.audit.certs import material
from postwarden.audit.checks.tlsbase import (
    BROKEN,
    HARMLESS_EXCLUSIONS,
    PROTOCOLS,
    enabled_protocols,
    with_tls,
)
from postwarden.audit.context import Context, parse_version
from postwarden.audit.fixes import Change, Inputs, Needs, Op, Outcome, Remedy, scope
from postwarden.audit.model import Hit
from postwarden.postfix.mastercf import Service

# Legacy certificate/key pairs that smtpd_tls_chain_files replaces (postconf(5)).
LEGACY_FILES = ("smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_eccert_file",
                "smtpd_tls_eckey_file", "smtpd_tls_dcert_file", "smtpd_tls_dkey_file")
MODERN_PROTOCOLS = (3, 6)  # Postfix 3.6: ">=TLSv1.2" bounds in protocol lists
BUILTIN_DH_2048 = (3, 1)   # Postfix 3.1: the built-in DH group is 2048 bits


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


def switch_on(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
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


def opportunistic_mx(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    svc = hit_service(ctx, hit)
    name = "smtpd_tls_security_level"
    yield Change(Op.SET, name, "may", scope(ctx, hit, name))
    for legacy in ("smtpd_enforce_tls", "smtpd_tls_wrappermode"):
        if ctx.yes(legacy, svc):
            yield Change(Op.UNSET, legacy, "", scope(ctx, hit, legacy))


def excluding(protocols: frozenset[str], fallback: Callable[[Context], str]) -> Remedy:
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


def tls12(ctx: Context) -> str:
    if _at_least(ctx, MODERN_PROTOCOLS):
        return ">=TLSv1.2"
    return "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1"  # every Postfix version reads this form


def _no_ssl(ctx: Context) -> str:
    return "!SSLv2, !SSLv3"  # the default since Postfix 3.0; also read by 3.6+


exclude_broken = excluding(BROKEN, _no_ssl)


def _medium(ctx: Context, hit: Hit, name: str) -> Change:
    """The cipher grade back to medium: the default since 2015, so usually removed."""
    if ctx.config.table.defaults.get(name, "").lower() == "medium":
        return Change(Op.UNSET, name, "", scope(ctx, hit, name))
    return Change(Op.SET, name, "medium", scope(ctx, hit, name))


def stock_ciphers(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    if name in ("smtpd_tls_ciphers", "smtpd_tls_mandatory_ciphers"):
        yield _medium(ctx, hit, name)
    elif name is not None:
        # postconf(5) tls_medium_cipherlist: "Do not change" -- the stock list it is.
        yield Change(Op.UNSET, name, "", scope(ctx, hit, name))


def lenient_mx(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    svc = hit_service(ctx, hit)
    name = hit.parameter
    if name == "smtpd_tls_ciphers":
        yield _medium(ctx, hit, name)
        return
    if name != "smtpd_tls_exclude_ciphers" or svc is None:
        return
    keep = [w for w in ctx.words(name, svc) if w.lstrip("!").lower() in HARMLESS_EXCLUSIONS]
    where = scope(ctx, hit, name)
    shared = [i for i in with_tls(ctx) if i.service.key != svc.key
              and not ctx.overridden(name, i.service)]
    if where is None and shared:
        # main.cf's list also serves the submission services: change only the MX.
        yield Change(Op.SET, name, ", ".join(keep), svc.key)
    elif keep or where is not None:
        yield Change(Op.SET, name, ", ".join(keep), where)
    else:
        yield Change(Op.UNSET, name, "", None)


def builtin_dh(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    name = hit.parameter
    if name is None:
        return
    if name == "smtpd_tls_dh1024_param_file" and not _at_least(ctx, BUILTIN_DH_2048):
        return  # before Postfix 3.1 the built-in group is 1024 bits: a file is needed
    yield Change(Op.UNSET, name, "", scope(ctx, hit, name))


def log_level_1(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if hit.parameter is not None:
        yield Change(Op.SET, hit.parameter, "1")


def chain_files_only(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """Remove the legacy files smtpd ignores, unless another service still loads them."""
    svc = hit_service(ctx, hit)
    for name in LEGACY_FILES:
        if not ctx.explicit(name, svc):
            continue
        where = scope(ctx, hit, name)
        users = [i.service for i in with_tls(ctx)
                 if (i.service.key == where if where is not None
                     else not ctx.overridden(name, i.service))]
        if all(ctx.words("smtpd_tls_chain_files", u) for u in users):
            yield Change(Op.UNSET, name, "", where)
