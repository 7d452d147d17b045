"""SMTP client side as a sans-IO codec: reply parsing, command encoding and the transcript.

Security: every byte parsed here comes from the server being probed, which may be hostile
or broken. The ``ReplyParser`` bounds what it holds: a reply line may have at most
``MAX_LINE`` bytes, a reply at most ``MAX_LINES`` lines, and at most ``MAX_BUFFER`` bytes
(unparsed input plus the reply being assembled) are kept. A line without a three-digit
code, or a reply whose lines disagree on the code, is a ``SmtpProtocolError``; after one the
parser is dead and raises the same error on every call. Reply text is decoded as UTF-8 with
``surrogateescape`` and kept as sent; ``str(reply)`` and the transcript escape control
characters so that a reply cannot write terminal escapes into a report. Commands refuse CR,
LF and NUL, so no argument can smuggle in a second command; exact bytes (bare LF, bare CR,
pipelined groups) are only ever sent deliberately by the caller. The transcript is bounded
in entries and characters and never holds AUTH credentials: they are masked when recorded.
Standards: RFC 5321 4.1.1 (command syntax), 4.2 (reply lines and multi-line replies),
4.5.2 (transparency: dot-stuffing), 4.1.1.4 (end of data), 4.1.1.1 (EHLO reply); RFC 3463
(enhanced status codes); RFC 4954 4 (AUTH, 334 continuations); RFC 4616 (PLAIN).

Theory of operation
-------------------
1. ``ReplyParser.feed`` only appends and fails early on an overlong unfinished line or a
   full buffer; ``next_reply`` consumes whole lines and returns a ``Reply`` when a line
   with a space (or nothing) after the code ends it. Work is linear in the input whatever
   the chunk size, and the same input gives the same replies or the same error at any
   chunk size.
2. A line ends at LF; a CR right before it is dropped. Broken servers end lines with a bare
   LF, so that is accepted; a CR elsewhere stays in the text.
3. Limits. RFC 5321 4.5.3.1.5 allows 512 octets a reply line; real servers exceed it a
   little (long EHLO AUTH lists, banners), so 2048 bytes a line, 100 lines a reply and
   64 KiB held are generous for an honest server and small for a hostile one. A client
   reads only when ``next_reply`` has returned None, so the buffer holds at most one reply
   plus one read.
4. ``command`` builds one command line; ``data_bytes`` turns a normal message into the
   DATA payload: line ends normalised to CRLF, a leading "." doubled (RFC 5321 4.5.2), and
   the final "." line. Deliberately malformed payloads (bare LF or bare CR before the
   ".") are written by the caller as exact bytes, never through ``data_bytes``.
5. The transcript records what went over the wire, one entry per line, direction "C"
   (client), "S" (server) or "*" (a note such as the TLS handshake). Client bytes are
   split at CRLF; a bare CR or LF inside a line is shown escaped (``\\n``), which is what
   smuggling evidence needs. After an ``AUTH`` command every client line up to the next
   reply that is not 334 is credentials and is recorded as "****".
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Literal, Never

from postwarden.errors import PostwardenError, clip

MAX_LINE = 2048            # bytes in one reply line, without its line end
MAX_LINES = 100            # lines in one reply
MAX_BUFFER = 64 * 1024     # unparsed bytes plus the reply being assembled
MAX_TRANSCRIPT_ENTRIES = 500
MAX_TRANSCRIPT_CHARS = 64 * 1024
MAX_ENTRY_CHARS = 2048     # one transcript entry; longer ones are cut with "..."
MASK = "****"

Direction = Literal["C", "S", "*"]

_LINE = re.compile(rb"([1-5][0-9][0-9])(?:([ -])(.*))?\Z", re.DOTALL)
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?:[ \t]|\Z)")
_EHLO_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN = ("\r", "\n", "\0")


class SmtpError(PostwardenError):
    """Anything that went wrong talking SMTP to the probed server."""


class SmtpProtocolError(SmtpError):
    """The server broke the reply syntax or a limit; the connection cannot continue."""


class SmtpCommandError(SmtpError):
    """We were about to send something that is not one command (CR, LF or NUL inside)."""


def _escape(text: str) -> str:
    """Show control characters as escapes, so untrusted text stays on one line."""
    def one(match: re.Match[str]) -> str:
        char = match.group()
        return {"\r": "\\r", "\n": "\\n", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")
    return _CONTROL.sub(one, text)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply: its code and the text of each line after the code and separator."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code at the start of the first line ("5.7.1"), or ""."""
        if not self.lines:
            return ""
        match = _ENHANCED.match(self.lines[0])
        return match.group(1) if match else ""

    @property
    def positive(self) -> bool:
        """2yz or 3yz (RFC 5321 4.2.1): completed, or go on with the next part."""
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def wire_lines(self) -> list[str]:
        """The reply as the server sent it, one string per line ("250-...", "250 ...")."""
        count = len(self.lines)
        return [f"{self.code}{'-' if i < count - 1 else ' '}{line}"
                for i, line in enumerate(self.lines)]

    def __str__(self) -> str:
        return _escape(f"{self.code} {self.text}".rstrip())


