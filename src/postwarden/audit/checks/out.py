"""OUT: outbound TLS of the Postfix SMTP client (smtp(8)).

Security: reads the parsed configuration and the source text of file-based
smtp_tls_policy_maps (bounded by ``context.MAX_READ``); never resolves DNS. Unreadable or
odd policy files are treated as empty, never as an error.
Standards: postconf(5) smtp_tls_*; TLS_README ("Client-side TLS", "Mandatory server
certificate verification", DANE); RFC 7672 (SMTP DANE), RFC 8461 (MTA-STS), RFC 8996,
RFC 7568.

Theory of operation
-------------------
The client's level is ``smtp_tls_security_level`` (the legacy ``smtp_use_tls`` and
``smtp_enforce_tls`` when it is empty), possibly raised or lowered per destination by
``smtp_tls_policy_maps`` and per transport by master.cf ``-o`` overrides. Rules read the
main.cf level and, where it matters (DANE, verification, the relayhost), also the policy
file's text and the smtp client services' overrides; a socketmap or tcp policy table is
taken to be an MTA-STS resolver (postfix-mta-sts-resolver, postfix-tlspol).

Remedies raise nothing that could stop mail: opportunistic TLS, SSL excluded, DNSSEC
lookups where DANE was already asked for, the system CA bundle where verification was.
A mandatory level, DANE itself, an MTA-STS resolver and the policy for a smarthost are the
operator's decisions (OUT-002, OUT-003, OUT-005, OUT-008).
"""

from __future__ import annotations

from collections.abc import Iterator

from postwarden.audit.checks.tlsbase import BROKEN, PROTOCOLS, enabled_protocols
from postwarden.audit.checks.tlsfix import exclude_broken
from postwarden.audit.context import LOOPBACK_HOSTS, Context
from postwarden.audit.fixes import Change, Inputs, Op, Outcome, setting
from postwarden.audit.model import Hit, Role, Severity, rule

P5 = "postconf(5)"
TLS = "TLS_README"
MANDATORY = ("encrypt", "verify", "secure", "fingerprint", "dane-only")
VERIFYING = ("verify", "secure")
DANE = ("dane", "dane-only")
# The system CA bundle: Debian/Ubuntu, RHEL/Fedora, SUSE, Alpine/BSD. smtp_tls_CAfile is
# read before the chroot, unlike smtp_tls_CApath (postconf(5)), so a chrooted smtp(8) works.
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
              "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")


def _level(ctx: Context) -> str:
    level = ctx.value("smtp_tls_security_level").lower()
    if level:
        return level
    # postconf(5): the legacy booleans apply only when smtp_tls_security_level is empty.
    if ctx.yes("smtp_enforce_tls"):
        return "encrypt"
    return "may" if ctx.yes("smtp_use_tls") else "none"


def _policy_tables(ctx: Context) -> list[str]:
    return ctx.words("smtp_tls_policy_maps")


def _resolver_tables(ctx: Context) -> list[str]:
    """Policy tables served by a daemon: in practice an MTA-STS resolver."""
    return [t for t in _policy_tables(ctx) if t.split(":", 1)[0] in ("socketmap", "tcp")]


def _policy_entries(ctx: Context) -> list[tuple[str, list[str]]]:
    """(destination, [level, attributes...]) of the file-based policy tables."""
    entries: list[tuple[str, list[str]]] = []
    for table in _policy_tables(ctx):
        path = ctx.table_path(table)
        data = ctx.read(path) if path else None
        if data is None:
            continue
        for line in data.decode("utf-8", "replace").splitlines():
            words = line.split()
            if len(words) >= 2 and not words[0].startswith("#"):
                entries.append((words[0].lower(), [w.lower() for w in words[1:]]))
    return entries


