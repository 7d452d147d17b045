"""postgrey's whitelist files: which clients and recipients are never greylisted.

Security: the files are the administrator's and trusted; the names and addresses they are
matched against come from SMTP clients. Matching looks at most ``MAX_SUBJECT`` characters
of a subject (postgrey too cuts attributes to 512) and a regex line may be at most
``MAX_PATTERN`` characters long.
XXX: Python's ``re`` has no timeout, so an administrator's pattern with nested quantifiers
(``/(a+)+$/``) can backtrack exponentially on a crafted client name and stall the event
loop. The bounds above keep ordinary patterns linear in at most 512 characters; the way
out, if needed, is a linear-time engine (RE2) or the ``regex`` module's timeout, neither
of which is a dependency today.
Standards: postgrey 1.37's ``whitelist_clients`` and ``whitelist_recipients`` formats.

Theory of operation
-------------------
One entry a line; ``#`` starts a comment; blank lines are skipped. Client entries:

* ``/regex/`` (no whitespace inside): searched case-insensitively in ``client_name``
  (which is ``unknown`` when the client's reverse DNS is not forward-confirmed).
* ``a.b.c.d`` or ``a.b.c.d/nn``; anything with two or more ``:`` (IPv6, optionally
  ``/nn``): the address or network (host bits ignored, as NetAddr::IP does).
* ``a.b.c``: ``a.b.c.0/24``. ``a.b``: ``a.b.0.0/16`` -- the /16 that postgrey documents.
  postgrey's code actually builds a /24 for it (a bug); postwarden does what the
  documentation and the file's authors mean.
* anything else without whitespace: that host name and every name below it.

Recipient entries: ``/regex/`` searched in the whole recipient; ``user@domain`` (also
matches ``user+ext@domain``); ``user@`` (that local part at any domain); ``domain`` (the
domain and its subdomains).

A line that fits none of these, a bad regex or a bad address is an error naming the file
and line (postgrey warns and skips some of them and silently drops others): a
whitelist that loads differently from what its author wrote is worse than a daemon that
refuses to start and says why. A missing file whose name ends in ``.local`` is skipped,
as postgrey does; any other missing file is an error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import ConfigError
from postwarden.policy.model import IPAddress

MAX_SUBJECT = 512
MAX_PATTERN = 512
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REGEX = re.compile(r"/(\S+)/")
_IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?:/\d{1,2})?")
_IPV4_24 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV4_16 = re.compile(r"\d{1,3}\.\d{1,3}")
_IPV6 = re.compile(r".*:.*:.*")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class ClientWhitelist:
    patterns: tuple[re.Pattern[str], ...] = ()
    domains: tuple[str, ...] = ()          # lower-case; matches itself and subdomains
    networks: tuple[IPNetwork, ...] = ()

    def matches(self, client_name: str, client_ip: IPAddress | None) -> bool:
        name = client_name[:MAX_SUBJECT].lower()
        if any(name == domain or name.endswith("." + domain) for domain in self.domains):
            return True
        if any(pattern.search(name) for pattern in self.patterns):
            return True
        return client_ip is not None and any(client_ip in net for net in self.networks)

    def __add__(self, other: ClientWhitelist) -> ClientWhitelist:
        return ClientWhitelist(self.patterns + other.patterns, self.domains + other.domains,
                               self.networks + other.networks)


@dataclass(frozen=True)
class RecipientWhitelist:
    patterns: tuple[re.Pattern[str], ...] = ()

    def matches(self, recipient: str) -> bool:
        if not self.patterns:
            return False
        subject = recipient[:MAX_SUBJECT]
        return any(pattern.search(subject) for pattern in self.patterns)

    def __add__(self, other: RecipientWhitelist) -> RecipientWhitelist:
        return RecipientWhitelist(self.patterns + other.patterns)


def _entries(text: str) -> Iterable[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield number, line


def _regex(source: str, number: int, body: str) -> re.Pattern[str]:
    if len(body) > MAX_PATTERN:
        raise ConfigError(source, number, f"regex longer than {MAX_PATTERN} characters")
    try:
        return re.compile(body, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(source, number, f"bad regex: {exc}") from None


def _network(source: str, number: int, text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(source, number, f"bad address or network {text!r}") from None


def parse_clients(text: str, source: str = "<string>") -> ClientWhitelist:
    """A ``whitelist_clients`` file's entries."""
    patterns: list[re.Pattern[str]] = []
    domains: list[str] = []
    networks: list[IPNetwork] = []
    for number, line in _entries(text):
        if found := _REGEX.fullmatch(line):
            patterns.append(_regex(source, number, found.group(1)))
        elif _IPV4.fullmatch(line):
            networks.append(_network(source, number, line))
        elif _IPV4_24.fullmatch(line):
            networks.append(_network(source, number, line + ".0/24"))
        elif _IPV4_16.fullmatch(line):
            networks.append(_network(source, number, line + ".0.0/16"))
        elif _IPV6.fullmatch(line):
            networks.append(_network(source, number, line))
        elif _WORD.fullmatch(line):
            domains.append(line.lower())
        else:
            raise ConfigError(source, number, "does not look like a host name, address "
                                              "or /regex/")
    return ClientWhitelist(tuple(patterns), tuple(domains), tuple(networks))


def parse_recipients(text: str, source: str = "<string>") -> RecipientWhitelist:
    """A ``whitelist_recipients`` file's entries, each as a pattern."""
    patterns: list[re.Pattern[str]] = []
    for number, line in _entries(text):
        if found := _REGEX.fullmatch(line):
            patterns.append(_regex(source, number, found.group(1)))
            continue
        if not _WORD.fullmatch(line):
            raise ConfigError(source, number, "does not look like an address")
        user, at, domain = line.partition("@")
        if at and domain:
            body = rf"^{re.escape(user)}(?:\+[^@]+)?@{re.escape(domain)}$"
        elif at:
            body = rf"^{re.escape(user)}(?:\+[^@]+)?@"
        else:
            body = rf"(?:@|\.){re.escape(user)}$"
        patterns.append(re.compile(body, re.IGNORECASE))
    return RecipientWhitelist(tuple(patterns))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        if path.name.endswith(".local"):
            return None
        raise ConfigError(path, None, "no such file") from None
    except OSError as exc:
        raise ConfigError(path, None, exc.strerror or "cannot read") from None


def load_clients(paths: Iterable[str | Path]) -> ClientWhitelist:
    result = ClientWhitelist()
    for path in map(Path, paths):
        text = _read(path)
        if text is not None:
            result = result + parse_clients(text, str(path))
    return result


def load_recipients(paths: Iterable[str | Path]) -> RecipientWhitelist:
    result = RecipientWhitelist()
    for path in map(Path, paths):
        text = _read(path)
        if text is not None:
            result = result + parse_recipients(text, str(path))
    return result
