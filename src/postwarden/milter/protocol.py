"""The Sendmail milter protocol (version 6, as Postfix speaks it) as a sans-IO codec.

Security: every byte here comes from the MTA side of a milter socket, that is from whoever
can reach the socket. A packet may announce at most ``MAX_PACKET`` bytes; the length is
checked as soon as its four bytes arrive, so a hostile length never makes us buffer more
than ``MAX_BUFFER``. Zero lengths, unknown commands, missing NUL terminators and payloads
of the wrong shape are ``MilterProtocolError``; after one the decoder is dead and every
later call raises the same error. Strings are decoded as UTF-8 with ``surrogateescape``
(8-bit bytes survive the round trip); header values stay ``bytes``. Reply encoders refuse
NUL, CR and LF where they would let a value forge a second field or reply line.
Standards: Sendmail ``include/libmilter/mfdef.h`` and ``mfapi.h`` (wire constants and
flags); Postfix MILTER_README (Postfix 3.7: ``milter_protocol = 6``, macros per stage);
Sendmail libmilter ``smfi_insheader``/``smfi_chgheader`` (header index semantics).

Theory of operation
-------------------
1. A packet is ``uint32 length`` (network order) + one command byte + ``length - 1`` data
   bytes. ``feed`` only appends; ``next_event`` cuts whole packets and turns each into one
   frozen event, or returns None when a packet is still incomplete. An adapter reads only
   when ``next_event`` returned None, so the buffer holds at most one partial packet and
   one read (``MAX_BUFFER``). Work is linear in the input at any chunk size.
2. The MTA speaks first with OPTNEG (version, actions it allows, protocol steps it offers).
   ``negotiate`` picks what we use: actions masked by the offer; ``SMFIP_HDR_LEADSPC`` when
   offered, so a header value arrives with the bytes after the colon exactly as sent
   (without it Postfix drops one space and ``c=simple`` DKIM breaks); ``SMFIP_NO*`` steps
   only where offered. ``SMFIP_NR_*`` (the MTA does not wait for a reply to that step)
   only when the caller asks for them, for steps its handler always continues at: then
   the MTA sends the headers and body without waiting, many packets arrive in one read,
   and a message costs a few round trips instead of one per header. Every other command
   except MACRO, ABORT, QUIT and QUIT_NC gets exactly one reply (``needs_reply``).
3. MACRO ('D') carries the stage command byte and name/value pairs and comes *before*
   the command it belongs to; Postfix sends only macros whose values changed.
4. Replies are built by pure functions: verdicts (``Verdict``, ``ReplyCode``) and the
   end-of-message modifications (``AddHeader``, ``InsertHeader``, ``ChangeHeader``,
   ``Quarantine``). INSHEADER index 0 is the top of the header; CHGHEADER index is the
   n-th (1-based) field of that name, and an empty value deletes it.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from postwarden.errors import PostwardenError, clip

# -- limits -------------------------------------------------------------------------------

BODY_CHUNK = 65535                      # Postfix and Sendmail send body chunks up to this
MAX_PACKET = 1024 * 1024 + BODY_CHUNK   # command byte + data; a header is <= 1 MiB
MAX_BUFFER = 2 * MAX_PACKET + 4         # one partial packet plus one read
MILTER_VERSION = 6

# -- commands (MTA -> milter), mfdef.h ------------------------------------------------------

SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# -- replies (milter -> MTA), mfdef.h -------------------------------------------------------

SMFIR_ADDRCPT = b"+"
SMFIR_DELRCPT = b"-"
SMFIR_ADDRCPT_PAR = b"2"
SMFIR_SHUTDOWN = b"4"
SMFIR_ACCEPT = b"a"
SMFIR_REPLBODY = b"b"
SMFIR_CONTINUE = b"c"
SMFIR_DISCARD = b"d"
SMFIR_CHGFROM = b"e"
SMFIR_CONN_FAIL = b"f"
SMFIR_ADDHEADER = b"h"
SMFIR_INSHEADER = b"i"
SMFIR_SETSYMLIST = b"l"
SMFIR_CHGHEADER = b"m"
SMFIR_PROGRESS = b"p"
SMFIR_QUARANTINE = b"q"
SMFIR_REJECT = b"r"
SMFIR_SKIP = b"s"
SMFIR_TEMPFAIL = b"t"
SMFIR_REPLYCODE = b"y"

# -- actions the milter may take (mfapi.h) ---------------------------------------------------

SMFIF_ADDHDRS = 0x01
SMFIF_CHGBODY = 0x02
SMFIF_ADDRCPT = 0x04
SMFIF_DELRCPT = 0x08
SMFIF_CHGHDRS = 0x10
SMFIF_QUARANTINE = 0x20
SMFIF_CHGFROM = 0x40
SMFIF_ADDRCPT_PAR = 0x80
SMFIF_SETSYMLIST = 0x100

# -- protocol steps (mfdef.h) ----------------------------------------------------------------

SMFIP_NOCONNECT = 0x01
SMFIP_NOHELO = 0x02
SMFIP_NOMAIL = 0x04
SMFIP_NORCPT = 0x08
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NR_HDR = 0x80
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_SKIP = 0x400
SMFIP_RCPT_REJ = 0x800
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
SMFIP_NR_RCPT = 0x8000
SMFIP_NR_DATA = 0x10000
SMFIP_NR_UNKN = 0x20000
SMFIP_NR_EOH = 0x40000
SMFIP_NR_BODY = 0x80000
SMFIP_HDR_LEADSPC = 0x100000
SMFIP_NO_FLAGS = (SMFIP_NOCONNECT | SMFIP_NOHELO | SMFIP_NOMAIL | SMFIP_NORCPT | SMFIP_NOBODY
                  | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOUNKNOWN | SMFIP_NODATA)
SMFIP_NR_FLAGS = (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA
                  | SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NR_HDR)

# -- macro stages for the OPTNEG symbol lists (mfapi.h) --------------------------------------

SMFIM_CONNECT = 0
SMFIM_HELO = 1
SMFIM_ENVFROM = 2
SMFIM_ENVRCPT = 3
SMFIM_DATA = 4
SMFIM_EOM = 5
SMFIM_EOH = 6

# -- connect address families (mfdef.h) ------------------------------------------------------

SMFIA_UNKNOWN = "U"
SMFIA_UNIX = "L"
SMFIA_INET = "4"
SMFIA_INET6 = "6"


class MilterProtocolError(PostwardenError):
    """The MTA side broke the protocol; the connection must be closed without a reply."""


class MilterReplyError(MilterProtocolError):
    """We were about to send something the protocol cannot carry (a local error)."""


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptNeg:
    """SMFIC_OPTNEG: the protocol version, actions allowed and steps offered by the MTA."""

    version: int
    actions: int
    protocol: int


@dataclass(frozen=True)
class Macros:
    """SMFIC_MACRO: macro values for the command ``command`` that follows (e.g. ``"C"``)."""

    command: str
    macros: Mapping[str, str] = field(hash=False)


@dataclass(frozen=True)
class Connect:
    """SMFIC_CONNECT: the SMTP client; ``port``/``address`` are None for family ``U``."""

    hostname: str
    family: str
    port: int | None
    address: str | None


@dataclass(frozen=True)
class Helo:
    helo_name: str


@dataclass(frozen=True)
class MailFrom:
    """SMFIC_MAIL: ``args[0]`` is the sender in angle brackets, the rest ESMTP parameters."""

    args: tuple[str, ...]


@dataclass(frozen=True)
class RcptTo:
    args: tuple[str, ...]


@dataclass(frozen=True)
class Data:
    pass


@dataclass(frozen=True)
class Header:
    """SMFIC_HEADER: ``value`` is every byte after the colon (with SMFIP_HDR_LEADSPC),
    folded lines joined by bare LF, exactly as the MTA sent it."""

    name: str
    value: bytes


@dataclass(frozen=True)
class EndOfHeaders:
    pass


@dataclass(frozen=True)
class Body:
    chunk: bytes


@dataclass(frozen=True)
class EndOfMessage:
    """SMFIC_BODYEOB; ``chunk`` is a last body chunk (Sendmail may send one; Postfix not)."""

    chunk: bytes = b""


@dataclass(frozen=True)
class Abort:
    pass


@dataclass(frozen=True)
class Quit:
    pass


@dataclass(frozen=True)
class QuitNewConnection:
    """SMFIC_QUIT_NC: the SMTP session ended, the milter connection is reused for the next."""


@dataclass(frozen=True)
class Unknown:
    """SMFIC_UNKNOWN: an SMTP command the MTA did not recognise."""

    command: str


Event = (OptNeg | Macros | Connect | Helo | MailFrom | RcptTo | Data | Header | EndOfHeaders
         | Body | EndOfMessage | Abort | Quit | QuitNewConnection | Unknown)

# Events after which the MTA waits for no reply (MACRO, ABORT, QUIT, QUIT_NC).
_NO_REPLY = (Macros, Abort, Quit, QuitNewConnection)
_NR_FLAG: dict[type, int] = {
    Connect: SMFIP_NR_CONN, Helo: SMFIP_NR_HELO, MailFrom: SMFIP_NR_MAIL,
    RcptTo: SMFIP_NR_RCPT, Data: SMFIP_NR_DATA, Unknown: SMFIP_NR_UNKN,
    EndOfHeaders: SMFIP_NR_EOH, Body: SMFIP_NR_BODY, Header: SMFIP_NR_HDR,
}


def needs_reply(event: Event, protocol: int = 0) -> bool:
    """Whether the MTA waits for a reply to ``event`` under the negotiated ``protocol``."""
    if isinstance(event, _NO_REPLY):
        return False
    flag = _NR_FLAG.get(type(event), 0)
    return not protocol & flag


# -- decoding -------------------------------------------------------------------------------


def _strings(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings filling ``data`` exactly."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"{what}: string without NUL terminator")
    return data[:-1].split(b"\0")


def _connect(data: bytes) -> Connect:
    end = data.find(b"\0")
    if end < 0 or end + 1 >= len(data):
        raise MilterProtocolError("connect: truncated")
    hostname, family = _text(data[:end]), chr(data[end + 1])
    rest = data[end + 2:]
    if family == SMFIA_UNKNOWN:
        return Connect(hostname, family, None, None)  # libmilter ignores anything after it
    if family not in (SMFIA_UNIX, SMFIA_INET, SMFIA_INET6):
        raise MilterProtocolError(f"connect: unknown address family {family!r}")
    if len(rest) < 3:
        raise MilterProtocolError("connect: truncated address")
    (port,) = struct.unpack("!H", rest[:2])
    address = _strings(rest[2:], "connect")
    if len(address) != 1:
        raise MilterProtocolError("connect: extra data after the address")
    return Connect(hostname, family, port, _text(address[0]))


def _macros(data: bytes) -> Macros:
    if not data:
        raise MilterProtocolError("macro: no command byte")
    command = chr(data[0])
    pairs = _strings(data[1:], "macro") if len(data) > 1 else []
    if len(pairs) % 2:
        raise MilterProtocolError("macro: a name without a value")
    values = {_text(pairs[i]): _text(pairs[i + 1]) for i in range(0, len(pairs), 2)}
    return Macros(command, values)


def _one(data: bytes, what: str) -> str:
    parts = _strings(data, what)
    if len(parts) != 1:
        raise MilterProtocolError(f"{what}: expected one string, got {len(parts)}")
    return _text(parts[0])


def _args(data: bytes, what: str) -> tuple[str, ...]:
    return tuple(_text(part) for part in _strings(data, what))


def _header(data: bytes) -> Header:
    parts = _strings(data, "header")
    if len(parts) != 2 or not parts[0]:
        raise MilterProtocolError("header: expected a name and a value")
    return Header(_text(parts[0]), parts[1])


def _optneg(data: bytes) -> OptNeg:
    if len(data) != 12:
        raise MilterProtocolError(f"optneg: {len(data)} bytes, expected 12")
    version, actions, protocol = struct.unpack("!III", data)
    if version < 2:
        raise MilterProtocolError(f"optneg: protocol version {version} is not supported")
    return OptNeg(version, actions, protocol)


_EMPTY: dict[bytes, Event] = {
    SMFIC_DATA: Data(), SMFIC_EOH: EndOfHeaders(), SMFIC_ABORT: Abort(),
    SMFIC_QUIT: Quit(), SMFIC_QUIT_NC: QuitNewConnection(),
}


def decode_packet(command: bytes, data: bytes) -> Event:
    """One packet's command byte and data as an event."""
    if command == SMFIC_HEADER:  # the most frequent first
        return _header(data)
    if command == SMFIC_BODY:
        return Body(data)
    if command in _EMPTY:
        if data:
            raise MilterProtocolError(f"command {command!r}: unexpected {len(data)} data bytes")
        return _EMPTY[command]
    if command == SMFIC_OPTNEG:
        return _optneg(data)
    if command == SMFIC_MACRO:
        return _macros(data)
    if command == SMFIC_CONNECT:
        return _connect(data)
    if command == SMFIC_HELO:
        return Helo(_one(data, "helo"))
    if command == SMFIC_MAIL:
        return MailFrom(_args(data, "mail"))
    if command == SMFIC_RCPT:
        return RcptTo(_args(data, "rcpt"))
    if command == SMFIC_BODYEOB:
        return EndOfMessage(data)
    if command == SMFIC_UNKNOWN:
        return Unknown(_one(data, "unknown"))
    raise MilterProtocolError(f"unknown command byte {clip(repr(command))}")


