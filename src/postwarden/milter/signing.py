"""The DKIM signing decision: which messages are signed, and with which keys.

Security: the From domain, the milter macros and the client address all come from the
SMTP client or the MTA and are untrusted. ``decide`` only compares them against the
configuration; it never raises, never does I/O, and quotes them in its reasons through
``clip`` (bounded, escaped). Only mail from an internal sender is ever signed, so a
``"*"`` pattern cannot make the milter sign inbound mail (the OpenDKIM pitfall of signing
whatever arrives with a managed From domain). The configuration is checked strictly at load
time: unknown keys, wrong types, bad patterns and key references that name no key stop the
load with the file and the key. Private keys are read only by ``load_keys``, on request.
Standards: RFC 6376 3.1 (selector syntax), 3.5 (d=), 5.1 (the signer decides what to sign);
RFC 8463 (ed25519-sha256); RFC 8301 (rsa-sha256 only); Postfix MILTER_README and
postconf(5) ``milter_macro_daemon_name``, ``milter_connect_macros``, ``milter_mail_macros``
(the macros ``{daemon_name}`` and ``{auth_authen}``); opendkim.conf(5) KeyTable,
SigningTable, InternalHosts and MTA (what this model expresses).

Theory of operation
-------------------
The ``[dkim]`` section of postwarden.toml::

    [dkim]
    internal_networks = ["127.0.0.0/8", "::1/128", "192.0.2.0/24"]   # default: loopback
    daemon_names = ["ORIGINATING"]                                    # the default

    [[dkim.key]]                        # one per key, like a KeyTable line
    domain = "example.org"              # d=
    selector = "r2026"                  # s=
    key_file = "keys/r2026.private"     # relative to the TOML file's directory
    algorithm = "rsa-sha256"            # or "ed25519-sha256"; default rsa-sha256

    [dkim.sign]                         # like a SigningTable: From-domain pattern -> keys
    "example.org" = ["r2026", "s2026"]  # RSA + Ed25519 dual signing
    ".example.org" = ["r2026"]          # subdomains of example.org (not example.org)
    "*.example.net" = ["example.net:n1"]  # same as ".example.net"
    "lists.example.org" = []            # never sign this one
    "*" = ["fallback"]                  # any other domain

A key reference is the key's selector when only one key has that selector, else
``DOMAIN:SELECTOR``. Patterns are ASCII (A-labels for IDNs), matched without regard to case.

Two questions decide, and both are always answered so that the reasons explain the whole
decision (the "why isn't it signing?" question):

1. Is the sender internal? Yes when any of: the client address is in
   ``internal_networks``; the client logged in with SASL (``{auth_authen}`` not empty);
   ``{daemon_name}`` is one of ``daemon_names`` (Postfix ``milter_macro_daemon_name``,
   set per service in master.cf, e.g. ``-o milter_macro_daemon_name=ORIGINATING`` on
   submission). Macro names are accepted with or without their braces.
2. Which pattern matches the From domain? The most specific one: the exact domain, then
   the subdomain pattern of the nearest parent (``.a.example.org`` before
   ``.example.org``), then ``*``. Unlike OpenDKIM there is no file order and no "first of
   several": every key the winning pattern names signs (dual signing), so the result does
   not depend on how the table was written.

The message is signed when both answers are yes and the pattern names at least one key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal, NoReturn

from postwarden.errors import ConfigError, clip
from postwarden.milter.keys import DkimKeyError, PrivateKey, kind_of, load_private

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
ALGORITHMS: tuple[Algorithm, ...] = ("rsa-sha256", "ed25519-sha256")
DEFAULT_INTERNAL: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
DEFAULT_DAEMON_NAMES: tuple[str, ...] = ("ORIGINATING",)
WILDCARD = "*"
MAX_SHOWN = 80

# RFC 6376 3.1: a selector is a sub-domain (dot-separated labels); d= is a domain name
_LABEL = r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)"
_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _is_name(text: str) -> bool:
    return len(text) <= 253 and _NAME.fullmatch(text) is not None


def normalize_pattern(pattern: str) -> str:
    """The canonical form of a sign-table pattern: ``*``, ``.parent``, or ``exact``.

    Raises ``ValueError`` for anything else.
    """
    text = pattern.strip().lower()
    if text == WILDCARD:
        return text
    if text.startswith("*."):
        text = text[1:]
    body = text[1:] if text.startswith(".") else text
    body = body[:-1] if body.endswith(".") else body
    if not _is_name(body):
        raise ValueError(f"{clip(pattern)!r} is not a domain, .domain, *.domain or *")
    return ("." if text.startswith(".") else "") + body


@dataclass(frozen=True)
class SigningKey:
    """One signing key: what a KeyTable line holds, plus its algorithm."""

    domain: str  # d=
    selector: str  # s=
    key_file: str
    algorithm: Algorithm = "rsa-sha256"

    def __post_init__(self) -> None:
        if not _is_name(self.domain):
            raise ValueError(f"domain: {clip(self.domain)!r} is not a domain name")
        if not _is_name(self.selector):
            raise ValueError(f"selector: {clip(self.selector)!r} is not a selector "
                             "(RFC 6376 3.1)")
        if not self.key_file:
            raise ValueError("key_file: must not be empty")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm: {clip(str(self.algorithm))!r}: expected one of "
                             f"{', '.join(ALGORITHMS)}")

    @property
    def name(self) -> str:
        """``domain:selector``: unique within one configuration."""
        return f"{self.domain}:{self.selector}"

    def load(self) -> PrivateKey:
        """Read the private key; it must be of this key's algorithm."""
        key = load_private(Path(self.key_file))
        want = "ed25519" if self.algorithm == "ed25519-sha256" else "rsa"
        if kind_of(key) != want:
            raise DkimKeyError(f"{self.key_file}: key type {kind_of(key)}, but {self.name} "
                               f"is configured as {self.algorithm}")
        return key


