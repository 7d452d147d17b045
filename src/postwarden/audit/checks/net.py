"""NET: network exposure, who can reach the SMTP services and whom Postfix trusts.

Security: reads the parsed configuration only; address lists are parsed with ``ipaddress``
word by word, and a word that is not an address (a ``/file``, a ``type:table``, a host
name) is reported as trust the audit cannot see through, never guessed at.
Standards: postconf(5) inet_interfaces, mynetworks, mynetworks_style,
smtpd_authorized_xclient_hosts, smtpd_authorized_xforward_hosts,
smtpd_upstream_proxy_protocol, postscreen_upstream_proxy_protocol, myhostname, mydomain;
STANDARD_CONFIGURATION_README "null client"; SMTPD_ACCESS_README; XCLIENT_README;
master(5).

Theory of operation
-------------------
``breadth`` classifies one address-list word: how much of the internet it trusts. The
thresholds (prefix shorter than /8 is "everything", public or shorter than /24 for IPv4 and
/64 for IPv6 is "broad", link-local is "neighbours") are postwarden's heuristic, not
Postfix's; Postfix trusts whatever the list says. ``svc`` reuses ``breadth`` for
``qmqpd_authorized_clients``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterator

from postwarden.audit.context import Context
from postwarden.audit.fixes import Change, Inputs, Needs, Op, Outcome, chain, setting
from postwarden.audit.model import Hit, Role, Severity, rule
from postwarden.postfix.mastercf import Service

P5 = "postconf(5)"
LOOPBACK_WORDS = ("loopback-only", "localhost", "127.0.0.1", "::1", "[::1]")
PUBLIC_PORTS = (25, 465, 587)
# Restriction lists a client must pass; an "internal only" service says so in one of them.
LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
         "smtpd_relay_restrictions", "smtpd_recipient_restrictions")


class Breadth(enum.Enum):
    EVERYTHING = "everything"  # 0.0.0.0/0, ::/0, shorter than /8
    BROAD = "broad"            # public, or shorter than /24 (IPv4) or /64 (IPv6)
    NEIGHBOURS = "neighbours"  # link-local: every host on the same segment
    OPAQUE = "opaque"          # a file, a table or a host name: not visible to the audit
    NARROW = "narrow"          # loopback, a host, a private subnet of /24 (/64) or longer


def network(word: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """'10.0.0.0/8', '[2001:db8::]/64', '192.0.2.1' -> the network; anything else -> None."""
    text = word.strip().replace("[", "").replace("]", "")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def breadth(word: str) -> Breadth:
    net = network(word)
    if net is None:
        return Breadth.OPAQUE
    if net.is_loopback or net.num_addresses == 1:
        return Breadth.NARROW
    if net.prefixlen < 8:
        return Breadth.EVERYTHING
    if net.is_link_local:
        return Breadth.NEIGHBOURS
    floor = 24 if net.version == 4 else 64
    if not net.is_private or net.prefixlen < floor:
        return Breadth.BROAD
    return Breadth.NARROW


def list_words(ctx: Context, name: str, service: Service | None = None) -> list[str]:
    """Members of an address list; '!' exclusions only narrow trust and are dropped."""
    return [w for w in ctx.words(name, service) if not w.startswith("!")]


def _loopback_only(ctx: Context) -> bool:
    words = ctx.words("inet_interfaces")
    return bool(words) and all(w in LOOPBACK_WORDS or w.startswith("127.") for w in words)


@rule(id="NET-001", title="Null client listens on the network",
      severity=Severity.MEDIUM, roles=(Role.NULL_CLIENT,),
      parameters=("inet_interfaces",),
      rationale="A send-only host needs no SMTP listener on a public address; every open "
                "port is attack surface (STANDARD_CONFIGURATION_README, null client).",
      fix="Set inet_interfaces = loopback-only (and mydestination empty) on a null client.",
      references=(f"{P5} inet_interfaces", "STANDARD_CONFIGURATION_README null client"),
      remedy=chain(setting("inet_interfaces", "loopback-only"), setting("mydestination", "")))
def null_client_listens(ctx: Context) -> Iterator[Hit]:
    if _loopback_only(ctx):
        return
    public = [s.key for s in ctx.public_smtpd_services()]
    shown = f"; public SMTP services: {', '.join(public)}" if public else ""
    yield Hit(f"inet_interfaces = {ctx.value('inet_interfaces') or '(empty)'}{shown}",
              parameter="inet_interfaces")


def _listen(ctx: Context) -> Iterator[Outcome]:
    """inet_interfaces = all, when the operator declared an inbound role (harden --role)."""
    if ctx.roles & {Role.MX, Role.SUBMISSION}:
        yield Change(Op.SET, "inet_interfaces", "all")


@rule(id="NET-002", title="Inbound role but Postfix listens on loopback only",
      severity=Severity.HIGH, roles=(Role.MX, Role.SUBMISSION, Role.NULL_CLIENT),
      parameters=("inet_interfaces",),
      rationale="With inet_interfaces limited to loopback no mail from other hosts can "
                "arrive, so inbound settings (SASL, postscreen, submission services) are moot "
                "and the configuration contradicts the role it is audited for.",
      fix="Decide the role: for an MX or submission server set inet_interfaces = all (or "
          "the public addresses); for a send-only host audit it as a null client.",
      references=(f"{P5} inet_interfaces",), remedy=lambda ctx, hit, inputs: _listen(ctx))
def inbound_loopback(ctx: Context) -> Iterator[Hit]:
    if not _loopback_only(ctx):
        return
    features = [s.key for s in ctx.smtpd_services() if ctx.port(s) in PUBLIC_PORTS]
    if ctx.yes("smtpd_sasl_auth_enable"):
        features.append("smtpd_sasl_auth_enable = yes")
    if any(r.name == "check_policy_service"
           for r in ctx.restrictions("smtpd_recipient_restrictions")):
        features.append("policy services in smtpd_recipient_restrictions")
    # Audited as a null client (what loopback-only implies), the contradiction shows only
    # when inbound-only features are configured: SASL or policy services (the seed guide).
    inbound = ctx.roles & {Role.MX, Role.SUBMISSION}
    if not inbound and not any("=" in f or "policy" in f for f in features):
        return
    shown = f"; inbound services configured: {', '.join(features)}" if features else ""
    yield Hit(f"inet_interfaces = {ctx.value('inet_interfaces')}{shown}",
              parameter="inet_interfaces")


BREADTH_SEVERITY = {Breadth.EVERYTHING: Severity.CRITICAL, Breadth.BROAD: Severity.HIGH,
                    Breadth.NEIGHBOURS: Severity.MEDIUM, Breadth.OPAQUE: Severity.LOW}


@rule(id="NET-003", title="mynetworks trusts too much",
      severity=Severity.HIGH, parameters=("mynetworks",),
      rationale="permit_mynetworks lets these clients relay anywhere and skip the checks "
                "after it; a broad, public or link-local entry hands that to strangers, and a "
                "file or table entry is trust this audit cannot inspect.",
      fix="List only the hosts and subnets that must relay through this server, as "
          "explicit addresses with the longest prefix that works.",
      references=(f"{P5} mynetworks", "SMTPD_ACCESS_README"))
def mynetworks_broad(ctx: Context) -> Iterator[Hit]:
    for word in list_words(ctx, "mynetworks"):
        kind = breadth(word)
        if kind is Breadth.NARROW:
            continue
        if kind is Breadth.OPAQUE:
            evidence = (f"mynetworks entry {word!r} is a file, lookup table or host name; "
                        "the trust it grants is not visible to this audit: review it")
        else:
            evidence = f"mynetworks entry {word} trusts {kind.value}"
        yield Hit(evidence, parameter="mynetworks", severity=BREADTH_SEVERITY[kind])


@rule(id="NET-004", title="mynetworks derived from the local subnets",
      severity=Severity.MEDIUM, roles=(Role.MX, Role.RELAY),
      parameters=("mynetworks", "mynetworks_style"),
      rationale="Without an explicit mynetworks, Postfix trusts every host of the attached "
                "subnets (style subnet, the default below compatibility_level 2) or whole "
                "class A/B/C networks (style class): neighbours in a hosting network may relay.",
      fix="Set mynetworks explicitly, or mynetworks_style = host.",
      references=(f"{P5} mynetworks_style", "COMPATIBILITY_README"))
def implicit_mynetworks(ctx: Context) -> Iterator[Hit]:
    style = ctx.value("mynetworks_style")
    if ctx.explicit("mynetworks") or style not in ("subnet", "class"):
        return
    yield Hit(f"mynetworks unset, mynetworks_style = {style}: trusts "
              f"{ctx.value('mynetworks')}", parameter="mynetworks_style")


def _more_than_a_host(word: str) -> bool:
    """A subnet beyond loopback, or a file or table whose members the audit cannot see."""
    net = network(word)
    if net is None:
        return word.startswith("/") or ":" in word
    return not net.is_loopback and net.num_addresses > 1


@rule(id="NET-005", title="XCLIENT or XFORWARD allowed from broad networks",
      severity=Severity.HIGH, parameters=("smtpd_authorized_xclient_hosts",
                                          "smtpd_authorized_xforward_hosts"),
      rationale="An XCLIENT-authorised client can claim any client address and HELO name, "
                "so it passes permit_mynetworks and DNS blocklists; XFORWARD falsifies the "
                "logged origin. Only the exact proxy or filter host may have it.",
      fix="List only the address of the proxy or content filter that needs the command.",
      references=(f"{P5} smtpd_authorized_xclient_hosts", "XCLIENT_README",
                  "XFORWARD_README"))
def xclient_broad(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.public_smtpd_services():
        for name in ("smtpd_authorized_xclient_hosts", "smtpd_authorized_xforward_hosts"):
            wide = [w for w in list_words(ctx, name, svc) if _more_than_a_host(w)]
            if wide:
                yield Hit(f"{svc.key}: {name} includes {', '.join(wide)}",
                          parameter=name, service=svc.key)


@rule(id="NET-006", title="PROXY protocol expected on a publicly reachable port",
      severity=Severity.MEDIUM, parameters=("smtpd_upstream_proxy_protocol",
                                            "postscreen_upstream_proxy_protocol"),
      rationale="A service that expects a haproxy header takes the client address from it: "
                "anyone who reaches the port directly can claim any address, mynetworks "
                "included.",
      fix="Bind the service to the network of the proxy only (host:port in master.cf), or "
          "firewall the port so only the proxy reaches it.",
      references=(f"{P5} smtpd_upstream_proxy_protocol",
                  f"{P5} postscreen_upstream_proxy_protocol"))
def proxy_public(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.public_smtpd_services():
        name = ("postscreen_upstream_proxy_protocol" if svc.process_name == "postscreen"
                else "smtpd_upstream_proxy_protocol")
        if ctx.value(name, svc):
            yield Hit(f"{svc.key} listens on a public address with {name} = "
                      f"{ctx.value(name, svc)}", parameter=name, service=svc.key)


def _mynetworks_only(ctx: Context, name: str, svc: Service) -> bool:
    """'permit_mynetworks, reject' (the only way through is being in mynetworks)."""
    items = [r.name for r in ctx.restrictions(name, svc)]
    return items[:2] == ["permit_mynetworks", "reject"]


@rule(id="NET-007", title="Internal-only service listens on a public address",
      severity=Severity.MEDIUM, parameters=LISTS,
      rationale="A service that lets in only mynetworks (a reinjection or filter-return "
                "port) has no reason to face the internet; its only protection is the "
                "address check.",
      fix="Bind it to loopback or an internal address: 127.0.0.1:10025 inet ... in master.cf.",
      references=("master(5)", f"{P5} inet_interfaces"))
def internal_public(ctx: Context) -> Iterator[Hit]:
    for svc in ctx.public_smtpd_services():
        if svc.process_name != "smtpd" or ctx.port(svc) in PUBLIC_PORTS:
            continue  # RELAY-010 judges the same pattern on the MX and submission ports
        for name in LISTS:
            if _mynetworks_only(ctx, name, svc):
                yield Hit(f"{svc.key} accepts only mynetworks ({name} = "
                          f"{ctx.value(name, svc)}) but listens on a public address",
                          parameter=name, service=svc.key)
                break


def _set_identity(ctx: Context, hit: Hit, inputs: Inputs) -> Iterator[Outcome]:
    """myhostname (and mydomain) from the operator's --hostname (--domain)."""
    if inputs.hostname is not None:
        yield Change(Op.SET, "myhostname", inputs.hostname)
    elif _identity_problem(ctx):
        yield Needs("hostname", "myhostname")
    if inputs.domain is not None:
        yield Change(Op.SET, "mydomain", inputs.domain)