class MilterDecoder:
    """Turns the byte stream from the MTA into events, one packet at a time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._error: MilterProtocolError | None = None

    def _fail(self, reason: str) -> MilterProtocolError:
        self._error = MilterProtocolError(reason)
        return self._error

    def _check_length(self) -> int | None:
        if len(self._buffer) < 4:
            return None
        (length,) = struct.unpack_from("!I", self._buffer)
        if length == 0:
            raise self._fail("packet of length 0")
        if length > MAX_PACKET:
            raise self._fail(f"packet of {length} bytes, limit {MAX_PACKET}")
        return int(length)

    def feed(self, data: bytes) -> None:
        """Append bytes read from the MTA."""
        if self._error is not None:
            raise self._error
        if len(self._buffer) + len(data) > MAX_BUFFER:
            raise self._fail(f"more than {MAX_BUFFER} unparsed bytes")
        self._buffer += data
        self._check_length()

    def next_event(self) -> Event | None:
        """The next complete event, or None until more bytes are fed."""
        if self._error is not None:
            raise self._error
        length = self._check_length()
        if length is None or len(self._buffer) < 4 + length:
            return None
        command = bytes(self._buffer[4:5])
        data = bytes(self._buffer[5:4 + length])
        del self._buffer[:4 + length]
        try:
            return decode_packet(command, data)
        except MilterProtocolError as error:
            self._error = error
            raise

    @property
    def pending(self) -> int:
        """Bytes fed but not yet consumed."""
        return len(self._buffer)


# -- negotiation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Negotiated:
    """What both sides agreed on: the reply to OPTNEG was built from it."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[int, tuple[str, ...]] = field(default_factory=dict, hash=False)


