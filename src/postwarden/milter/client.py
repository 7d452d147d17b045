"""An asyncio milter client: the MTA side of the protocol, as Postfix 3.x speaks it.

Security: the milter at the other end is trusted no more than any peer: a reply may
announce at most ``MAX_PACKET`` bytes (checked before it is read), an unknown or
malformed reply is a ``MilterProtocolError``, every read waits at most ``timeout``
seconds, and a milter that keeps sending PROGRESS cannot hold a step longer than
``timeout`` after the last one. Nothing received is evaluated; modifications are only
collected and returned.
Standards: Sendmail ``include/libmilter/mfdef.h`` (wire constants); Postfix
``src/milter/milter8.c`` and MILTER_README (what Postfix sends: OPTNEG version 6 with all
actions and protocol bits, macros before each command, header values after the colon,
folded lines joined by LF, the body with CRLF line ends in chunks of 65535 bytes, end of
message, then ABORT and QUIT).

Theory of operation
-------------------
``MilterClient`` is one connection. ``negotiate`` sends OPTNEG and keeps what the milter
answered: the protocol steps it does not want (``SMFIP_NO*``: the client then does not
send them), the steps it will not reply to (``SMFIP_NR_*``: the client then does not
wait), whether header values keep their leading space (``SMFIP_HDR_LEADSPC``), and the
macro lists it asked for (only those names are sent at that stage). Each step method
sends the stage's macros (if any), then the command, and returns the milter's reply, or
``None`` when none is due. ``end_of_message`` collects the modifications up to the final
verdict. ``deliver`` runs one whole SMTP session (connect, HELO, one message, QUIT) the
way smtpd would, stopping at the first verdict other than CONTINUE, and returns an
``Outcome``. The message is split once by ``prepare`` so that a benchmark sending the
same message many times does not pay for the split each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from postwarden.errors import clip
from postwarden.milter.protocol import (
    BODY_CHUNK,
    MAX_PACKET,
    MILTER_VERSION,
    SMFIA_INET,
    SMFIA_INET6,
    SMFIA_UNIX,
    SMFIC_ABORT,
    SMFIC_BODY,
    SMFIC_BODYEOB,
    SMFIC_CONNECT,
    SMFIC_DATA,
    SMFIC_EOH,
    SMFIC_HEADER,
    SMFIC_HELO,
    SMFIC_MACRO,
    SMFIC_MAIL,
    SMFIC_OPTNEG,
    SMFIC_QUIT,
    SMFIC_QUIT_NC,
    SMFIC_RCPT,
    SMFIP_HDR_LEADSPC,
    SMFIP_NOBODY,
    SMFIP_NOCONNECT,
    SMFIP_NODATA,
    SMFIP_NOEOH,
    SMFIP_NOHDRS,
    SMFIP_NOHELO,
    SMFIP_NOMAIL,
    SMFIP_NORCPT,
    SMFIP_NR_BODY,
    SMFIP_NR_CONN,
    SMFIP_NR_DATA,
    SMFIP_NR_EOH,
    SMFIP_NR_HDR,
    SMFIP_NR_HELO,
    SMFIP_NR_MAIL,
    SMFIP_NR_RCPT,
    SMFIR_ADDHEADER,
    SMFIR_CHGHEADER,
    SMFIR_INSHEADER,
    SMFIR_PROGRESS,
    SMFIR_QUARANTINE,
    SMFIR_REPLYCODE,
    SMFIR_SKIP,
    AddHeader,
    ChangeHeader,
    InsertHeader,
    MilterProtocolError,
    Modification,
    Quarantine,
    Reply,
    ReplyCode,
    Verdict,
    encode_packet,
)

# What Postfix 3.x offers (milter8.c: every SMFIF_* action; MILTER8_V6_PROTO_MASK).
POSTFIX_ACTIONS = 0x1FF
POSTFIX_PROTOCOL = 0x1FFFFF
DEFAULT_TIMEOUT = 30.0

_VERDICTS = {v.value: v for v in Verdict}
_MODIFICATIONS = (SMFIR_ADDHEADER, SMFIR_INSHEADER, SMFIR_CHGHEADER, SMFIR_QUARANTINE)
# Replies that may come before the verdict at end of message (recipients, sender, body).
_OTHER_MODIFICATIONS = (b"+", b"-", b"2", b"e", b"b")


@dataclass(frozen=True)
class Agreed:
    """The milter's answer to OPTNEG."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[int, tuple[str, ...]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class OtherModification:
    """An end-of-message change this client does not interpret (recipients, sender, body)."""

    command: bytes
    data: bytes