def _identity_problem(ctx: Context) -> str | None:
    name = ctx.value("myhostname")
    if "myhostname" not in ctx.config.main:
        return f"myhostname is not set; Postfix takes the machine's name ({name})"
    if "." not in name.strip(".") or name.endswith((".localdomain", ".local", ".localhost")):
        return f"myhostname = {name} is not a public fully qualified name"
    return None


@rule(id="NET-008", title="Host name left to the machine",
      severity=Severity.LOW, parameters=("myhostname", "mydomain"),
      rationale="Without myhostname Postfix takes the kernel's host name, which often is not "
                "the name in DNS, in the certificate and in the PTR record; the greeting, "
                "the HELO of outgoing mail and the Received headers then carry a name that "
                "receivers cannot verify, and mail to $myhostname goes astray.",
      fix="Set myhostname to the server's public fully qualified name (and mydomain when "
          "the mail domain is not the part after the first dot): harden --hostname, --domain.",
      references=(f"{P5} myhostname", f"{P5} mydomain", "RFC 5321 section 4.1.1.1"),
      remedy=_set_identity, takes=("hostname", "domain"))
def identity(ctx: Context) -> Iterator[Hit]:
    problem = _identity_problem(ctx)
    if problem:
        yield Hit(problem, parameter="myhostname")