class ReplyParser:
    """Turns the byte stream from an SMTP server into ``Reply`` s, one at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._tail = 0                  # bytes after the last LF in the buffer
        self._code: int | None = None   # code of the reply being assembled
        self._lines: list[str] = []
        self._size = 0                  # bytes of the lines already taken into _lines
        self._error: SmtpProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a returned reply (0 between replies)."""
        return len(self._buffer) + self._size

    def feed(self, data: bytes) -> None:
        """Add bytes read from the server."""
        self._check()
        if self.pending + len(data) > MAX_BUFFER:
            self._fail(f"more than {MAX_BUFFER} bytes of reply data held unparsed")
        last = data.rfind(b"\n")
        self._tail = self._tail + len(data) if last < 0 else len(data) - last - 1
        # +1: the CR of a CRLF may arrive before its LF.
        if self._tail > MAX_LINE + 1:
            self._fail(f"reply line longer than {MAX_LINE} bytes")
        self._buffer += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes arrive."""
        self._check()
        start = 0
        try:
            while (end := self._buffer.find(b"\n", start)) >= 0:
                line = bytes(self._buffer[start:end])
                start = end + 1
                reply = self._take(line, len(line) + 1)
                if reply is not None:
                    return reply
            return None
        finally:
            del self._buffer[:start]

    def _take(self, line: bytes, size: int) -> Reply | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE:
            self._fail(f"reply line longer than {MAX_LINE} bytes")
        match = _LINE.match(line)
        if match is None:
            self._fail(f"reply line without a three-digit code: {clip(_text(line))!r}")
        code = int(match.group(1))
        if self._code is not None and code != self._code:
            self._fail(f"reply code changes within one reply: {self._code} then {code}")
        if len(self._lines) >= MAX_LINES:
            self._fail(f"reply of more than {MAX_LINES} lines")
        self._code = code
        self._lines.append(_text(match.group(3) or b""))
        self._size += size
        if match.group(2) == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code, self._lines, self._size = None, [], 0
        return reply

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, reason: str) -> Never:
        self._error = SmtpProtocolError(reason)
        raise self._error


def command(verb: str, argument: str = "") -> bytes:
    """One command line: ``VERB argument`` CRLF, in UTF-8 (RFC 6531 allows it after
    SMTPUTF8; a server without it rejects the command, which is an observation too)."""
    if not verb or any(char.isspace() for char in verb):
        raise SmtpCommandError(f"not a command verb: {clip(verb)!r}")
    if any(char in verb or char in argument for char in _FORBIDDEN):
        raise SmtpCommandError(f"CR, LF or NUL inside the command {clip(verb)!r}")
    line = f"{verb} {argument}" if argument else verb
    return line.encode("utf-8", "surrogateescape") + b"\r\n"


def data_bytes(message: bytes) -> bytes:
    """The DATA payload for a normal message: CRLF line ends, dot-stuffed, "." line last."""
    body = _LINE_ENDS.sub(b"\r\n", message)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    # RFC 5321 4.5.2: a line starting with "." gets one more.
    if body.startswith(b"."):
        body = b"." + body
    body = body.replace(b"\r\n.", b"\r\n..")
    return body + b".\r\n"


def auth_plain_response(user: str, password: str) -> str:
    """RFC 4616 initial response: base64 of NUL user NUL password (no authzid)."""
    if "\0" in user or "\0" in password:
        raise SmtpCommandError("NUL inside a PLAIN user name or password")
    raw = f"\0{user}\0{password}".encode()
    return base64.b64encode(raw).decode("ascii")


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters, from a 250 reply (else empty).

    The first line is the server's greeting, not an extension (RFC 5321 4.1.1.1). The
    obsolete "AUTH=PLAIN LOGIN" form counts as AUTH unless a standard AUTH line exists.
    """
    if reply.code != 250:
        return {}
    extensions: dict[str, str] = {}
    legacy: dict[str, str] = {}
    for line in reply.lines[1:]:
        match = _EHLO_LINE.match(line.strip())
        if match is None:
            continue
        keyword = match.group(1).upper()
        params = " ".join((match.group(2) or "").split())
        if "=" in line.split(" ", 1)[0]:
            legacy.setdefault(keyword, params)
        else:
            extensions.setdefault(keyword, params)
    for keyword, params in legacy.items():
        extensions.setdefault(keyword, params)
    return extensions