ClientModification = Modification | OtherModification


@dataclass(frozen=True)
class Outcome:
    """How a milter treated one message: the stage of its last reply, that reply (CONTINUE
    when it let the message through every step), and the end-of-message modifications."""

    stage: str
    reply: Reply
    modifications: tuple[ClientModification, ...] = ()
    rejected_recipients: tuple[str, ...] = ()

    def headers(self, name: str) -> list[bytes]:
        """Values of the header fields added or inserted under ``name``."""
        return [m.value for m in self.modifications
                if isinstance(m, AddHeader | InsertHeader) and m.name.lower() == name.lower()]


@dataclass(frozen=True)
class Envelope:
    """One SMTP session's worth of what smtpd knows, and the macros it would send.

    ``macros`` maps a stage letter (``C`` connect, ``H`` helo, ``M`` mail, ``R`` rcpt,
    ``T`` data, ``N`` end of headers, ``E`` end of message) to name/value pairs, names as
    Postfix writes them (``j``, ``{daemon_name}``, ``{auth_authen}``).
    """

    sender: str = "sender@example.org"
    recipients: tuple[str, ...] = ("rcpt@example.net",)
    client_address: str = "192.0.2.10"
    client_port: int = 54321
    client_name: str = "client.example.org"
    helo_name: str = "client.example.org"
    macros: Mapping[str, Mapping[str, str]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Prepared:
    """A message split as Postfix sends it: header fields (name, value after the colon,
    folded lines joined by LF) and the body with CRLF line ends, in chunks."""

    headers: tuple[tuple[str, bytes], ...]
    chunks: tuple[bytes, ...]


def prepare(message: bytes) -> Prepared:
    """Split a message (LF or CRLF line ends) into header fields and body chunks."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    fields: list[list[bytes]] = []
    end = len(lines)
    for number, line in enumerate(lines):
        if line == b"":
            end = number + 1
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
            continue
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            end = number  # RFC 5322 2.1: no header field: the body starts here
            break
        fields.append([name.rstrip(), value])
    else:
        end = len(lines)
    headers = tuple((name.decode("utf-8", "surrogateescape"), b"\n".join(parts))
                    for name, *parts in fields)
    body = b"\r\n".join(lines[end:])
    chunks = tuple(body[i:i + BODY_CHUNK] for i in range(0, len(body), BODY_CHUNK))
    return Prepared(headers, chunks)


def _z(*parts: str | bytes) -> bytes:
    return b"".join((p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape"))
                    + b"\0" for p in parts)


def _decode_agreed(data: bytes) -> Agreed:
    if len(data) < 12:
        raise MilterProtocolError(f"optneg reply of {len(data)} bytes")
    version, actions, protocol = struct.unpack_from("!III", data)
    lists: dict[int, tuple[str, ...]] = {}
    rest = data[12:]
    while rest:
        if len(rest) < 5 or b"\0" not in rest[4:]:
            raise MilterProtocolError("optneg reply: truncated macro list")
        (stage,) = struct.unpack_from("!I", rest)
        names, _, rest = rest[4:].partition(b"\0")
        lists[stage] = tuple(names.decode("utf-8", "surrogateescape").split())
    return Agreed(version, actions, protocol, lists)


def _header_fields(data: bytes, indexed: bool, what: str) -> tuple[int, str, bytes]:
    index = 0
    if indexed:
        if len(data) < 4:
            raise MilterProtocolError(f"{what}: truncated")
        (index,) = struct.unpack_from("!I", data)
        data = data[4:]
    parts = data.split(b"\0")
    if len(parts) != 3 or parts[2] or not parts[0]:
        raise MilterProtocolError(f"{what}: expected a name and a value")
    return index, parts[0].decode("utf-8", "surrogateescape"), parts[1]


def decode_modification(command: bytes, data: bytes) -> ClientModification:
    """One end-of-message modification packet as the milter sent it."""
    if command == SMFIR_ADDHEADER:
        _, name, value = _header_fields(data, False, "addheader")
        return AddHeader(name, value)
    if command == SMFIR_INSHEADER:
        index, name, value = _header_fields(data, True, "insheader")
        return InsertHeader(index, name, value)
    if command == SMFIR_CHGHEADER:
        index, name, value = _header_fields(data, True, "chgheader")
        return ChangeHeader(index, name, value)
    if command == SMFIR_QUARANTINE:
        return Quarantine(data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
    return OtherModification(command, data)


def decode_reply(command: bytes, data: bytes) -> Reply:
    """A verdict packet: one of ``Verdict`` or a ``ReplyCode``."""
    if command in _VERDICTS and not data:
        return _VERDICTS[command]
    if command == SMFIR_REPLYCODE:
        text = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        code, _, rest = text.partition(" ")
        if not code.isdigit() or not 400 <= int(code) <= 599:
            raise MilterProtocolError(f"reply code {clip(text)!r}")
        return ReplyCode(int(code), rest)
    raise MilterProtocolError(f"unexpected reply {clip(repr(command))} "
                              f"with {len(data)} data bytes")


class MilterClient:
    """One connection to a milter, driven step by step like Postfix's smtpd does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.agreed: Agreed | None = None
        self.skipped_body = False

    @classmethod
    async def open(cls, endpoint: str, *, timeout: float = DEFAULT_TIMEOUT) -> MilterClient:
        """Connect to ``unix:PATH``, ``tcp:HOST:PORT`` or Postfix's ``inet:HOST:PORT``."""
        kind, _, where = endpoint.partition(":")
        async with asyncio.timeout(timeout):
            if kind == "unix":
                reader, writer = await asyncio.open_unix_connection(where)
            elif kind in ("tcp", "inet"):
                host, _, port = where.rpartition(":")
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            else:
                raise ValueError(f"milter endpoint {clip(endpoint)!r}: expected unix:PATH "
                                 "or tcp:HOST:PORT")
        return cls(reader, writer, timeout=timeout)

    # -- wire ---------------------------------------------------------------------------

    def _send(self, command: bytes, data: bytes = b"") -> None:
        self.writer.write(encode_packet(command, data))

    async def _packet(self) -> tuple[bytes, bytes]:
        """The next reply packet other than PROGRESS."""
        while True:
            async with asyncio.timeout(self.timeout):
                head = await self.reader.readexactly(4)
                (length,) = struct.unpack("!I", head)
                if not 1 <= length <= MAX_PACKET:
                    raise MilterProtocolError(f"reply of {length} bytes")
                packet = await self.reader.readexactly(length)
            if packet[:1] != SMFIR_PROGRESS:
                return packet[:1], packet[1:]

    async def _ask(self, command: bytes, data: bytes, no_reply: int) -> Reply | None:
        self._send(command, data)
        await self.writer.drain()
        if self._protocol & no_reply:
            return None
        kind, payload = await self._packet()
        if kind == SMFIR_SKIP:
            self.skipped_body = True
            return Verdict.CONTINUE
        return decode_reply(kind, payload)

    @property
    def _protocol(self) -> int:
        if self.agreed is None:
            raise MilterProtocolError("no option negotiation yet")
        return self.agreed.protocol

    def _macros(self, stage: str, values: Mapping[str, str] | None) -> None:
        if not values:
            return
        index = "CHMRTEN".find(stage)   # SMFIM_* order: connect .. eom (5), eoh (6)
        wanted = self.agreed.macros.get(index) if self.agreed and index >= 0 else None
        pairs = [(k, v) for k, v in values.items() if wanted is None or k in wanted]
        if pairs:
            self._send(SMFIC_MACRO, stage.encode("ascii")
                       + b"".join(_z(k, v) for k, v in pairs))

    # -- steps --------------------------------------------------------------------------

    async def negotiate(self, *, version: int = MILTER_VERSION, actions: int = POSTFIX_ACTIONS,
                        protocol: int = POSTFIX_PROTOCOL) -> Agreed:
        self._send(SMFIC_OPTNEG, struct.pack("!III", version, actions, protocol))
        await self.writer.drain()
        kind, payload = await self._packet()
        if kind != SMFIC_OPTNEG:
            raise MilterProtocolError(f"expected the optneg reply, got {clip(repr(kind))}")
        agreed = _decode_agreed(payload)
        if agreed.actions & ~actions or agreed.protocol & ~protocol:
            raise MilterProtocolError("the milter asked for actions or steps not offered")
        self.agreed = agreed
        return agreed

    async def connect(self, hostname: str, address: str | None, port: int = 0,
                      macros: Mapping[str, str] | None = None) -> Reply | None:
        """CONNECT: ``address`` None means a unix-domain client (family ``L``)."""
        if self._protocol & SMFIP_NOCONNECT:
            return None
        self._macros("C", macros)
        if address is None:
            data = _z(hostname) + SMFIA_UNIX.encode() + struct.pack("!H", 0) + _z("")
        else:
            family = SMFIA_INET6 if ":" in address else SMFIA_INET
            data = _z(hostname) + family.encode() + struct.pack("!H", port) + _z(address)
        return await self._ask(SMFIC_CONNECT, data, SMFIP_NR_CONN)

    async def helo(self, name: str, macros: Mapping[str, str] | None = None) -> Reply | None:
        if self._protocol & SMFIP_NOHELO:
            return None
        self._macros("H", macros)
        return await self._ask(SMFIC_HELO, _z(name), SMFIP_NR_HELO)

    async def mail(self, args: Sequence[str], macros: Mapping[str, str] | None = None,
                   ) -> Reply | None:
        """MAIL: ``args[0]`` is the sender in angle brackets, then ESMTP parameters."""
        self.skipped_body = False
        if self._protocol & SMFIP_NOMAIL:
            return None
        self._macros("M", macros)
        return await self._ask(SMFIC_MAIL, _z(*args), SMFIP_NR_MAIL)

    async def rcpt(self, args: Sequence[str], macros: Mapping[str, str] | None = None,
                   ) -> Reply | None:
        if self._protocol & SMFIP_NORCPT:
            return None
        self._macros("R", macros)
        return await self._ask(SMFIC_RCPT, _z(*args), SMFIP_NR_RCPT)

    async def data(self, macros: Mapping[str, str] | None = None) -> Reply | None:
        if self._protocol & SMFIP_NODATA:
            return None
        self._macros("T", macros)
        return await self._ask(SMFIC_DATA, b"", SMFIP_NR_DATA)

    async def header(self, name: str, value: bytes) -> Reply | None:
        """HEADER: ``value`` is every byte after the colon; without HDR_LEADSPC one leading
        space is dropped, as Sendmail does."""
        if self._protocol & SMFIP_NOHDRS:
            return None
        if not self._protocol & SMFIP_HDR_LEADSPC and value[:1] == b" ":
            value = value[1:]
        return await self._ask(SMFIC_HEADER, _z(name, value), SMFIP_NR_HDR)

    async def end_of_headers(self, macros: Mapping[str, str] | None = None) -> Reply | None:
        if self._protocol & SMFIP_NOEOH:
            return None
        self._macros("N", macros)
        return await self._ask(SMFIC_EOH, b"", SMFIP_NR_EOH)

    async def body(self, chunk: bytes) -> Reply | None:
        if self._protocol & SMFIP_NOBODY or self.skipped_body:
            return None
        return await self._ask(SMFIC_BODY, chunk, SMFIP_NR_BODY)

    async def end_of_message(self, macros: Mapping[str, str] | None = None,
                             ) -> tuple[Reply, tuple[ClientModification, ...]]:
        """BODYEOB: the modifications the milter sent, then its verdict."""
        self._macros("E", macros)
        self._send(SMFIC_BODYEOB)
        await self.writer.drain()
        changes: list[ClientModification] = []
        while True:
            kind, payload = await self._packet()
            if kind in _MODIFICATIONS or kind in _OTHER_MODIFICATIONS:
                changes.append(decode_modification(kind, payload))
                continue
            return decode_reply(kind, payload), tuple(changes)

    async def abort(self) -> None:
        self._send(SMFIC_ABORT)
        await self.writer.drain()

    async def quit(self, *, new_connection: bool = False) -> None:
        """QUIT, or QUIT_NC to keep the connection for the next session."""
        self._send(SMFIC_QUIT_NC if new_connection else SMFIC_QUIT)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # the milter may have gone first
            await self.writer.wait_closed()

    # -- a whole message ----------------------------------------------------------------

    async def session(self, envelope: Envelope, message: Prepared) -> Outcome:
        """CONNECT, HELO and one message, after ``negotiate``; the connection stays open
        (call ``quit`` or ``quit(new_connection=True)`` after)."""
        m = envelope.macros
        address = envelope.client_address or None
        reply = await self.connect(envelope.client_name, address, envelope.client_port,
                                   m.get("C"))
        if _final(reply):
            return Outcome("connect", _reply(reply))
        reply = await self.helo(envelope.helo_name, m.get("H"))
        if _final(reply):
            return Outcome("helo", _reply(reply))
        return await self.message(envelope, message)

    async def message(self, envelope: Envelope, message: Prepared) -> Outcome:
        """MAIL through end of message; ABORT when the milter stopped the message early."""
        m = envelope.macros
        outcome = await self._envelope(envelope)
        if outcome is not None:
            await self.abort()
            return outcome
        reply = await self.data(m.get("T"))
        if _final(reply):
            await self.abort()
            return Outcome("data", _reply(reply))
        for name, value in message.headers:
            reply = await self.header(name, value)
            if _final(reply):
                await self.abort()
                return Outcome("header", _reply(reply))
        reply = await self.end_of_headers(m.get("N"))
        if _final(reply):
            await self.abort()
            return Outcome("eoh", _reply(reply))
        for chunk in message.chunks:
            reply = await self.body(chunk)
            if _final(reply):
                await self.abort()
                return Outcome("body", _reply(reply))
        verdict, changes = await self.end_of_message(m.get("E"))
        return Outcome("eom", verdict, changes)

    async def _envelope(self, envelope: Envelope) -> Outcome | None:
        m = envelope.macros
        reply = await self.mail([f"<{envelope.sender}>"], m.get("M"))
        if _final(reply):
            return Outcome("mail", _reply(reply))
        refused: list[str] = []
        last: Reply = Verdict.CONTINUE
        for recipient in envelope.recipients:
            reply = await self.rcpt([f"<{recipient}>"], m.get("R"))
            if reply in (Verdict.ACCEPT, Verdict.DISCARD):
                return Outcome("rcpt", reply)
            if _final(reply):
                refused.append(recipient)
                last = _reply(reply)
        if refused and len(refused) == len(envelope.recipients):
            return Outcome("rcpt", last, (), tuple(refused))
        return None


def _final(reply: Reply | None) -> bool:
    return reply is not None and reply is not Verdict.CONTINUE


def _reply(reply: Reply | None) -> Reply:
    return Verdict.CONTINUE if reply is None else reply


async def deliver(endpoint: str, envelope: Envelope, message: bytes | Prepared, *,
                  timeout: float = DEFAULT_TIMEOUT, protocol: int = POSTFIX_PROTOCOL,
                  ) -> Outcome:
    """One SMTP session through the milter at ``endpoint``: a new connection, OPTNEG,
    CONNECT, HELO, one message, QUIT, as smtpd does for a client sending one message."""
    prepared = message if isinstance(message, Prepared) else prepare(message)
    client = await MilterClient.open(endpoint, timeout=timeout)
    try:
        await client.negotiate(protocol=protocol)
        outcome = await client.session(envelope, prepared)
        await client.quit()
        return outcome
    finally:
        await client.close()