def negotiate(offer: OptNeg, *, actions: int, skip: int = 0, no_reply: int = 0,
              macros: Mapping[int, Sequence[str]] | None = None) -> Negotiated:
    """Agree on ``actions`` we want (masked by the offer), the steps we ``skip``
    (``SMFIP_NO*`` flags) and the steps we do not answer (``no_reply``, ``SMFIP_NR_*``
    flags), each used only where offered; ask for HDR_LEADSPC if offered."""
    if skip & ~SMFIP_NO_FLAGS:
        raise MilterReplyError(f"skip: {skip:#x} holds flags other than SMFIP_NO*")
    if no_reply & ~SMFIP_NR_FLAGS:
        raise MilterReplyError(f"no_reply: {no_reply:#x} holds flags other than SMFIP_NR_*")
    protocol = (skip | no_reply) & offer.protocol
    if offer.protocol & SMFIP_HDR_LEADSPC:
        protocol |= SMFIP_HDR_LEADSPC
    lists = {stage: tuple(names) for stage, names in (macros or {}).items() if names}
    for stage, names in lists.items():
        if not SMFIM_CONNECT <= stage <= SMFIM_EOH:
            raise MilterReplyError(f"macro stage {stage} does not exist")
        for name in names:
            if not name or any(c in name for c in " \0\r\n"):
                raise MilterReplyError(f"macro name {clip(name)!r} cannot be sent")
    granted = actions & offer.actions
    if lists and offer.actions & SMFIF_SETSYMLIST:
        granted |= SMFIF_SETSYMLIST
    else:
        lists = {}
    return Negotiated(min(offer.version, MILTER_VERSION), granted, protocol, lists)