class Transcript:
    """The bounded record of one conversation: (direction, text) entries, credentials masked."""

    def __init__(self, max_entries: int = MAX_TRANSCRIPT_ENTRIES,
                 max_chars: int = MAX_TRANSCRIPT_CHARS) -> None:
        self._entries: list[tuple[Direction, str]] = []
        self._chars = 0
        self._max_entries = max_entries
        self._max_chars = max_chars
        self.dropped = 0        # entries not kept because a bound was reached
        self._in_auth = False   # client lines are credentials until a non-334 reply

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[tuple[Direction, str], ...]:
        return tuple(self._entries)

    def client(self, data: bytes) -> None:
        """Record bytes the client sent, one entry per CRLF-terminated line."""
        parts = data.split(b"\r\n")
        if parts[-1] == b"":
            parts.pop()
        for part in parts:
            self._add("C", self._mask(_text(part)))

    def server(self, reply: Reply) -> None:
        """Record a reply, one entry per line as sent."""
        if reply.code != 334:
            self._in_auth = False
        for line in reply.wire_lines():
            self._add("S", line)

    def note(self, text: str) -> None:
        """Record an observation that is not on the wire (TLS handshake, timeout, close)."""
        self._add("*", text)

    def lines(self, start: int = 0) -> list[str]:
        """Entries from ``start`` rendered as "C: EHLO x", "S: 250-..."; a last line says
        how many were dropped, if any."""
        rendered = [f"{direction}: {text}" for direction, text in self._entries[start:]]
        if self.dropped:
            rendered.append(f"*: transcript truncated, {self.dropped} more entries not kept")
        return rendered

    def _mask(self, line: str) -> str:
        if self._in_auth:
            return line if line.strip() == "*" else MASK  # "*" cancels (RFC 4954 4)
        words = line.split()
        if words and words[0].upper() == "AUTH":
            self._in_auth = True
            return " ".join([*words[:2], MASK] if len(words) > 2 else words[:2])
        return line

    def _add(self, direction: Direction, text: str) -> None:
        text = _escape(text)
        if len(text) > MAX_ENTRY_CHARS:
            text = text[:MAX_ENTRY_CHARS] + "..."
        if (len(self._entries) >= self._max_entries
                or self._chars + len(text) > self._max_chars):
            self.dropped += 1
            return
        self._entries.append((direction, text))
        self._chars += len(text)