def _resolve(keys: Sequence[SigningKey], reference: str) -> SigningKey:
    """The key a sign-table reference names; ``ValueError`` when none or several."""
    ref = reference.strip()
    if ":" in ref:
        domain, _, selector = ref.partition(":")
        found = [k for k in keys if k.domain.lower() == domain.lower().rstrip(".")
                 and k.selector == selector]
    else:
        found = [k for k in keys if k.selector == ref]
    if not found:
        raise ValueError(f"{clip(reference)!r} names no [[dkim.key]] (by selector, or "
                         "DOMAIN:SELECTOR)")
    if len(found) > 1:
        raise ValueError(f"{clip(reference)!r} is the selector of several keys; write "
                         "DOMAIN:SELECTOR")
    return found[0]


@dataclass(frozen=True)
class SigningSettings:
    """Who may have mail signed, and which keys sign which From domains."""

    keys: tuple[SigningKey, ...] = ()
    # (pattern as written, key references); see the module docstring
    domains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    internal_networks: tuple[str, ...] = DEFAULT_INTERNAL
    daemon_names: tuple[str, ...] = DEFAULT_DAEMON_NAMES
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    # canonical pattern -> (the pattern as written, its keys)
    _table: dict[str, tuple[str, tuple[SigningKey, ...]]] = field(
        init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [k.name for k in self.keys]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"key: {name} is configured twice")
        networks: list[IPNetwork] = []
        for text in self.internal_networks:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(f"internal_networks: {clip(text)!r} is not an address "
                                 "or network") from None
        table: dict[str, tuple[str, tuple[SigningKey, ...]]] = {}
        for pattern, references in self.domains:
            try:
                canonical = normalize_pattern(pattern)
            except ValueError as exc:
                raise ValueError(f"sign: {exc}") from None
            if canonical in table:
                raise ValueError(f"sign: {clip(pattern)!r}: the pattern {canonical!r} is "
                                 "given twice")
            resolved: list[SigningKey] = []
            for reference in references:
                try:
                    key = _resolve(self.keys, reference)
                except ValueError as exc:
                    raise ValueError(f'sign."{clip(pattern)}": {exc}') from None
                if key in resolved:
                    raise ValueError(f'sign."{clip(pattern)}": {key.name} is named twice')
                resolved.append(key)
            table[canonical] = (pattern, tuple(resolved))
        object.__setattr__(self, "_networks", tuple(networks))
        object.__setattr__(self, "_table", table)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], path: Path | str) -> SigningSettings:
        """Build from the ``[dkim]`` table; ``ConfigError`` naming file and key."""
        return _parse(table, Path(path))

    def match(self, domain: str) -> tuple[str, tuple[SigningKey, ...]] | None:
        """The most specific pattern (as written) matching a normalized domain, and its
        keys: the exact domain, then the nearest parent's ``.parent``, then ``*``."""
        labels = domain.split(".")
        for candidate in (domain, *("." + ".".join(labels[i:]) for i in range(1, len(labels))),
                          WILDCARD):
            if candidate in self._table:
                return self._table[candidate]
        return None

    def load_keys(self) -> tuple[tuple[SigningKey, PrivateKey], ...]:
        """Read every configured private key (``DkimKeyError`` on the first bad one)."""
        return tuple((k, k.load()) for k in self.keys)


