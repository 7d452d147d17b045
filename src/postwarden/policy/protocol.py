"""The Postfix SMTPD policy delegation protocol as a sans-IO codec: bytes in, requests out.

Security: every byte here comes from the client of the policy service (smtpd, or anything
that can reach the socket). Buffers are bounded: a line may hold at most ``MAX_LINE``
bytes, a request at most ``MAX_REQUEST`` bytes and ``MAX_ATTRIBUTES`` lines, and at most
``MAX_BUFFER`` bytes wait unparsed. NUL bytes, lines without ``=``, empty names and
requests other than ``request=smtpd_access_policy`` are protocol errors. After a
``ProtocolError`` the decoder is dead: every later call raises the same error, so an
adapter cannot go on reading a stream it has lost track of. Replies refuse CR, LF and NUL,
so no action text can forge a second reply line.
Standards: SMTPD_POLICY_README (Postfix 3.7, "Protocol description"); access(5) for the
actions; attr_scan_plain.c for the plain attribute encoding smtpd uses.

Theory of operation
-------------------
1. A request is ``name=value`` lines, each ending in LF (a CR before the LF is dropped, for
   hand-typed tests), closed by an empty line. The reply is ``action=...`` and an empty
   line. smtpd never sends the next request before the reply to the previous one, and an
   adapter reads only when ``next_request()`` has returned None, so the buffer holds at
   most one request plus one read.
2. ``feed`` only appends, and fails early on a line that is already longer than
   ``MAX_LINE`` or a buffer over ``MAX_BUFFER``; ``next_request`` consumes whole lines and
   returns a request when its empty line arrives. Work is linear in the input whatever
   the chunk size.
3. Names and values are decoded as UTF-8 with ``surrogateescape``: with SMTPUTF8 smtpd sends
   UTF-8 addresses, and a byte that is not UTF-8 survives the round trip unchanged.
4. A duplicated attribute: the last one wins (the README allows first-wins or last-wins;
   Postfix never sends duplicates). Unknown attributes are kept and ignored by checks.
5. Limits. Postfix 3.12 sends about 35 attributes; the longest values are the ``ccert_*``
   ones (xtext-encoded X.509 names), a few hundred bytes in practice, and addresses (at
   most 254 + local part 64 by RFC 5321 4.5.3.1). Hence 4096 bytes a line, 64 KiB and 100
   attributes a request: generous for every honest client, small for a hostile one.
"""

from __future__ import annotations

import functools

from postwarden.errors import PostwardenError
from postwarden.policy.model import PolicyRequest

MAX_LINE = 4096            # bytes in one name=value line, without its LF
MAX_REQUEST = 64 * 1024    # bytes in one request, its empty line included
MAX_ATTRIBUTES = 100       # name=value lines in one request
MAX_BUFFER = 2 * MAX_REQUEST  # unparsed bytes waiting in the decoder
REQUEST_NAME = "smtpd_access_policy"


