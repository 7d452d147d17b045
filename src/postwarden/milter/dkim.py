"""DKIM: sign a message, and verify every DKIM-Signature on one.

Security: everything in a message to verify is untrusted, and so is every key record DNS
returns. A message that cannot be split into header fields and a body is a ``DkimError``
(the caller decides); each signature header and key record is parsed by itself, and any
defect in one becomes that signature's ``permerror``, never an exception. At most
``MAX_SIGNATURES`` signatures are evaluated per message (the rest are reported ``neutral``
unevaluated), so one message cannot make us fetch unbounded keys; all keys are fetched
concurrently within one time budget, and a key the budget ran out on is ``temperror``.
Key names are built only from d= and s= values that pass a strict syntax check. RSA
signatures are made by OpenSSL through ``cryptography`` (constant time, blinded), never by
dkimpy's pure-Python RSA. Private keys never reach a log line or an error message.
Standards: RFC 6376 (DKIM: 3.2 tag lists, 3.4 canonicalization, 3.5 the signature tags,
3.6.1 key records, 3.7 hashes, 5.4 From MUST be signed, 5.4.2 oversigning, 6.1
verification), RFC 8301 (rsa-sha1 not accepted; RSA keys of at least 1024 bits), RFC 8463
(ed25519-sha256: Ed25519 over the SHA-256 of the header data), RFC 8601 2.7.1 (the result
words pass, fail, neutral, temperror, permerror).

Theory of operation
-------------------
Canonicalization and header selection come from dkimpy (``dkim.canonicalization``,
``dkim.select_headers``, ``dkim.util.parse_tag_value``, ``dkim.rfc822_parse``), which are
small, well tested, and pass the RFC 8463 vectors; hashing and public-key operations are
ours, on ``hashlib`` and ``cryptography``, so that results carry a reason instead of a
bare bool and RSA runs in OpenSSL.

Signing builds the tag list ``v a c d [i] q s [t] h bh b``, folds it at spaces (every
space we emit sits where RFC 6376 allows FWS), hashes the header fields named in h=
followed by the signature header with an empty b= and without its final CRLF, signs,
and appends b= in folded chunks. h= lists each header of ``headers`` once per occurrence
in the message, then one more instance of each ``oversign`` name: an instance that does not
exist hashes as nothing (RFC 6376 5.4.2), so a From, Subject or Reply-To added later breaks
the signature.

Verification has three steps so that DNS happens once, concurrently: ``_prepare`` checks
each signature's tags (a result now, or a key name to fetch), the keys are fetched through
the injected ``Resolver`` (via ``KeyCache``), and ``_finish`` checks key, body hash and
signature. Result words: ``fail`` is a signature that does not verify or uses what RFC
8301 forbids (rsa-sha1, RSA under 1024 bits); ``permerror`` is a signature or key record
that cannot be evaluated (syntax, no key, revoked key, expired); ``temperror`` is a DNS
failure or the budget running out; ``neutral`` is a failure under a key in testing mode
(t=y: RFC 6376 3.6.1 says treat it as unsigned) or a signature beyond the limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import functools
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
import dkim.canonicalization  # type: ignore[import-untyped]
import dkim.util  # type: ignore[import-untyped]
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from postwarden.errors import PostwardenError, clip
from postwarden.milter.keys import MIN_RSA_BITS, MIN_SIGNING_BITS, PrivateKey
from postwarden.policy.model import DnsAnswer, Resolver

log = logging.getLogger(__name__)

DEFAULT_SIGNED: tuple[str, ...] = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "resent-date", "resent-from", "resent-sender", "resent-to",
    "resent-cc", "resent-message-id", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)
# RFC 6376 5.4.2 / 8.15: one extra instance of each, so that none can be added later
OVERSIGNED: tuple[str, ...] = (
    "from", "to", "cc", "subject", "date", "reply-to", "message-id", "mime-version",
    "content-type",
)
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MAX_SIGNATURES = 8
FOLD_WIDTH = 76
_DOMAIN = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_WSP = re.compile(rb"\s+")
# RFC 6376 3.4.4 relaxed body canonicalization, as two substitutions: whitespace at line
# ends goes, and a run of whitespace that is not already one space becomes one space.
_HEADER_END = re.compile(rb"(\A|\n)\r?\n")   # the empty line after the header
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb" [\t ]+|\t[\t ]*")


def is_domain_name(text: str) -> bool:
    """Letters, digits, "-" and "_" in labels of 1 to 63 (what d= and s= may hold)."""
    return len(text) <= 253 and _DOMAIN.fullmatch(text) is not None


class DkimError(PostwardenError):
    """A message that cannot be signed or parsed, or a bad signing request."""


class DkimResult(enum.Enum):
    """RFC 8601 2.7.1 result words for dkim=."""

    PASS = "pass"  # noqa: S105 - an RFC 8601 result word, not a password
    FAIL = "fail"
    NEUTRAL = "neutral"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True)
class SignatureResult:
    """The outcome of one DKIM-Signature header field."""

    result: DkimResult
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    reason: str
    identity: str = ""  # i=, when given
    header_b: str = ""  # the first 8 characters of b= (RFC 6008 header.b)
    key_bits: int = 0


@dataclass(frozen=True)
class Message:
    """A message split as DKIM sees it: header fields (raw, CRLF) and the body (CRLF)."""

    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    linesep: bytes


def parse(message: bytes) -> Message:
    """Split ``message`` (LF or CRLF line ends) into header fields and body."""
    first = message.find(b"\n")
    linesep = b"\r\n" if first > 0 and message[first - 1:first] == b"\r" else b"\n"
    # dkimpy's rfc822_parse splits the whole message into lines; only the header needs
    # its parser. The body is what it would give: every LF or CRLF becomes CRLF.
    end = _HEADER_END.search(message)
    head = message if end is None else message[:end.end(1)]
    try:
        headers, _ = dkim.rfc822_parse(head)
    except dkim.MessageFormatError as exc:
        raise DkimError(f"not a message: {clip(str(exc))}") from None
    except IndexError:   # dkimpy, on a first line that is a continuation line
        raise DkimError("not a message: it starts with a folded (indented) line") from None
    body = b"" if end is None else \
        message[end.end():].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return Message(tuple((bytes(n), bytes(v)) for n, v in headers), body, linesep)


def _policy(c: str) -> object:
    try:
        return dkim.canonicalization.CanonicalizationPolicy.from_c_value(c.encode("ascii"))
    except (dkim.canonicalization.InvalidCanonicalizationPolicyError, UnicodeError):
        raise DkimError(f"c={clip(c)}: unknown canonicalization") from None


def _canonical_body(policy: object, body: bytes) -> bytes:
    """The body as ``policy`` canonicalizes it; the relaxed case without dkimpy's
    per-call overhead (the same bytes, checked against dkimpy by a property test)."""
    if policy.body_algorithm is dkim.canonicalization.Relaxed:  # type: ignore[attr-defined]
        body = _WSP_RUN.sub(b" ", _TRAILING_WSP.sub(b"\r\n", body))
        return bytes(dkim.canonicalization.correct_empty_body(
            dkim.canonicalization.strip_trailing_lines(body)))
    return bytes(policy.canonicalize_body(body))  # type: ignore[attr-defined]


def _body_hash(policy: object, body: bytes, length: int | None = None) -> bytes:
    canonical = _canonical_body(policy, body)
    if length is not None:
        if length > len(canonical):
            raise DkimError(f"l={length} is longer than the canonical body")
        canonical = canonical[:length]
    return hashlib.sha256(canonical).digest()


def _select(headers: Sequence[tuple[bytes, bytes]], names: Sequence[str]
            ) -> list[tuple[bytes, bytes]]:
    """RFC 6376 5.4.2: for each name in h=, the last instance of that field not yet
    taken (from the bottom up); a name with none left selects nothing."""
    left: dict[bytes, list[int]] = {}
    for index, (field, _) in enumerate(headers):
        left.setdefault(field.lower(), []).append(index)
    selected = []
    for name in names:
        found = left.get(name.lower().encode("ascii", "replace"))
        if found:
            selected.append(headers[found.pop()])
    return selected


def _header_data(policy: object, headers: Sequence[tuple[bytes, bytes]], names: Sequence[str],
                 signature: tuple[bytes, bytes]) -> bytes:
    """RFC 6376 3.7: the selected fields, then the signature field with b= empty, no CRLF."""
    selected = _select(headers, names)
    stripped = (signature[0], dkim.RE_BTAG.sub(b"\\1", signature[1]))
    canonical = policy.canonicalize_headers(  # type: ignore[attr-defined]
        [list(h) for h in selected] + [list(stripped)])
    parts = [bytes(n) + b":" + bytes(v) for n, v in canonical[:-1]]
    name, value = canonical[-1]
    parts.append(bytes(name) + b":" + bytes(value).rstrip())
    return b"".join(parts)


def _within(identity: str, domain: str) -> bool:
    """RFC 6376 3.5 i=: the domain of the identity is d= or a subdomain of it."""
    ident = identity.rpartition("@")[2].lower().rstrip(".")
    d = domain.lower().rstrip(".")
    return ident == d or ident.endswith("." + d)


def _fold(tokens: Iterable[str], start: int) -> str:
    """Join ``tokens`` with spaces, breaking lines (CRLF SP) before FOLD_WIDTH."""
    out: list[str] = []
    column = start
    for token in tokens:
        if out and column + 1 + len(token) > FOLD_WIDTH:
            out.append("\r\n " + token)
            column = 1 + len(token)
        else:
            out.append((" " if out or start else "") + token)
            column += len(token) + 1
    return "".join(out)


def _h_list(headers: Sequence[tuple[bytes, bytes]], names: Sequence[str],
            oversign: Sequence[str]) -> list[str]:
    present: dict[str, int] = {}
    for raw, _ in headers:
        key = raw.decode("ascii", "replace").lower()
        present[key] = present.get(key, 0) + 1
    listed: list[str] = []
    for name in dict.fromkeys(n.lower() for n in names):
        listed += [name] * present.get(name, 0)
    listed += list(dict.fromkeys(n.lower() for n in oversign))
    return listed


def sign(message: bytes, *, domain: str, selector: str, key: PrivateKey,
         headers: Sequence[str] = DEFAULT_SIGNED, oversign: Sequence[str] = OVERSIGNED,
         canonicalization: tuple[str, str] = ("relaxed", "relaxed"),
         timestamp: bool | int = True, identity: str | None = None) -> bytes:
    """The ``DKIM-Signature:`` header field (with the message's line ends) to prepend."""
    for label, value in (("domain", domain), ("selector", selector)):
        if not is_domain_name(value):
            raise DkimError(f"{label} {clip(value)!r}: not a domain name")
    if identity is not None and (not identity.isascii() or not _within(identity, domain)):
        raise DkimError("identity: must be within the signing domain (RFC 6376 3.5 i=)")
    parsed = parse(message)
    if not any(n.lower() == b"from" for n, _ in parsed.headers):
        raise DkimError("message has no From header field (RFC 6376 5.4: From is signed)")
    c = "/".join(canonicalization)
    policy = _policy(c)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = "ed25519-sha256"
    elif isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_SIGNING_BITS:
            raise DkimError(f"RSA key of {key.key_size} bits: postwarden signs with 2048 "
                            "bits or more (RFC 8301 3.2)")
        algorithm = "rsa-sha256"
    else:
        raise DkimError("key: not an RSA or Ed25519 private key")
    names = _h_list(parsed.headers, ["from", *headers], oversign)
    bh = base64.b64encode(_body_hash(policy, parsed.body)).decode("ascii")
    tags = [f"v=1; a={algorithm}; c={c}; d={domain};"]
    if identity is not None:
        tags.append(f"i={identity};")
    tags += ["q=dns/txt;", f"s={selector};"]
    if timestamp is not False:
        when = int(time.time()) if timestamp is True else int(timestamp)
        tags.append(f"t={when};")
    h_words = " : ".join(names).split(" ")
    tags += ["h=" + h_words[0], *h_words[1:-1], h_words[-1] + ";"] if len(h_words) > 1 \
        else [f"h={h_words[0]};"]
    tags += [f"bh={bh};", "b="]
    name = "DKIM-Signature"
    value = _fold(tags, len(name) + 1)
    data = _header_data(policy, parsed.headers, names, (name.encode(), value.encode("ascii")))
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(hashlib.sha256(data).digest())  # RFC 8463 3
    else:
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    b = base64.b64encode(raw).decode("ascii")
    column = len(f"{name}:{value}".rpartition("\n")[2])
    first = max(FOLD_WIDTH - column, 8)
    chunks = [b[:first]] + [b[i:i + 70] for i in range(first, len(b), 70)]
    line = f"{name}:{value}" + "\r\n ".join(chunks) + "\r\n"
    return line.encode("ascii").replace(b"\r\n", parsed.linesep)


class KeyCache:
    """Key records by name, for ``ttl`` seconds, at most ``size`` names (oldest go first).

    Only answers (records, NODATA, NXDOMAIN) are kept; failures are asked again.
    """

    def __init__(self, size: int = 1024, ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._size, self._ttl, self._clock = size, ttl, clock
        self._entries: OrderedDict[str, tuple[float, DnsAnswer]] = OrderedDict()

    def get(self, name: str) -> DnsAnswer | None:
        entry = self._entries.get(name)
        if entry is None or entry[0] < self._clock():
            self._entries.pop(name, None)
            return None
        self._entries.move_to_end(name)
        return entry[1]

    def put(self, name: str, answer: DnsAnswer) -> None:
        if answer.rcode not in ("NOERROR", "NXDOMAIN"):
            return
        self._entries[name] = (self._clock() + self._ttl, answer)
        self._entries.move_to_end(name)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def query(self, resolver: Resolver, name: str) -> DnsAnswer:
        cached = self.get(name)
        if cached is not None:
            return cached
        answer = await resolver.query(name, "TXT")
        self.put(name, answer)
        return answer


@dataclass(frozen=True)
class _Pending:
    """A signature whose tags are fine, waiting for its key."""

    base: SignatureResult
    index: int
    tags: dict[str, str]
    names: tuple[str, ...]
    policy: object
    signature: bytes
    body_hash: bytes
    length: int | None

    @property
    def key_name(self) -> str:
        return f"{self.base.selector}._domainkey.{self.base.domain}".lower()


def _tags(raw: bytes) -> dict[str, str]:
    try:
        parsed = dkim.util.parse_tag_value(raw)
    except dkim.util.InvalidTagValueList as exc:
        raise DkimError(f"RFC 6376 3.2: bad tag list ({type(exc).__name__})") from None
    return {bytes(k).decode("ascii", "replace"): bytes(v).decode("utf-8", "replace")
            for k, v in parsed.items()}


def _b64(text: str, tag: str) -> bytes:
    try:
        return base64.b64decode(_WSP.sub(b"", text.encode("ascii")), validate=True)
    except (binascii.Error, UnicodeError):
        raise DkimError(f"{tag}= is not base64") from None


def _with(base: SignatureResult, result: DkimResult, reason: str,
          key_bits: int = 0) -> SignatureResult:
    return SignatureResult(result, base.domain, base.selector, base.algorithm, reason,
                           base.identity, base.header_b, key_bits or base.key_bits)


def _prepare(message: Message, index: int, now: float) -> SignatureResult | _Pending:
    raw = message.headers[index][1]
    try:
        tags = _tags(raw)
    except DkimError as exc:
        return SignatureResult(DkimResult.PERMERROR, "", "", "", str(exc))
    b_text = re.sub(r"\s+", "", tags.get("b", ""))
    base = SignatureResult(DkimResult.PERMERROR, tags.get("d", ""), tags.get("s", ""),
                           tags.get("a", ""), "", tags.get("i", ""), b_text[:8])
    try:
        return _check_tags(message, index, tags, base, now)
    except DkimError as exc:
        return _with(base, DkimResult.PERMERROR, str(exc))


def _check_tags(message: Message, index: int, tags: dict[str, str], base: SignatureResult,
                now: float) -> SignatureResult | _Pending:
    if tags.get("v") != "1":
        raise DkimError("RFC 6376 3.5: v= missing or not 1")
    missing = [t for t in ("a", "b", "bh", "d", "h", "s") if t not in tags]
    if missing:
        raise DkimError(f"RFC 6376 3.5: missing {', '.join(t + '=' for t in missing)}")
    if tags["a"] == "rsa-sha1":
        return _with(base, DkimResult.FAIL, "RFC 8301 3.1: rsa-sha1 is not accepted")
    if tags["a"] not in ALGORITHMS:
        raise DkimError(f"RFC 6376 3.5: unknown algorithm a={clip(tags['a'])}")
    domain, selector = tags["d"], tags["s"]
    if not is_domain_name(domain) or not is_domain_name(selector):
        raise DkimError("RFC 6376 3.5: d= or s= is not a domain name")
    names = tuple(n.strip().lower() for n in re.sub(r"\s+", "", tags["h"]).split(":"))
    if "" in names:
        raise DkimError("RFC 6376 3.5: empty name in h=")
    if "from" not in names:
        raise DkimError("RFC 6376 5.4: From is not signed")
    if "i" in tags and not _within(tags["i"], domain):
        raise DkimError("RFC 6376 3.5: i= is not within d=")
    if "q" in tags and "dns/txt" not in [q.strip() for q in tags["q"].split(":")]:
        raise DkimError("RFC 6376 3.5: q= has no dns/txt")
    length = None
    if "l" in tags:
        if not tags["l"].isdigit() or len(tags["l"]) > 76:
            raise DkimError("RFC 6376 3.5: l= is not a number")
        length = int(tags["l"])
    for tag in ("t", "x"):
        if tag in tags and (not tags[tag].isdigit() or len(tags[tag]) > 12):
            raise DkimError(f"RFC 6376 3.5: {tag}= is not a number")
    if "x" in tags:
        if "t" in tags and int(tags["x"]) < int(tags["t"]):
            raise DkimError("RFC 6376 3.5: x= is before t=")
        if int(tags["x"]) < now:
            raise DkimError("RFC 6376 3.5: signature expired (x=)")
    signature = _b64(tags["b"], "b")
    body_hash = _b64(tags["bh"], "bh")
    policy = _policy(tags.get("c", "simple/simple"))
    return _Pending(base, index, tags, names, policy, signature, body_hash, length)


@functools.lru_cache(maxsize=1024)
def _public_key(record: str, algorithm: str) -> tuple[rsa.RSAPublicKey |
                                                     ed25519.Ed25519PublicKey, frozenset[str]]:
    """Parse one key record (RFC 6376 3.6.1); the key and its t= flags. Cached: a busy
    sender's key is parsed once, not once per message (errors are not cached)."""
    tags = _tags(record.encode("utf-8"))
    if "v" in tags and tags["v"] != "DKIM1":
        raise DkimError("RFC 6376 3.6.1: key record v= is not DKIM1")
    kind = tags.get("k", "rsa")
    if kind != algorithm.partition("-")[0]:
        raise DkimError(f"RFC 6376 3.6.1: key type k={clip(kind)} does not fit a={algorithm}")
    if "h" in tags and "sha256" not in [h.strip() for h in tags["h"].split(":")]:
        raise DkimError("RFC 6376 3.6.1: key does not allow sha256 (h=)")
    if "s" in tags and not {"*", "email"} & {s.strip() for s in tags["s"].split(":")}:
        raise DkimError("RFC 6376 3.6.1: key is not for email (s=)")
    if "p" not in tags:
        raise DkimError("RFC 6376 3.6.1: key record has no p=")
    data = _b64(tags["p"], "p")
    if not data:
        raise DkimError("RFC 6376 3.6.1: key revoked (empty p=)")
    flags = frozenset(f.strip() for f in tags.get("t", "").split(":"))
    if kind == "ed25519":
        if len(data) != 32:
            raise DkimError("RFC 8463 4: Ed25519 p= is not 32 octets")
        return ed25519.Ed25519PublicKey.from_public_bytes(data), flags
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise DkimError("RFC 6376 3.6.1: p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise DkimError("RFC 6376 3.6.1: p= is not an RSA public key")
    return key, flags


def _finish(message: Message, pending: _Pending, answer: DnsAnswer) -> SignatureResult:
    base, name = pending.base, pending.key_name
    if answer.rcode not in ("NOERROR", "NXDOMAIN"):
        return _with(base, DkimResult.TEMPERROR, f"key query {name}: {answer.rcode}")
    if not answer.records:
        return _with(base, DkimResult.PERMERROR, f"RFC 6376 6.1.2: no key at {name}")
    problems: list[str] = []
    for record in answer.records:
        try:
            key, flags = _public_key(record, base.algorithm)
            break
        except DkimError as exc:
            problems.append(str(exc))
    else:
        return _with(base, DkimResult.PERMERROR, problems[0])
    bits = key.key_size if isinstance(key, rsa.RSAPublicKey) else 256
    result = _crypto(message, pending, key, flags)
    if "y" in flags and result.result is not DkimResult.PASS:
        # RFC 6376 3.6.1 t=y: treat as unsigned, whatever the verification said
        return _with(base, DkimResult.NEUTRAL, f"key in testing mode (t=y): {result.reason}",
                     bits)
    return _with(base, result.result, result.reason, bits)


def _crypto(message: Message, pending: _Pending, key: rsa.RSAPublicKey |
            ed25519.Ed25519PublicKey, flags: frozenset[str]) -> SignatureResult:
    base = pending.base
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return _with(base, DkimResult.FAIL,
                     f"RFC 8301 3.2: RSA key of {key.key_size} bits is too short")
    if "s" in flags and "i" in pending.tags and \
            pending.tags["i"].rpartition("@")[2].lower() != base.domain.lower():
        return _with(base, DkimResult.PERMERROR, "RFC 6376 3.6.1 t=s: i= domain is not d=")
    try:
        body_hash = _body_hash(pending.policy, message.body, pending.length)
    except DkimError as exc:
        return _with(base, DkimResult.PERMERROR, str(exc))
    if body_hash != pending.body_hash:
        return _with(base, DkimResult.FAIL, "body hash mismatch (bh=)")
    data = _header_data(pending.policy, message.headers, pending.names,
                        message.headers[pending.index])
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(pending.signature, hashlib.sha256(data).digest())
        else:
            key.verify(pending.signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return _with(base, DkimResult.FAIL, "signature did not verify (b=)")
    return _with(base, DkimResult.PASS, "good signature")


async def _fetch(names: Iterable[str], resolver: Resolver, cache: KeyCache,
                 budget: float) -> dict[str, DnsAnswer]:
    cached = {name: cache.get(name) for name in names}
    if all(answer is not None for answer in cached.values()):
        return {name: answer for name, answer in cached.items() if answer is not None}
    tasks = {name: asyncio.ensure_future(cache.query(resolver, name)) for name in cached}
    answers: dict[str, DnsAnswer] = {}
    if not tasks:
        return answers
    try:
        await asyncio.wait(tasks.values(), timeout=budget)
    finally:
        for task in tasks.values():
            task.cancel()
    for name, task in tasks.items():
        if not task.done() or task.cancelled():
            answers[name] = DnsAnswer("TIMEOUT")
        elif task.exception() is not None:
            log.warning("dkim: key query %s failed: %r", name, task.exception())
            answers[name] = DnsAnswer("SERVFAIL")
        else:
            answers[name] = task.result()
    return answers


async def verify(message: bytes, resolver: Resolver, *, budget: float = 10.0,
                 cache: KeyCache | None = None, now: float | None = None,
                 ) -> list[SignatureResult]:
    """One result per DKIM-Signature header field, top to bottom."""
    parsed = parse(message)
    moment = time.time() if now is None else now
    indexes = [i for i, (n, _) in enumerate(parsed.headers) if n.lower() == b"dkim-signature"]
    prepared: list[SignatureResult | _Pending] = []
    for count, index in enumerate(indexes):
        outcome = _prepare(parsed, index, moment)
        if count >= MAX_SIGNATURES:
            base = outcome.base if isinstance(outcome, _Pending) else outcome
            outcome = _with(base, DkimResult.NEUTRAL,
                            f"not evaluated: more than {MAX_SIGNATURES} signatures")
        prepared.append(outcome)
    names = dict.fromkeys(p.key_name for p in prepared if isinstance(p, _Pending))
    answers = await _fetch(names, resolver, cache or KeyCache(), budget)
    return [p if isinstance(p, SignatureResult) else _finish(parsed, p, answers[p.key_name])
            for p in prepared]