@dataclass(frozen=True)
class SigningDecision:
    """Whether to sign, with which keys, and why, one sentence per step."""

    sign: bool
    keys: tuple[SigningKey, ...]
    reasons: tuple[str, ...]
    internal: bool = False      # the sender is internal (network, SASL, daemon_name)


def _macro(macros: Mapping[str, str], name: str) -> str:
    """A macro's value; Postfix sends ``{name}``, users may write ``name``."""
    value = macros.get("{" + name + "}")
    if value is None:
        value = macros.get(name, "")
    return value if isinstance(value, str) else ""


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address as Postfix may show it: ``192.0.2.7``, ``[::1]``, ``IPv6:::1``."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if candidate[:5].lower() == "ipv6:":
        candidate = candidate[5:]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_internal(settings: SigningSettings, macros: Mapping[str, str],
              client_address: str | None) -> tuple[bool, str]:
    """Whether the sender is internal, with one sentence saying why."""
    client = "client" if not client_address else f"client {clip(client_address)}"
    why: list[str] = []
    if client_address is None or not client_address.strip():
        why.append("no client address")
    else:
        address = _address(client_address)
        if address is None:
            why.append(f"{clip(client_address)!r} is not an IP address")
        elif any(address in net for net in settings._networks):
            net = next(n for n in settings._networks if address in n)
            return True, f"{client} is internal: in internal_networks ({net})"
        else:
            why.append("not in internal_networks")
    login = _macro(macros, "auth_authen")
    if login:
        return True, f"{client} is internal: SASL login {clip(login)!r} ({{auth_authen}})"
    why.append("no SASL login ({auth_authen} empty)")
    daemon = _macro(macros, "daemon_name")
    if daemon in settings.daemon_names:
        return True, f"{client} is internal: daemon_name is {clip(daemon)!r}"
    wanted = " or ".join(settings.daemon_names) or "(no daemon_names configured)"
    shown = f"is {clip(daemon)!r}" if daemon else "is not set"
    why.append(f"daemon_name {shown} not {wanted}")
    return False, f"{client} is not internal: {', '.join(why)}"


def normalize_domain(text: str) -> str | None:
    """A From domain in lower-case ASCII (IDNs as A-labels), or None if it is not one."""
    candidate = text.strip().rstrip(".")
    if candidate.startswith("[") or not candidate:
        return None  # an address literal has no signing domain
    if not candidate.isascii():
        try:
            candidate = candidate.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    candidate = candidate.lower()
    return candidate if _is_name(candidate) else None


def from_domain(fields: Sequence[str]) -> tuple[str | None, str]:
    """The domain of the first address of the first From field, and a sentence on it.

    ``fields`` are the values of the message's From header fields in order.
    """
    if not fields:
        return None, "no From header field"
    value = fields[0]
    shown = clip(" ".join(value.split()), MAX_SHOWN)
    try:
        addresses = [a for _, a in getaddresses([value]) if a]
    except (ValueError, IndexError, TypeError):  # XXX: email.utils on garbage; be safe
        addresses = []
    note = f" (of {len(fields)} From fields; RFC 5322 3.6 allows one)" if len(fields) > 1 else ""
    if not addresses:
        return None, f"From {shown!r} has no address{note}"
    address = addresses[0]
    local, at, host = address.rpartition("@")
    domain = normalize_domain(host) if at and local else None
    if domain is None:
        return None, f"From address {clip(address)!r} has no usable domain{note}"
    return domain, f"From address {clip(address)!r}: domain {domain}{note}"


def _aligned(key: SigningKey, domain: str) -> bool:
    d = key.domain.lower()
    return domain == d or domain.endswith("." + d)