class ProtocolError(PostwardenError):
    """The peer broke the protocol; the connection must be closed without a reply."""


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a reply that cannot be sent)."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class RequestDecoder:
    """Turns a byte stream from smtpd into ``PolicyRequest`` s, one at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._tail = 0                 # bytes after the last LF in the buffer
        self._attributes: dict[str, str] = {}
        self._lines = 0
        self._size = 0                 # bytes of the request being read so far
        self._error: ProtocolError | None = None

    @property
    def in_request(self) -> bool:
        """Whether part of a request has arrived (for telling EOF from a cut request)."""
        return bool(self._buffer) or self._lines > 0

    def feed(self, data: bytes) -> None:
        """Add bytes read from the peer."""
        self._check()
        if len(self._buffer) + len(data) > MAX_BUFFER:
            self._fail(f"more than {MAX_BUFFER} bytes sent without waiting for a reply")
        last = data.rfind(b"\n")
        self._tail = self._tail + len(data) if last < 0 else len(data) - last - 1
        if self._tail > MAX_LINE:
            self._fail(f"line longer than {MAX_LINE} bytes")
        self._buffer += data

    def next_request(self) -> PolicyRequest | None:
        """The next complete request, or None when more bytes are needed."""
        self._check()
        if not self._buffer:
            return None  # (the usual case after a reply: smtpd has not sent again yet)
        fast = self._whole_request()
        if fast is not None:
            return fast
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if end > MAX_LINE:
                self._fail(f"line longer than {MAX_LINE} bytes")
            self._size += end + 1
            if self._size > MAX_REQUEST:
                self._fail(f"request longer than {MAX_REQUEST} bytes")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                return self._finish()
            self._attribute(line)

    def _whole_request(self) -> PolicyRequest | None:
        """The common case in one pass: a whole request of at most MAX_LINE bytes (so no
        line can be too long) with LF line ends, no CR and no NUL, at the start of the
        buffer. Anything else goes the line-by-line way, which names what is wrong."""
        if self._lines:
            return None
        end = self._buffer.find(b"\n\n")
        if end < 0 or end > MAX_LINE:
            return None  # a long request: the line-by-line path checks each line
        block = bytes(self._buffer[:end])
        # (find, not ``in``: for bytes, ``in`` first tries its operand as an integer and
        # makes and drops a TypeError, which cost as much as the rest of this test)
        if block.find(b"\r") >= 0 or block.find(b"\0") >= 0 or not block:
            return None  # the line-by-line path says what is wrong, or handles CR LF
        text = _text(block)
        if text.count("\n") >= MAX_ATTRIBUTES:
            return None
        attributes: dict[str, str] = {}
        start, length = 0, len(text)
        while start <= length:  # each line: name=value, the name not empty
            stop = text.find("\n", start)
            if stop < 0:
                stop = length
            equals = text.find("=", start, stop)
            if equals <= start:
                return None  # no '=' (-1), or an empty name
            attributes[text[start:equals]] = text[equals + 1:stop]  # a duplicate: last wins
            start = stop + 1
        if attributes.get("request") != REQUEST_NAME:
            return None
        del self._buffer[:end + 2]
        return PolicyRequest(attributes)

    def _attribute(self, line: bytes) -> None:
        self._lines += 1
        if self._lines > MAX_ATTRIBUTES:
            self._fail(f"more than {MAX_ATTRIBUTES} attributes in one request")
        if b"\0" in line:
            self._fail("NUL byte in an attribute")
        name, equals, value = line.partition(b"=")
        if not equals:
            self._fail(f"attribute line without '=': {_text(line[:40])!r}")
        if not name:
            self._fail("attribute with an empty name")
        self._attributes[_text(name)] = _text(value)  # a duplicate: the last one wins

    def _finish(self) -> PolicyRequest:
        attributes, self._attributes = self._attributes, {}
        lines, self._lines, self._size = self._lines, 0, 0
        if not lines:
            self._fail("empty request")
        kind = attributes.get("request")
        if kind != REQUEST_NAME:
            shown = "no request attribute" if kind is None else f"request={kind[:40]!r}"
            self._fail(f"{shown}; expected request={REQUEST_NAME}")
        return PolicyRequest(attributes)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, reason: str) -> None:
        self._error = ProtocolError(reason)
        raise self._error


@functools.lru_cache(maxsize=1024)
def encode_reply(action: str) -> bytes:
    """The reply bytes for one access(5) action: ``action=...`` and the empty line.
    Cached: most replies are one of a few (DUNNO, the greylist deferral per domain)."""
    if not action.strip():
        raise LocalProtocolError("empty action")
    if "\n" in action or "\r" in action or "\0" in action:
        raise LocalProtocolError("CR, LF or NUL in an action")
    try:
        encoded = action.encode("utf-8")
    except UnicodeEncodeError:
        # SMTPD_POLICY_README: with smtputf8_enable=yes smtpd counts malformed UTF-8 in a
        # reply as a failed request, so a value echoed from a non-UTF-8 request is refused.
        raise LocalProtocolError("action is not valid UTF-8") from None
    if len(encoded) > MAX_LINE:
        raise LocalProtocolError(f"action longer than {MAX_LINE} bytes")
    return b"action=" + encoded + b"\n\n"
