"""Authentication-Results (RFC 8601) written and read; policyd's SPF header; ARC sets.

Security: every header field read here comes from the message (the sender) or from an
upstream MTA and is untrusted. Readers never raise on any bytes: they decode with
replacement, bound the field length (``MAX_FIELD``), the number of items and the comment
depth, and answer None (or an ``ArcChain`` with ``problems``) for what they cannot parse.
The writer takes outside data (``d=``, ``s=``, ``b=``, From and MAIL FROM domains, reasons)
and can never produce a broken or extra header field: every character outside printable
US-ASCII becomes ``?``, each value is either a plain token or a quoted-string with ``\\``
and ``"`` escaped, values are cut to ``MAX_VALUE`` characters, and method, result and
property names that are not keywords are dropped. An SPF result is believed only from the
header policyd PREPENDs: the topmost SPF-bearing field above the first ``Received:``
field, carrying our authserv-id (A-R) or ``receiver=`` (Received-SPF), and, when the
envelope sender is given, naming the same domain (the CVE-2019-20790 lesson).
Standards: RFC 8601 2.2-2.7 (syntax, authserv-id, version, result words, ptypes), 5
(removing fields that claim our authserv-id); RFC 7208 9.1 (Received-SPF); RFC 8617 4.1
(ARC sets: ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, ``i=``, ``cv=``),
5.1.1 (at most 50 sets); RFC 5322 2.1.1 (78-character lines), 2.2.3 (folding); RFC 2045
5.1 (token); Postfix smtpd.c (PREPENDed headers come before smtpd's own Received:).

Theory of operation
-------------------
``header_value`` lays the value out as words: the authserv-id, then per method
``method=result``, ``reason="..."`` (split at its spaces) and ``ptype.property=value``;
a ``;`` ends each method but the last. Words are joined by single spaces, and a line that
would pass 78 characters (counting ``Authentication-Results: `` on the first) is folded by
putting a line break before the joining space, so unfolding gives back the one-line value
exactly. ``parse_value`` tokenizes a received value (comments skipped, quoted strings
unquoted) into the authserv-id and its ``Method`` s; ``authserv_id_of`` and ``claims`` are
built on it, and ``claims`` also catches values that only start like ours, since a
downstream reader may be more lenient than this parser.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from postwarden.milter.dmarc import AuthOutcome

__all__ = ["AR_FIELD", "ArcChain", "ArcInstance", "Method", "authserv_id_of", "claims",
           "header_value", "parse_arc", "parse_received_spf", "parse_value",
           "policyd_spf_index", "quote_value", "spf_from_headers"]

AR_FIELD = "Authentication-Results"
LINE = 78                 # RFC 5322 2.1.1: lines SHOULD be at most 78 characters
MAX_VALUE = 255           # characters of one property value or authserv-id written
MAX_REASON = 300          # characters of a reason written
MAX_FIELD = 16_384        # characters of one received field looked at
MAX_TOKENS = 2_000        # tokens of one received field looked at
MAX_DEPTH = 20            # nesting of comments
MAX_ARC = 50              # RFC 8617 5.1.1: at most 50 ARC sets
RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror",
                     "permerror", "policy", "hardfail"})

_KEYWORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?\Z")
_PTYPES = frozenset({"smtp", "header", "body", "policy"})
# RFC 2045 token: printable ASCII but SPACE and tspecials ()<>@,;:\"/[]?=
_TOKEN = re.compile(r"[!#$%&'*+.0-9A-Z^_`a-z{|}~-]+\Z")
# RFC 8601 pvalue also allows [local-part] "@" domain-name
_ADDRESS = re.compile(r"[!#$%&'*+/=?^_`{|}~.0-9A-Za-z-]*@[0-9A-Za-z](?:[0-9A-Za-z.-]*"
                      r"[0-9A-Za-z])?\Z")


@dataclass(frozen=True)
class Method:
    """One ``method=result`` of an Authentication-Results field."""

    method: str
    result: str
    reason: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # (("header.d", "example.org"), ...)

    def get(self, name: str) -> str | None:
        """The first value of property ``name`` (``ptype.property``, any case)."""
        wanted = name.lower()
        return next((v for k, v in self.properties if k.lower() == wanted), None)


# -- writing -------------------------------------------------------------------------------

def _printable(text: str, limit: int) -> str:
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text[:limit]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_value(text: str, *, address: bool = False) -> str:
    """An RFC 8601 ``value`` (``pvalue`` with ``address``): bare when it is a token (or an
    address), else a quoted-string; printable ASCII only, at most ``MAX_VALUE`` long."""
    text = _printable(text, MAX_VALUE)
    if text and (_TOKEN.match(text) or (address and _ADDRESS.match(text))):
        return text
    return _quoted(text)


def _method_words(method: Method) -> list[str] | None:
    name, result = method.method.strip(), method.result.strip().lower()
    if not _KEYWORD.match(name) or not _KEYWORD.match(result):
        return None
    words = [f"{name.lower()}={result}"]
    if method.reason:
        reason = _quoted(_printable(method.reason, MAX_REASON))
        words.append("reason=" + reason.split(" ")[0])
        words.extend(reason.split(" ")[1:])
    for key, value in method.properties:
        ptype, dot, prop = key.strip().partition(".")
        if not dot or ptype.lower() not in _PTYPES or not _KEYWORD.match(prop):
            continue
        words.append(f"{ptype.lower()}.{prop}={quote_value(value, address=True)}")
    return words


def _fold(words: Sequence[str], first: int, linesep: str) -> str:
    lines: list[str] = []
    line = ""
    used = first
    for word in words:
        if not line:
            line = word
        elif used + len(line) + 1 + len(word) <= LINE:
            line += " " + word
        else:
            lines.append(line)
            line, used = " " + word, 0   # the joining space starts the next line
    lines.append(line)
    return linesep.join(lines)


def header_value(authserv_id: str, methods: Sequence[Method], *,
                 field_name: str = AR_FIELD, linesep: str = "\n") -> str:
    """The value of an Authentication-Results field, folded at 78 characters.

    ``methods`` with a method or result that is not a keyword are left out; with none
    left the value says ``none`` (RFC 8601 2.2, no-result). Lines are joined with
    ``linesep`` followed by a space (the milter protocol takes ``\\n``).
    """
    words = [quote_value(authserv_id) + ";"]
    groups = [w for w in (_method_words(m) for m in methods) if w]
    if not groups:
        words.append("none")
    for index, group in enumerate(groups):
        if index < len(groups) - 1:
            group = [*group[:-1], group[-1] + ";"]
        words.extend(group)
    return _fold(words, len(field_name) + 2, linesep)


# -- reading -------------------------------------------------------------------------------

def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return text[:MAX_FIELD]


_SPECIALS = frozenset(";=/")


_Token = tuple[str, str, int, int]   # kind, text, start, end


def _tokens(text: str) -> list[_Token] | None:
    """``(kind, text, start, end)`` tokens: ``word``, ``quoted`` or a special ``; = /``.
    Comments and whitespace are skipped. None for an unterminated comment or quoted
    string."""
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n and len(tokens) < MAX_TOKENS:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, i = 1, i + 1
            while i < n and depth:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                    if depth > MAX_DEPTH:
                        return None
                elif text[i] == ")":
                    depth -= 1
                i += 1
            if depth:
                return None
        elif c == '"':
            start = i
            out, i = [], i + 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                if text[i] not in "\r\n":
                    out.append(text[i])
                i += 1
            if i >= n:
                return None
            i += 1
            tokens.append(("quoted", "".join(out), start, i))
        elif c in _SPECIALS:
            tokens.append((c, c, i, i + 1))
            i += 1
        else:
            start = i
            while i < n and text[i] not in ' \t\r\n();=/"':
                i += 1
            tokens.append(("word", text[start:i], start, i))
    return tokens


def _value_at(tokens: list[_Token], position: int) -> tuple[str, int] | None:
    """The value starting at ``tokens[position]`` and the position after it. A bare value
    runs on over ``=`` and ``/`` written without spaces (``bounce+x=y@example.com``)."""
    if position >= len(tokens) or tokens[position][0] not in ("word", "quoted"):
        return None
    if tokens[position][0] == "quoted":
        return tokens[position][1], position + 1
    text, end = tokens[position][1], tokens[position][3]
    position += 1
    while position < len(tokens) and tokens[position][2] == end \
            and tokens[position][0] in ("word", "=", "/"):
        text += tokens[position][1]
        end = tokens[position][3]
        position += 1
    return text, position


def _resinfo(tokens: list[_Token]) -> Method | None:
    """One ``methodspec [reasonspec] *propspec`` (tokens between two ``;``)."""
    if len(tokens) < 3 or tokens[0][0] != "word":
        return None
    position = 1
    if tokens[1][0] == "/":   # method "/" version
        if len(tokens) < 5 or not tokens[2][1].isdigit():
            return None
        position = 3
    if tokens[position][0] != "=" or position + 1 >= len(tokens) \
            or tokens[position + 1][0] != "word":
        return None
    method, result = tokens[0][1].lower(), tokens[position + 1][1].lower()
    reason = ""
    properties: list[tuple[str, str]] = []
    position += 2
    while position + 2 < len(tokens) and tokens[position][0] == "word" \
            and tokens[position + 1][0] == "=":
        found = _value_at(tokens, position + 2)
        if found is None:
            break
        key, (value, position) = tokens[position][1], found
        if key.lower() == "reason" and not reason and not properties:
            reason = value
        elif "." in key:
            properties.append((key.lower(), value))
    return Method(method, result, reason, tuple(properties))


def parse_value(value: bytes | str) -> tuple[str, tuple[Method, ...]] | None:
    """The authserv-id and the methods of a received A-R value, or None if the value
    does not even start with an authserv-id. Results that cannot be parsed are skipped."""
    tokens = _tokens(_text(value))
    if not tokens or tokens[0][0] not in ("word", "quoted") or not tokens[0][1]:
        return None
    authserv_id = tokens[0][1]
    rest = tokens[1:]
    if rest and rest[0][0] == "word" and rest[0][1].isdigit():
        rest = rest[1:]   # RFC 8601 2.2: authres-version
    if rest and rest[0][0] != ";":
        return None
    groups: list[list[_Token]] = [[]]
    for token in rest[1:]:
        if token[0] == ";":
            groups.append([])
        else:
            groups[-1].append(token)
    methods = tuple(m for m in (_resinfo(g) for g in groups) if m is not None)
    return authserv_id, methods


def authserv_id_of(value: bytes | str) -> str | None:
    """The authserv-id of a received A-R value, or None if it cannot be parsed."""
    parsed = parse_value(value)
    return parsed[0] if parsed else None


def _starts_like(value: bytes | str, authserv_id: str) -> bool:
    """Whether the value, comments and quotes aside, starts with ``authserv_id`` followed
    by something no domain continues with: what a lenient reader might see as ours."""
    text = re.sub(r"\([^()]*\)", " ", _text(value)).replace('"', " ").strip().lower()
    wanted = authserv_id.strip().lower()
    if not wanted or not text.startswith(wanted):
        return False
    after = text[len(wanted):len(wanted) + 1]
    return after == "" or not (after.isalnum() or after in ".-_")


def claims(value: bytes | str, authserv_id: str) -> bool:
    """Whether this A-R value claims to come from ``authserv_id`` (case-insensitive): the
    forgery check of RFC 8601 5. Unparseable values that merely start like ours count."""
    if not authserv_id.strip():
        return False
    found = authserv_id_of(value)
    if found is not None:
        return found.lower() == authserv_id.strip().lower()
    return _starts_like(value, authserv_id)


# -- policyd's SPF header ------------------------------------------------------------------

def _domain_of(identity: str) -> str:
    return identity.strip().strip("<>").rpartition("@")[2].strip().strip(".").lower()


def parse_received_spf(value: bytes | str) -> tuple[str, dict[str, str]] | None:
    """The result word (lower case) and the key-value pairs of a Received-SPF value
    (RFC 7208 9.1), or None."""
    tokens = _tokens(_text(value))
    if not tokens or tokens[0][0] != "word":
        return None
    result = tokens[0][1].lower()
    if result not in RESULTS:
        return None
    pairs: dict[str, str] = {}
    position = 1
    while position + 2 < len(tokens) and tokens[position][0] == "word" \
            and tokens[position + 1][0] == "=":
        found = _value_at(tokens, position + 2)
        if found is None:
            break
        key, (value, position) = tokens[position][1], found
        pairs.setdefault(key.lower(), value)
        if position < len(tokens) and tokens[position][0] == ";":
            position += 1
    return result, pairs


def _from_received_spf(value: bytes, authserv_id: str) -> AuthOutcome | None:
    parsed = parse_received_spf(value)
    if parsed is None:
        return None
    result, pairs = parsed
    if pairs.get("receiver", "").lower() != authserv_id.lower():
        return None
    identity = pairs.get("identity", "").lower()
    if identity == "mailfrom":
        domain = _domain_of(pairs.get("envelope-from", ""))
        return AuthOutcome(domain, result, scope="mfrom") if domain else None
    if identity == "helo":
        domain = _domain_of(pairs.get("helo", ""))
        return AuthOutcome(domain, result, scope="helo") if domain else None
    return None


def _from_ar(value: bytes, authserv_id: str) -> AuthOutcome | None:
    parsed = parse_value(value)
    if parsed is None or parsed[0].lower() != authserv_id.lower():
        return None
    for method in parsed[1]:
        if method.method != "spf":
            continue
        mailfrom, helo = method.get("smtp.mailfrom"), method.get("smtp.helo")
        if mailfrom:
            return AuthOutcome(_domain_of(mailfrom), method.result, scope="mfrom")
        if helo:
            return AuthOutcome(_domain_of(helo), method.result, scope="helo")
    return None


def _spf_header(headers: Sequence[tuple[bytes, bytes]], authserv_id: str
                ) -> tuple[int, AuthOutcome] | None:
    if not authserv_id.strip():
        return None
    for index, (name, value) in enumerate(headers[:200]):
        key = name.decode("ascii", "replace").strip().lower()
        if key == "received":
            return None   # below smtpd's own Received: everything is the sender's
        if key == "received-spf":
            outcome = _from_received_spf(value, authserv_id)
        elif key == AR_FIELD.lower():
            outcome = _from_ar(value, authserv_id)
        else:
            continue
        return (index, outcome) if outcome is not None else None
    return None


def policyd_spf_index(headers: Sequence[tuple[bytes, bytes]],
                      authserv_id: str) -> int | None:
    """The index in ``headers`` of the field ``spf_from_headers`` believes, or None (so the
    caller can remove forged A-R fields claiming our authserv-id and keep this one)."""
    found = _spf_header(headers, authserv_id)
    return found[0] if found else None


def spf_from_headers(headers: Sequence[tuple[bytes, bytes]], authserv_id: str, *,
                     envelope_from: str | None = None) -> AuthOutcome | None:
    """The SPF outcome policyd PREPENDed (see the module docstring), or None.

    ``headers`` are (name, value) in message order. Only the topmost Received-SPF or
    Authentication-Results field above the first Received: field is looked at; it counts
    when it names ``authserv_id`` (A-R authserv-id, Received-SPF ``receiver=``). With
    ``envelope_from`` (the MAIL FROM address, "" for the null sender) an ``mfrom`` outcome
    must name its domain.
    """
    try:
        found = _spf_header(headers, authserv_id)
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    if found is None:
        return None
    outcome = found[1]
    if envelope_from is not None and outcome.scope == "mfrom" \
            and outcome.domain != _domain_of(envelope_from):
        return None
    return outcome


# -- ARC -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArcInstance:
    """One ARC set (RFC 8617 4.1): the three fields sharing one ``i=``."""

    instance: int
    cv: str = ""                                    # ARC-Seal cv= ("none" | "pass" | "fail")
    seal: tuple[tuple[str, str], ...] = ()          # ARC-Seal tags in order
    signature: tuple[tuple[str, str], ...] = ()     # ARC-Message-Signature tags in order
    results: str = ""                               # ARC-Authentication-Results after i=N;
    complete: bool = False                          # all three fields present, once each


@dataclass(frozen=True)
class ArcChain:
    """The ARC sets of a message, lowest ``i=`` first, and what is wrong with them.

    Parsing only: signatures are not verified here. ``structure_ok`` says the sets are
    1..N, complete, unique, with ``cv=none`` at 1 and ``cv=pass`` above (RFC 8617 5.2,
    the structural steps).
    """

    instances: tuple[ArcInstance, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        return bool(self.instances) or bool(self.problems)

    @property
    def structure_ok(self) -> bool:
        return bool(self.instances) and not self.problems

    @property
    def claimed_cv(self) -> str:
        """The ``cv=`` the newest ARC-Seal claims ("" when there is none)."""
        return self.instances[-1].cv if self.instances else ""


_ARC_FIELDS = {"arc-seal": "seal", "arc-message-signature": "signature",
               "arc-authentication-results": "results"}


def _tag_list(text: str) -> tuple[tuple[str, str], ...] | None:
    """DKIM-style ``tag=value`` list (RFC 6376 3.2), whitespace removed; None if bad."""
    pairs: list[tuple[str, str]] = []
    for part in text.split(";")[:64]:
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            return None
        pairs.append((name, re.sub(r"[ \t\r\n]+", "", value)))
    return tuple(pairs)


def _instance_number(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or len(text) > 3:
        return None
    number = int(text)
    return number if number >= 1 else None


def _arc_field(kind: str, text: str) -> tuple[int, tuple[tuple[str, str], ...], str] | None:
    if kind == "results":
        head, sep, rest = text.partition(";")
        name, eq, value = head.strip().partition("=")
        number = _instance_number(value) if eq and name.strip() == "i" and sep else None
        return (number, (), rest.strip()) if number else None
    tags = _tag_list(text)
    if tags is None:
        return None
    values = [v for k, v in tags if k == "i"]
    number = _instance_number(values[0]) if len(values) == 1 else None
    return (number, tags, "") if number else None


@dataclass
class _Slot:
    seal: tuple[tuple[str, str], ...] | None = None
    signature: tuple[tuple[str, str], ...] | None = None
    results: str | None = None


def _chain(headers: Sequence[tuple[bytes, bytes]]) -> ArcChain:
    slots: dict[int, _Slot] = {}
    problems: list[str] = []
    for name, value in headers[:1000]:
        kind = _ARC_FIELDS.get(name.decode("ascii", "replace").strip().lower())
        if kind is None:
            continue
        parsed = _arc_field(kind, _text(value))
        if parsed is None:
            problems.append(f"unparseable {kind} field")
            continue
        number, tags, results = parsed
        if number > MAX_ARC:
            problems.append(f"i={number}: more than {MAX_ARC} ARC sets")
            continue
        slot = slots.setdefault(number, _Slot())
        if getattr(slot, kind) is not None:
            problems.append(f"i={number}: more than one {kind} field")
        elif kind == "results":
            slot.results = results
        elif kind == "seal":
            slot.seal = tags
        else:
            slot.signature = tags
    instances: list[ArcInstance] = []
    for number in sorted(slots):
        slot = slots[number]
        cv = next((v.lower() for k, v in slot.seal or () if k == "cv"), "")
        complete = None not in (slot.seal, slot.signature, slot.results)
        if not complete:
            problems.append(f"i={number}: incomplete ARC set")
        expected = "none" if number == 1 else "pass"
        if slot.seal is not None and cv != expected:
            problems.append(f"i={number}: cv={cv or '(missing)'}, expected {expected}")
        instances.append(ArcInstance(number, cv, slot.seal or (), slot.signature or (),
                                     slot.results or "", complete))
    if instances and [i.instance for i in instances] != list(range(1, len(instances) + 1)):
        problems.append("ARC set numbers are not 1..N")
    return ArcChain(tuple(instances), tuple(problems))


def parse_arc(headers: Sequence[tuple[bytes, bytes]]) -> ArcChain:
    """The ARC sets among ``headers`` ((name, value) pairs). Never raises."""
    try:
        return _chain(headers)
    except Exception as exc:  # a hostile header must never break the milter
        return ArcChain((), (f"ARC headers unreadable: {type(exc).__name__}",))