def decide(settings: SigningSettings, *, from_header_domain: str | None,
           macros: Mapping[str, str], client_address: str | None) -> SigningDecision:
    """Whether to sign a message, with which keys, and why. Never raises."""
    reasons: list[str] = []
    internal, why = is_internal(settings, macros, client_address)
    reasons.append(why)
    keys: tuple[SigningKey, ...] = ()
    domain = normalize_domain(from_header_domain) if from_header_domain else None
    if from_header_domain is None or not from_header_domain.strip():
        reasons.append("no From header domain: not signed")
    elif domain is None:
        reasons.append(f"From domain {clip(from_header_domain)!r} is not a domain name: "
                       "not signed")
    else:
        found = settings.match(domain)
        if found is None:
            listed = ", ".join(f"'{p}'" for p, _ in settings.domains) or "(none configured)"
            reasons.append(f"From domain {domain} matches no sign pattern: {listed}")
        else:
            pattern, keys = found
            if not keys:
                reasons.append(f"From domain {domain} matches '{pattern}', which names no "
                               "keys: not signed")
            else:
                selectors = ", ".join(k.selector for k in keys)
                reasons.append(f"From domain {domain} matches '{pattern}' -> selectors "
                               f"{selectors}")
                for key in keys:
                    if not _aligned(key, domain):
                        reasons.append(f"note: d={key.domain} ({key.selector}) is not "
                                       f"aligned with From domain {domain} (DMARC)")
    sign = internal and bool(keys)
    if sign:
        reasons.append("signing with " + ", ".join(
            f"d={k.domain} s={k.selector} a={k.algorithm}" for k in keys))
    elif not internal:
        reasons.append("mail from a sender that is not internal is not signed")
    return SigningDecision(sign=sign, keys=keys if sign else (), reasons=tuple(reasons),
                           internal=internal)


# -- loading the [dkim] table ---------------------------------------------------------

_TOP = frozenset({"key", "sign", "internal_networks", "daemon_names"})
_KEY = frozenset({"domain", "selector", "key_file", "algorithm"})


def _fail(path: Path, key: str, reason: str) -> NoReturn:
    raise ConfigError(path, None, f"{key}: {reason}")


def _strings(path: Path, key: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        _fail(path, key, "expected a list of strings")
    return tuple(value)


def _key(path: Path, index: int, entry: object) -> SigningKey:
    where = f"dkim.key[{index}]"
    if not isinstance(entry, dict):
        _fail(path, where, "expected a table")
    for name in sorted(set(entry) - _KEY):
        _fail(path, f"{where}.{clip(name)}", "unknown key")
    values: dict[str, str] = {}
    for name in ("domain", "selector", "key_file", "algorithm"):
        if name not in entry:
            if name == "algorithm":
                continue
            _fail(path, f"{where}.{name}", "missing")
        if not isinstance(entry[name], str):
            _fail(path, f"{where}.{name}", f"expected a string, got "
                                          f"{type(entry[name]).__name__}")
        values[name] = entry[name]
    if "key_file" in values and not Path(values["key_file"]).is_absolute():
        values["key_file"] = str(path.parent / values["key_file"])
    try:
        return SigningKey(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        _fail(path, f"{where}.{name}", reason)


def _parse(table: Mapping[str, Any], path: Path) -> SigningSettings:
    if not isinstance(table, Mapping):
        _fail(path, "dkim", "expected a table")
    for name in sorted(set(table) - _TOP):
        _fail(path, f"dkim.{clip(name)}", "unknown key")
    entries = table.get("key", [])
    if not isinstance(entries, list):
        _fail(path, "dkim.key", "expected an array of tables ([[dkim.key]])")
    keys = tuple(_key(path, i, e) for i, e in enumerate(entries))
    sign = table.get("sign", {})
    if not isinstance(sign, dict):
        _fail(path, "dkim.sign", "expected a table of pattern = [key references]")
    domains = tuple((pattern, _strings(path, f'dkim.sign."{clip(pattern)}"', refs))
                    for pattern, refs in sign.items())
    values: dict[str, Any] = {"keys": keys, "domains": domains}
    for name in ("internal_networks", "daemon_names"):
        if name in table:
            values[name] = _strings(path, f"dkim.{name}", table[name])
    try:
        return SigningSettings(**values)
    except ValueError as exc:
        name, _, reason = str(exc).partition(": ")
        _fail(path, f"dkim.{name}", reason)