def encode_packet(command: bytes, data: bytes = b"") -> bytes:
    """Frame one packet."""
    if len(command) != 1:
        raise MilterReplyError("a command is one byte")
    if 1 + len(data) > MAX_PACKET:
        raise MilterReplyError(f"reply of {1 + len(data)} bytes, limit {MAX_PACKET}")
    return struct.pack("!I", 1 + len(data)) + command + data


def encode_optneg(agreed: Negotiated) -> bytes:
    """The OPTNEG reply; symbol lists follow as ``uint32 stage`` + names + NUL."""
    data = struct.pack("!III", agreed.version, agreed.actions, agreed.protocol)
    for stage, names in sorted(agreed.macros.items()):
        data += struct.pack("!I", stage) + _raw(" ".join(names)) + b"\0"
    return encode_packet(SMFIC_OPTNEG, data)


# -- replies --------------------------------------------------------------------------------


class Verdict(enum.Enum):
    """Replies without data."""

    CONTINUE = SMFIR_CONTINUE
    ACCEPT = SMFIR_ACCEPT
    REJECT = SMFIR_REJECT
    TEMPFAIL = SMFIR_TEMPFAIL
    DISCARD = SMFIR_DISCARD


_REPLY_TEXT = re.compile(r"[^\r\n\0]*")
_ENHANCED = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?: |$)")


