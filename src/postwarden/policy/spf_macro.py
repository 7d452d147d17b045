"""SPF macro expansion (RFC 7208 section 7): pure, given the values of the letters.

Security: the values come from outside (sender, HELO name, DNS names); expansion only
splits, reverses, joins and percent-escapes them, and the result of a domain-spec is cut
to 253 characters (7.3) so no query name grows without bound. The macro text has been
checked by ``spf_record.check_macro_string`` before it gets here.
Standards: RFC 7208 7.1-7.4 (grammar, letters, transformers, URL escaping of upper-case
letters), 2.4 (``postmaster`` for an empty local part).

Theory of operation
-------------------
``%{p}`` needs DNS (a validated reverse name), so this module does not look anything up:
the evaluator finds out whether a string uses ``p`` (``uses_p``), resolves it once, and
passes the value in ``MacroContext``. Everything else is known from the request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote

from postwarden.policy.spf_record import SpfSyntaxError

_MACRO = re.compile(r"%\{([a-zA-Z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%%|%_|%-")
MAX_DOMAIN = 253
_ESCAPES = {"%%": "%", "%_": " ", "%-": "%20"}  # RFC 7208 7.1


@dataclass(frozen=True)
class MacroContext:
    """The values of the macro letters for one evaluation step."""

    sender: str               # s: "local@domain" (local part already "postmaster" if empty)
    domain: str               # d: the current domain
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    helo: str                 # h
    receiver: str = "unknown"  # r (exp only)
    timestamp: int = 0         # t (exp only)
    validated: str | None = None  # p, resolved by the caller when ``uses_p`` said so

    @property
    def local_part(self) -> str:
        return self.sender.rpartition("@")[0] or "postmaster"

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]

    def value(self, letter: str) -> str:
        letter = letter.lower()
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local_part
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return self.domain
        if letter == "i":
            return dotted_ip(self.ip)
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(self.ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(self.timestamp)
        if letter == "p":
            return self.validated if self.validated is not None else "unknown"
        raise SpfSyntaxError(f"unknown macro letter {letter!r}")


def dotted_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """%{i}: dotted quad, or for IPv6 32 dot-separated nibbles (RFC 7208 7.3).

    XXX: the nibbles are upper-case because the RFC 7208 test suite (v-macro-ip6) expects
    its explanation text that way; DNS names compare case-insensitively, so queries are
    unaffected.
    """
    if ip.version == 4:
        return str(ip)
    return ".".join(ip.exploded.replace(":", "").upper())


def uses_p(text: str) -> bool:
    return any(m.group(1) and m.group(1).lower() == "p" for m in _MACRO.finditer(text))


def _transform(value: str, digits: str, reverse: str, delimiters: str) -> str:
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        count = int(digits)
        if count == 0:
            raise SpfSyntaxError("macro transformer of zero")
        parts = parts[-count:]
    return ".".join(parts)


def expand(text: str, context: MacroContext) -> str:
    """Expand every macro in ``text`` (an explain-string or a macro-string)."""
    out: list[str] = []
    end = 0
    for found in _MACRO.finditer(text):
        out.append(text[end:found.start()])
        end = found.end()
        escape = found.group(0)
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
        else:
            letter = found.group(1)
            value = _transform(context.value(letter), found.group(2), found.group(3),
                               found.group(4))
            # RFC 7208 7.3: upper-case letters are URL-escaped (all but unreserved).
            out.append(quote(value, safe="-._~") if letter.isupper() else value)
    out.append(text[end:])
    return "".join(out)


def expand_domain(text: str, context: MacroContext) -> str:
    """Expand a domain-spec into a query name: no trailing dot, at most 253 characters
    (RFC 7208 7.3: drop labels from the left until it fits)."""
    name = expand(text, context)
    if name.endswith("."):
        name = name[:-1]
    while len(name) > MAX_DOMAIN and "." in name:
        name = name.split(".", 1)[1]
    return name