def _client_overrides(ctx: Context) -> list[tuple[str, str]]:
    """(service key, level) of smtp/lmtp client services that set their own level."""
    return [(s.key, s.overrides()["smtp_tls_security_level"].lower())
            for s in ctx.services
            if s.process_name in ("smtp", "lmtp") and "smtp_tls_security_level" in s.overrides()]


def _uses_tls(ctx: Context) -> bool:
    return _level(ctx) != "none" or bool(_policy_tables(ctx))


def _dnssec_lookups(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    if hit.parameter == "smtp_dns_support_level":
        yield Change(Op.SET, "smtp_dns_support_level", "dnssec")
    elif hit.parameter == "smtp_host_lookup":
        # DNS first; "native" stays as a fallback so /etc/hosts names still resolve.
        rest = [w for w in ctx.words("smtp_host_lookup") if w.lower() != "dns"]
        yield Change(Op.SET, "smtp_host_lookup", ", ".join(["dns", *rest]))


def _system_ca(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    bundle = next((p for p in CA_BUNDLES if ctx.file(p).is_file), None)
    if bundle is not None:
        yield Change(Op.SET, "smtp_tls_CAfile", bundle)


@rule(id="OUT-001", title="Outbound TLS switched off",
      severity=Severity.MEDIUM, parameters=("smtp_tls_security_level", "smtp_tls_policy_maps"),
      rationale="Postfix's default client level is none: even to servers that offer "
                "STARTTLS, mail leaves in clear text.",
      fix="smtp_tls_security_level = may (or dane with a validating resolver).",
      references=(f"{P5} smtp_tls_security_level", TLS, "RFC 3207"),
      remedy=setting("smtp_tls_security_level", "may"))

def outbound_off(ctx: Context) -> Iterator[Hit]:
    if not _uses_tls(ctx):
        shown = ctx.value("smtp_tls_security_level") or "(empty)"
        yield Hit(f"smtp_tls_security_level = {shown} and no smtp_tls_policy_maps",
                  parameter="smtp_tls_security_level")


@rule(id="OUT-002", title="Mandatory outbound TLS for all of the Internet",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.RELAY),
      parameters=("smtp_tls_security_level", "relayhost"),
      rationale="postconf(5) calls a mandatory level an inappropriate default for a host that "
                "delivers to the Internet: mail to every server without (valid) TLS bounces "
                "or stays queued.",
      fix="Use may or dane globally and raise the level per destination in "
          "smtp_tls_policy_maps.",
      references=(f"{P5} smtp_tls_security_level", TLS))
def mandatory_everywhere(ctx: Context) -> Iterator[Hit]:
    level = _level(ctx)
    if level in MANDATORY and not ctx.value("relayhost"):
        yield Hit(f"smtp_tls_security_level = {level} with no relayhost",
                  parameter="smtp_tls_security_level")


def _dane_anywhere(ctx: Context) -> list[str]:
    """Where DANE is asked for: main.cf, policy entries, client service overrides."""
    found = [f"smtp_tls_security_level = {_level(ctx)}"] if _level(ctx) in DANE else []
    found += [f"policy {dest} {words[0]}" for dest, words in _policy_entries(ctx)
              if words[0] in DANE]
    found += [f"{key}: -o smtp_tls_security_level={level}"
              for key, level in _client_overrides(ctx) if level in DANE]
    return found


@rule(id="OUT-003", title="Outbound DANE not used",
      severity=Severity.LOW, roles=(Role.MX, Role.RELAY),
      parameters=("smtp_tls_security_level", "smtp_tls_policy_maps"),
      rationale="Opportunistic TLS can be stripped or intercepted by anyone on the path; "
                "DANE (RFC 7672) lets the client insist on authenticated TLS wherever the "
                "receiving domain publishes DNSSEC-signed TLSA records.",
      fix="smtp_tls_security_level = dane and smtp_dns_support_level = dnssec, with a local "
          "validating resolver.",
      references=("RFC 7672 2.2", TLS, f"{P5} smtp_tls_security_level"))
def no_dane(ctx: Context) -> Iterator[Hit]:
    if ctx.value("relayhost"):
        return  # all mail goes to one smarthost; OUT-008 covers that hop
    if not _dane_anywhere(ctx):
        yield Hit(f"smtp_tls_security_level = {_level(ctx)}; no DANE policy",
                  parameter="smtp_tls_security_level")


@rule(id="OUT-004", title="DANE requested without DNSSEC lookups",
      severity=Severity.HIGH,
      parameters=("smtp_dns_support_level", "smtp_host_lookup", "smtp_tls_security_level"),
      rationale="TLS_README: unless smtp_dns_support_level is dnssec and smtp_host_lookup "
                "uses DNS, DANE is disabled for every destination and the client quietly "
                "falls back to opportunistic TLS.",
      fix="smtp_dns_support_level = dnssec, dns first in smtp_host_lookup, and a local "
          "validating resolver in /etc/resolv.conf.",
      references=(TLS, "RFC 7672 2.1", f"{P5} smtp_dns_support_level"),
      remedy=_dnssec_lookups)

def dane_without_dnssec(ctx: Context) -> Iterator[Hit]:
    # XXX: whether the resolver validates is not visible in the configuration; a probe
    # (AD bit for a signed name) belongs to the runtime checks, not here.
    where = _dane_anywhere(ctx)
    if not where:
        return
    if ctx.value("smtp_dns_support_level").lower() != "dnssec":
        yield Hit(f"{where[0]}; smtp_dns_support_level = "
                  f"{ctx.value('smtp_dns_support_level') or '(empty)'}",
                  parameter="smtp_dns_support_level")
    if "dns" not in [w.lower() for w in ctx.words("smtp_host_lookup")]:
        yield Hit(f"{where[0]}; smtp_host_lookup = {ctx.value('smtp_host_lookup')}",
                  parameter="smtp_host_lookup")


@rule(id="OUT-005", title="No MTA-STS policy resolver",
      severity=Severity.INFO, roles=(Role.MX, Role.RELAY),
      parameters=("smtp_tls_policy_maps",),
      rationale="Domains that publish MTA-STS (RFC 8461) instead of DANE get only "
                "opportunistic TLS unless a resolver feeds their policy to Postfix through "
                "smtp_tls_policy_maps.",
      fix="Run an MTA-STS resolver (postfix-mta-sts-resolver, postfix-tlspol) and add its "
          "socketmap to smtp_tls_policy_maps.",
      references=("RFC 8461 5", f"{P5} smtp_tls_policy_maps"))
def no_mta_sts(ctx: Context) -> Iterator[Hit]:
    if ctx.value("relayhost"):
        return  # the smarthost applies the recipients' policies, not this host
    if not _resolver_tables(ctx):
        yield Hit(f"smtp_tls_policy_maps = {ctx.value('smtp_tls_policy_maps') or '(empty)'}",
                  parameter="smtp_tls_policy_maps")


@rule(id="OUT-006", title="Certificate verification without trust anchors",
      severity=Severity.HIGH,
      parameters=("smtp_tls_CAfile", "smtp_tls_CApath", "smtp_tls_policy_maps"),
      rationale="With verify or secure (or MTA-STS policies) the client must check the "
                "server's chain, and with no CA file or directory every such delivery fails "
                "(tls_append_default_CA is off by default).",
      fix="smtp_tls_CAfile = the system bundle (Debian: /etc/ssl/certs/ca-certificates.crt; "
          "read before the chroot, unlike smtp_tls_CApath).",
      references=(f"{P5} smtp_tls_CAfile", f"{P5} smtp_tls_CApath",
                  f"{P5} tls_append_default_CA", TLS),
      remedy=_system_ca)

def no_trust_anchors(ctx: Context) -> Iterator[Hit]:
    why = [f"smtp_tls_security_level = {_level(ctx)}"] if _level(ctx) in VERIFYING else []
    why += [f"policy {dest} {words[0]}" for dest, words in _policy_entries(ctx)
            if words[0] in VERIFYING]
    why += [f"MTA-STS resolver {t}" for t in _resolver_tables(ctx)]
    if not why or ctx.yes("tls_append_default_CA") or ctx.value("smtp_tls_trust_anchor_file"):
        return
    anchors = [ctx.value(n) for n in ("smtp_tls_CAfile", "smtp_tls_CApath")]
    if not any(p and ctx.file(p).exists for p in anchors):
        shown = ", ".join(a for a in anchors if a) or "neither set"
        yield Hit(f"{why[0]}; smtp_tls_CAfile/smtp_tls_CApath: {shown} (none exists)",
                  parameter="smtp_tls_CAfile" if anchors[0] else "smtp_tls_CApath")


@rule(id="OUT-007", title="SSLv2 or SSLv3 allowed outbound",
      severity=Severity.MEDIUM,
      parameters=("smtp_tls_protocols", "smtp_tls_mandatory_protocols"),
      rationale="SSL 2 and 3 are broken (RFC 6176, RFC 7568); a client that still offers them "
                "can be downgraded by an attacker on the path.",
      fix="Exclude SSLv2 and SSLv3: add !SSLv2, !SSLv3 to the list, or use the default "
          "(>=TLSv1 since Postfix 3.6).",
      references=(f"{P5} smtp_tls_protocols", f"{P5} smtp_tls_mandatory_protocols",
                  "RFC 7568", "RFC 8996"),
      remedy=exclude_broken)

def ssl_outbound(ctx: Context) -> Iterator[Hit]:
    if not _uses_tls(ctx):
        return
    for name in ("smtp_tls_protocols", "smtp_tls_mandatory_protocols"):
        enabled = enabled_protocols(ctx.value(name))
        if enabled is not None and enabled & BROKEN:
            shown = ", ".join(p for p in PROTOCOLS if p in enabled & BROKEN)
            yield Hit(f"{name} = {ctx.value(name) or '(empty)'} enables {shown}",
                      parameter=name)


def _relay_keys(relayhost: str) -> list[str]:
    """Policy-table lookup keys smtp(8) tries for a relayhost: as written, then the host."""
    first = relayhost.split()[0].split(",")[0].lower()
    host = first.rsplit(":", 1)[0] if first.startswith("[") else first.split(":", 1)[0]
    return list(dict.fromkeys((first, host, host.strip("[]"))))


@rule(id="OUT-008", title="Opportunistic TLS to the smarthost",
      severity=Severity.MEDIUM, roles=(Role.NULL_CLIENT, Role.RELAY),
      parameters=("relayhost", "smtp_tls_security_level", "smtp_tls_policy_maps"),
      rationale="The hop to your own smarthost is the one you control both ends of; with "
                "only may, an attacker on the path strips STARTTLS and reads the mail and any "
                "SASL password.",
      fix="Require TLS to the relayhost: an smtp_tls_policy_maps entry "
          "'[relay.example.net]:587 secure' (or encrypt), or a mandatory global level.",
      references=(TLS, f"{P5} smtp_tls_policy_maps", "RFC 8314 3.3"))
def opportunistic_relay(ctx: Context) -> Iterator[Hit]:
    relayhost = ctx.value("relayhost")
    if not relayhost:
        return
    keys = _relay_keys(relayhost)
    if keys[-1].startswith(LOOPBACK_HOSTS):
        return  # a loopback hop (a local content filter) never crosses the network
    policy = {dest: words[0] for dest, words in _policy_entries(ctx)}
    level = next((policy[k] for k in keys if k in policy), _level(ctx))
    if level in ("may", "dane"):
        # RFC 7672 2.2: dane to a name without TLSA records is may.
        yield Hit(f"relayhost = {relayhost}; TLS level to it: {level}", parameter="relayhost")
