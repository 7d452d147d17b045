"""SPF records as text -> typed terms, and the syntax of macro strings (no DNS, no I/O).

Security: a record is untrusted text from DNS. Parsing is a single pass over at most
``MAX_RECORD`` characters with anchored regular expressions (no backtracking blow-up);
anything outside the RFC 7208 grammar (control characters, non-ASCII, unknown mechanisms,
bad CIDR lengths, duplicate ``redirect``/``exp``) is an ``SpfSyntaxError``, which the
evaluator turns into "permerror" before any term is evaluated.
Standards: RFC 7208 4.5 (record selection), 4.6.1 (term syntax), 5 (mechanisms and their
CIDR lengths), 6 (modifiers), 7.1 (macro-string grammar), 12 (collected ABNF).

Theory of operation
-------------------
RFC 7208 4.6 says a record with a syntax error anywhere is a permerror as a whole, so the
whole record is parsed first into ``Record`` (directives in order, plus the ``redirect``
and ``exp`` domain-specs). Domain-specs are kept unexpanded: their macro syntax is checked
here (``check_macro_string``) and they are expanded by ``spf_macro`` at evaluation time,
when the client address, sender and current domain are known.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

MAX_RECORD = 4096  # XXX: RFC 7208 has no limit; a 512-byte UDP answer cannot carry more

VERSION = "v=spf1"


class SpfSyntaxError(ValueError):
    """A record or macro string outside the RFC 7208 grammar (a permerror)."""


class Qualifier(enum.Enum):
    PASS = "+"  # noqa: S105 - an RFC 7208 qualifier, not a password
    FAIL = "-"
    SOFTFAIL = "~"
    NEUTRAL = "?"


@dataclass(frozen=True)
class Directive:
    """One mechanism with its qualifier (RFC 7208 4.6.1)."""

    qualifier: Qualifier
    mechanism: str            # all include a mx ptr ip4 ip6 exists (lowercase)
    domain_spec: str | None   # unexpanded; None means "the current domain"
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128
    text: str = ""            # the term as written, for the log and the header

    @property
    def needs_dns(self) -> bool:
        """RFC 7208 4.6.4: the terms that count toward the 10-lookup limit."""
        return self.mechanism in ("include", "a", "mx", "ptr", "exists")


@dataclass(frozen=True)
class Record:
    directives: tuple[Directive, ...]
    redirect: str | None
    exp: str | None


def is_spf_record(text: str) -> bool:
    """RFC 7208 4.5: "v=spf1" exactly (any case), then a space or the end."""
    head = text[: len(VERSION) + 1]
    return head[: len(VERSION)].lower() == VERSION and (len(head) == len(VERSION)
                                                        or head[-1] == " ")


_MACRO_LITERAL = r"[\x21-\x24\x26-\x7e]"
_MACRO_EXPAND = r"%\{[slodiphcrtvSLODIPHCRTV][0-9]*[rR]?[.\-+,/_=]*\}|%%|%_|%-"
_MACRO_STRING = re.compile(rf"(?:{_MACRO_EXPAND}|{_MACRO_LITERAL})*\Z")
_EXPLAIN_STRING = re.compile(rf"(?:{_MACRO_EXPAND}|{_MACRO_LITERAL}| )*\Z")
_MACRO = re.compile(r"%\{([a-zA-Z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%%|%_|%-")
_TOPLABEL = re.compile(r"(?:[a-zA-Z0-9]*[a-zA-Z][a-zA-Z0-9]*"
                       r"|[a-zA-Z0-9]+-[a-zA-Z0-9-]*[a-zA-Z0-9])\Z")
_NAME = re.compile(r"[a-zA-Z][a-zA-Z0-9\-_.]*\Z")
_MECHANISM = re.compile(r"([+\-~?]?)([a-zA-Z0-9]+)(.*)\Z", re.DOTALL)
_IP4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                  r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\Z")
_CIDR4 = r"(?:/(0|[1-9][0-9]?))?"
_CIDR6 = r"(?://(0|[1-9][0-9]?[0-9]?))?"
_DUAL_CIDR = re.compile(rf"{_CIDR4}{_CIDR6}\Z")

CRT_LETTERS = frozenset("crt")


def check_macro_string(text: str, *, explain: bool = False) -> None:
    """Raise ``SpfSyntaxError`` unless ``text`` is a macro-string (RFC 7208 7.1).

    ``explain`` allows spaces and the c, r and t letters (explain-string, 6.2 and 7.3).
    A digit transformer of zero is an error (7.3: "If a DIGIT is specified, the value
    MUST be nonzero").
    """
    pattern = _EXPLAIN_STRING if explain else _MACRO_STRING
    if not pattern.match(text):
        raise SpfSyntaxError(f"invalid macro string {text!r}")
    for found in _MACRO.finditer(text):
        letter, digits = found.group(1), found.group(2)
        if letter is None:
            continue
        if letter.lower() in CRT_LETTERS and not explain:
            raise SpfSyntaxError(f"macro %{{{letter}}} is allowed in exp= text only")
        if digits and int(digits) == 0:
            raise SpfSyntaxError(f"macro transformer of zero in {text!r}")


def check_domain_spec(text: str) -> None:
    """RFC 7208 7.1: domain-spec = macro-string domain-end; domain-end is a toplabel
    (optionally followed by a dot) or a macro-expand."""
    check_macro_string(text)
    tokens = _TOKEN.findall(text)
    if tokens and tokens[-1].startswith("%"):
        return
    body = text[:-1] if text.endswith(".") else text
    top = body.rsplit(".", 1)
    if len(top) != 2 or not _TOPLABEL.match(top[1]):
        raise SpfSyntaxError(f"domain-spec {text!r} does not end in a top-level label "
                             "or a macro")


_TOKEN = re.compile(rf"{_MACRO_EXPAND}|{_MACRO_LITERAL}")


def parse_record(text: str) -> Record:
    """Parse one record that ``is_spf_record`` selected; raise ``SpfSyntaxError``."""
    if len(text) > MAX_RECORD:
        raise SpfSyntaxError(f"record longer than {MAX_RECORD} characters")
    if not text.isascii() or any(c < " " or c == "\x7f" for c in text):
        raise SpfSyntaxError("record has characters outside printable US-ASCII")
    directives: list[Directive] = []
    modifiers: dict[str, str] = {}
    for term in text[len(VERSION):].split(" "):
        if not term:
            continue
        name, sep, value = term.partition("=")
        if sep and _NAME.match(name):
            _modifier(name.lower(), value, modifiers)
        else:
            directives.append(_directive(term))
    return Record(tuple(directives), modifiers.get("redirect"), modifiers.get("exp"))


def _modifier(name: str, value: str, seen: dict[str, str]) -> None:
    if name in ("redirect", "exp"):
        if name in seen:
            raise SpfSyntaxError(f"{name}= appears more than once")  # RFC 7208 6
        check_domain_spec(value)
        seen[name] = value
    else:
        check_macro_string(value)  # RFC 7208 6: unknown modifiers are ignored, if well-formed


def _directive(term: str) -> Directive:
    found = _MECHANISM.match(term)
    if found is None:
        raise SpfSyntaxError(f"unknown term {term!r}")
    qualifier = Qualifier(found.group(1) or "+")
    name, rest = found.group(2).lower(), found.group(3)
    if name == "all":
        if rest:
            raise SpfSyntaxError(f"'all' takes no arguments: {term!r}")
        return Directive(qualifier, name, None, text=term)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{name} needs a domain: {term!r}")
        check_domain_spec(rest[1:])
        return Directive(qualifier, name, rest[1:], text=term)
    if name == "ptr":
        spec = _optional_spec(rest, term)
        return Directive(qualifier, name, spec, text=term)
    if name in ("a", "mx"):
        return _a_or_mx(qualifier, name, rest, term)
    if name in ("ip4", "ip6"):
        return _ip(qualifier, name, rest, term)
    raise SpfSyntaxError(f"unknown mechanism {term!r}")


def _optional_spec(rest: str, term: str) -> str | None:
    if not rest:
        return None
    if not rest.startswith(":") or len(rest) == 1:
        raise SpfSyntaxError(f"malformed mechanism {term!r}")
    check_domain_spec(rest[1:])
    return rest[1:]


def _a_or_mx(qualifier: Qualifier, name: str, rest: str, term: str) -> Directive:
    # The CIDR suffix is whatever follows the last "/" run that parses as dual-cidr.
    cidr = _DUAL_CIDR.search(rest)
    assert cidr is not None  # the pattern matches the empty string at the end
    spec_text = rest[: cidr.start()]
    cidr4 = int(cidr.group(1)) if cidr.group(1) is not None else 32
    cidr6 = int(cidr.group(2)) if cidr.group(2) is not None else 128
    if cidr4 > 32 or cidr6 > 128:
        raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
    spec = _optional_spec(spec_text, term)
    return Directive(qualifier, name, spec, cidr4=cidr4, cidr6=cidr6, text=term)


def _ip(qualifier: Qualifier, name: str, rest: str, term: str) -> Directive:
    if not rest.startswith(":"):
        raise SpfSyntaxError(f"{name} needs an address: {term!r}")
    address, slash, length = rest[1:].partition("/")
    limit = 32 if name == "ip4" else 128
    if slash and not re.fullmatch(r"0|[1-9][0-9]{0,2}", length):
        raise SpfSyntaxError(f"bad CIDR length in {term!r}")
    prefix = int(length) if slash else limit
    if prefix > limit:
        raise SpfSyntaxError(f"CIDR length out of range in {term!r}")
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    try:
        if name == "ip4":
            if not _IP4.match(address):
                raise ValueError(address)
            network = ipaddress.IPv4Network(f"{address}/{prefix}", strict=False)
        else:
            if "%" in address or "/" in address:
                raise ValueError(address)
            network = ipaddress.IPv6Network(f"{address}/{prefix}", strict=False)
    except ValueError:
        raise SpfSyntaxError(f"bad address in {term!r}") from None
    return Directive(qualifier, name, None, network=network, text=term)