@dataclass(frozen=True)
class ReplyCode:
    """SMFIR_REPLYCODE: an SMTP reply such as ``ReplyCode(550, "5.7.1 refused")``."""

    code: int
    text: str

    def __post_init__(self) -> None:
        if not (400 <= self.code <= 599):
            raise MilterReplyError(f"reply code {self.code}: only 4xx and 5xx can be set")
        if not _REPLY_TEXT.fullmatch(self.text):
            raise MilterReplyError("reply text must not hold CR, LF or NUL")
        enhanced = _ENHANCED.match(self.text)
        if enhanced and enhanced.group(1) != str(self.code)[0]:
            # RFC 3463 2: the enhanced class must agree with the reply code's first digit
            raise MilterReplyError(f"{self.code} with enhanced code {clip(self.text)!r}")


Reply = Verdict | ReplyCode


def encode_reply(reply: Reply) -> bytes:
    """A verdict packet."""
    if isinstance(reply, ReplyCode):
        line = f"{reply.code} {reply.text}".rstrip(" ")
        return encode_packet(SMFIR_REPLYCODE, _raw(line) + b"\0")
    return encode_packet(reply.value)


def encode_progress() -> bytes:
    """SMFIR_PROGRESS: a keepalive that restarts the MTA's timeout."""
    return encode_packet(SMFIR_PROGRESS)


_FIELD_NAME = re.compile(r"[!-9;-~]+")   # RFC 5322 3.6.8 ftext
_FOLD = re.compile(rb"\r?\n(?![ \t])")    # a line break not followed by WSP


def _field(name: str, value: bytes) -> bytes:
    if not _FIELD_NAME.fullmatch(name):
        raise MilterReplyError(f"header name {clip(name)!r} is not RFC 5322 ftext")
    if b"\0" in value or _FOLD.search(value) or value.endswith((b"\n", b"\r")):
        # RFC 5322 2.2.3: a break inside a field must be followed by WSP, else it starts a
        # new field, which would let a value forge a header
        raise MilterReplyError(f"header {name}: value with NUL or an unfolded line break")
    return _raw(name) + b"\0" + value + b"\0"


@dataclass(frozen=True)
class AddHeader:
    """SMFIR_ADDHEADER: append a field at the end of the header."""

    name: str
    value: bytes


@dataclass(frozen=True)
class InsertHeader:
    """SMFIR_INSHEADER: insert a field before position ``index`` (0 = the top)."""

    index: int
    name: str
    value: bytes


@dataclass(frozen=True)
class ChangeHeader:
    """SMFIR_CHGHEADER: replace the ``index``-th (1-based) field called ``name``; an empty
    value deletes it."""

    index: int
    name: str
    value: bytes


@dataclass(frozen=True)
class Quarantine:
    """SMFIR_QUARANTINE: put the message on hold with ``reason``."""

    reason: str


Modification = AddHeader | InsertHeader | ChangeHeader | Quarantine

# Which negotiated action each modification needs.
REQUIRED_ACTION: dict[type, int] = {
    AddHeader: SMFIF_ADDHDRS, InsertHeader: SMFIF_ADDHDRS,
    ChangeHeader: SMFIF_CHGHDRS, Quarantine: SMFIF_QUARANTINE,
}


def _index(index: int) -> bytes:
    if not 0 <= index <= 0xFFFFFFFF:
        raise MilterReplyError(f"header index {index} out of range")
    return struct.pack("!I", index)


def encode_modification(change: Modification) -> bytes:
    """One end-of-message modification packet."""
    if isinstance(change, AddHeader):
        return encode_packet(SMFIR_ADDHEADER, _field(change.name, change.value))
    if isinstance(change, InsertHeader):
        return encode_packet(SMFIR_INSHEADER,
                             _index(change.index) + _field(change.name, change.value))
    if isinstance(change, ChangeHeader):
        if change.index < 1:
            raise MilterReplyError("CHGHEADER index is 1-based")
        return encode_packet(SMFIR_CHGHEADER,
                             _index(change.index) + _field(change.name, change.value))
    if not change.reason or not _REPLY_TEXT.fullmatch(change.reason):
        raise MilterReplyError("quarantine reason must be non-empty, without CR, LF or NUL")
    return encode_packet(SMFIR_QUARANTINE, _raw(change.reason) + b"\0")
