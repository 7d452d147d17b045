"""The milter server: a scripted MTA over real sockets, then a real Postfix using it.

The first tests drive ``MilterServer`` with a small MTA-side client written here, over TCP
and a unix socket in the same process: command order, fail-safe, protocol errors, many
connections. The last one starts a private Postfix instance with ``smtpd_milters``
pointing at the server (run in a thread) and sends mail through it with smtplib.

Security: everything listens on 127.0.0.1 or in a private temporary directory.
Standards: Postfix MILTER_README (milter_protocol = 6, milter_default_action); RFC 5321
(550 reply to RCPT); RFC 5322 2.2 (header fields kept byte-exact).
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden.errors import PostwardenError
from postwarden.listen import bind_tcp, bind_unix
from postwarden.milter.protocol import (
    SMFIF_ADDHDRS,
    SMFIP_HDR_LEADSPC,
    SMFIP_NR_HDR,
    AddHeader,
    EndOfMessage,
    Header,
    MilterReplyError,
    RcptTo,
    Reply,
    ReplyCode,
    Verdict,
)
from postwarden.milter.server import (
    BaseHandler,
    EndOfMessageResult,
    MilterOptions,
    MilterServer,
    SessionContext,
)
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance

NewRoot = Callable[[], Path]
OUTSIDE = "127.0.0.2"
REJECT_TEXT = "5.7.1 reject-me refused by the postwarden test milter"


class TestHandler(BaseHandler):
    """Rejects RCPT reject-me@..., records headers, adds X-Postwarden-Test at the end."""

    __test__ = False  # not a pytest class

    def __init__(self, seen: list[list[tuple[str, bytes]]]) -> None:
        self.seen = seen
        self.headers: list[tuple[str, bytes]] = []

    async def rcpt_to(self, ctx: SessionContext, event: RcptTo) -> Reply:
        if event.args[0].lower().startswith("<reject-me@"):
            return ReplyCode(550, REJECT_TEXT)
        if event.args[0].lower().startswith("<crash@"):
            raise RuntimeError("handler bug on purpose")
        return Verdict.CONTINUE

    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        self.headers.append((event.name, event.value))
        return Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        self.seen.append(self.headers)
        self.headers = []
        return EndOfMessageResult(Verdict.CONTINUE, (AddHeader("X-Postwarden-Test", b" yes"),))

    async def abort(self, ctx: SessionContext) -> None:
        self.seen.append([("<abort>", b"")])
        self.headers = []


# -- a scripted MTA ---------------------------------------------------------------------------


def pkt(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", 1 + len(data)) + command + data


def z(*parts: bytes) -> bytes:
    return b"".join(part + b"\0" for part in parts)


class Mta:
    """The MTA side of one milter connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, command: bytes, data: bytes = b"") -> None:
        self.writer.write(pkt(command, data))
        await self.writer.drain()

    async def reply(self) -> tuple[bytes, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(4), 5)
        (length,) = struct.unpack("!I", head)
        body = await self.reader.readexactly(length)
        return body[:1], body[1:]

    async def ask(self, command: bytes, data: bytes = b"") -> tuple[bytes, bytes]:
        await self.send(command, data)
        return await self.reply()

    async def optneg(self, actions: int = 0x1FF, protocol: int = 0x1FFFFF) -> tuple[int, ...]:
        command, data = await self.ask(b"O", struct.pack("!III", 6, actions, protocol))
        assert command == b"O"
        return struct.unpack("!III", data[:12])

    async def message(self, rcpt: bytes = b"<bob@example.org>") -> list[tuple[bytes, bytes]]:
        """MAIL .. end of message; the replies from RCPT on."""
        await self.send(b"D", b"M" + z(b"i", b"ABC123"))
        assert await self.ask(b"M", z(b"<alice@example.net>")) == (b"c", b"")
        replies = [await self.ask(b"R", z(rcpt))]
        if replies[0][0] != b"c":
            return replies
        for command, data in ((b"T", b""), (b"L", z(b"Subject", b"\tx  y")), (b"N", b""),
                              (b"B", b"body\r\n")):
            assert await self.ask(command, data) == (b"c", b"")
        await self.send(b"E")
        while True:
            replies.append(await self.reply())
            if replies[-1][0] in b"cart":
                break
        await self.send(b"A")
        await self.send(b"A")  # as Postfix does after end of message
        return replies

    async def eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""


async def connect_mta(where: tuple[str, int] | Path) -> Mta:
    if isinstance(where, Path):
        return Mta(*await asyncio.open_unix_connection(str(where)))
    return Mta(*await asyncio.open_connection(*where))


async def start_mta(mta: Mta) -> None:
    await mta.optneg()
    await mta.send(b"D", b"C" + z(b"j", b"mx.example.org"))
    connect = z(b"client.example") + b"4" + struct.pack("!H", 4711) + z(b"192.0.2.1")
    assert await mta.ask(b"C", connect) == (b"c", b"")
    assert await mta.ask(b"H", z(b"client.example")) == (b"c", b"")


def run_with_server(body: Callable[[MilterServer, tuple[str, int]], object],
                    seen: list[list[tuple[str, bytes]]] | None = None,
                    options: MilterOptions | None = None) -> None:
    found = [] if seen is None else seen

    async def main() -> None:
        sock = bind_tcp("127.0.0.1", 0)
        address = sock.getsockname()
        async with MilterServer(lambda: TestHandler(found), [sock], options) as server:
            await body(server, address)  # type: ignore[misc]

    asyncio.run(main())


ADD_HEADER = (b"h", z(b"X-Postwarden-Test", b" yes"))


def test_session_over_tcp_two_messages_and_quit() -> None:
    seen: list[list[tuple[str, bytes]]] = []

    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        version, actions, protocol = await mta.optneg()
        assert (version, protocol) == (6, SMFIP_HDR_LEADSPC)
        assert actions & SMFIF_ADDHDRS
        await mta.send(b"D", b"C" + z(b"j", b"mx.example.org"))
        assert await mta.ask(b"C", z(b"c") + b"4" + b"\0\x19" + z(b"192.0.2.1")) == (b"c", b"")
        assert await mta.message() == [(b"c", b""), ADD_HEADER, (b"c", b"")]
        assert await mta.message(b"<reject-me@example.org>") == [
            (b"y", f"550 {REJECT_TEXT}".encode() + b"\0")]
        await mta.send(b"A")  # the rejected message is abandoned: the handler hears of it
        assert await mta.message() == [(b"c", b""), ADD_HEADER, (b"c", b"")]
        await mta.send(b"Q")
        assert await mta.eof()

    run_with_server(body, seen)
    # the ABORTs after each end of message reach no handler; the one mid-message does
    assert seen == [[("Subject", b"\tx  y")], [("<abort>", b"")], [("Subject", b"\tx  y")]]


def test_handler_error_gives_failsafe_and_the_connection_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        await start_mta(mta)
        assert await mta.message(b"<crash@example.org>") == [(b"a", b"")]
        await mta.send(b"A")
        assert await mta.message() == [(b"c", b""), ADD_HEADER, (b"c", b"")]

    with caplog.at_level(logging.ERROR, logger="postwarden.milter.server"):
        run_with_server(body, options=MilterOptions(failsafe=Verdict.ACCEPT))
    [record] = caplog.records
    assert "stage=RcptTo action=accept reason=internal-error" in record.getMessage()
    assert record.exc_info is not None and "on purpose" in str(record.exc_info[1])


def test_modification_not_negotiated_gives_failsafe(caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        await mta.optneg(actions=0)  # this MTA allows no header changes
        assert await mta.ask(b"C", z(b"c") + b"U") == (b"c", b"")
        assert await mta.message() == [(b"c", b""), (b"t", b"")]

    with caplog.at_level(logging.ERROR, logger="postwarden.milter.server"):
        run_with_server(body)
    assert "stage=EndOfMessage action=tempfail" in caplog.text
    assert "AddHeader was not negotiated" in caplog.text


@pytest.mark.parametrize("bad", [
    pkt(b"Z"),                                     # unknown command
    b"\xff\xff\xff\xff",                           # oversized length
    pkt(b"R", z(b"<bob@example.org>")),            # RCPT outside a message
    pkt(b"C", z(b"c") + b"U"),                     # a second CONNECT
])
def test_bad_input_closes_only_that_connection(bad: bytes,
                                               caplog: pytest.LogCaptureFixture) -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        good, evil = await connect_mta(address), await connect_mta(address)
        await start_mta(good)
        await start_mta(evil)
        evil.writer.write(bad)
        assert await evil.eof()
        assert await good.message() == [(b"c", b""), ADD_HEADER, (b"c", b"")]
        fresh = await connect_mta(address)
        await start_mta(fresh)

    with caplog.at_level(logging.WARNING, logger="postwarden.milter.server"):
        run_with_server(body)
    [record] = caplog.records
    assert "action=close reason=protocol-error" in record.getMessage()
    assert record.exc_info is None


def test_command_before_negotiation_is_a_protocol_error() -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        await mta.send(b"C", z(b"c") + b"U")
        assert await mta.eof()

    run_with_server(body)


def test_unknown_command_inside_a_message_keeps_it_open() -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        await start_mta(mta)
        assert await mta.ask(b"M", z(b"<alice@example.net>")) == (b"c", b"")
        assert await mta.ask(b"U", z(b"XFOO")) == (b"c", b"")
        assert await mta.ask(b"R", z(b"<bob@example.org>")) == (b"c", b"")
        assert await mta.ask(b"T") == (b"c", b"")
        assert await mta.ask(b"H", z(b"again.example")) == (b"c", b"")  # ends the message
        await mta.send(b"T")  # DATA outside a message now
        assert await mta.eof()

    run_with_server(body)


def test_bad_options_fail_at_start() -> None:
    with pytest.raises(MilterReplyError):
        MilterOptions(skip=SMFIP_NR_HDR)
    with pytest.raises(PostwardenError, match="accept or tempfail"):
        MilterOptions(failsafe=Verdict.REJECT)


def test_connection_reuse_with_quit_nc() -> None:
    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        mta = await connect_mta(address)
        await start_mta(mta)
        assert (await mta.message())[1] == ADD_HEADER
        await mta.send(b"K")
        assert await mta.ask(b"C", z(b"c") + b"U") == (b"c", b"")
        assert (await mta.message())[1] == ADD_HEADER

    run_with_server(body)


def test_many_concurrent_connections() -> None:
    seen: list[list[tuple[str, bytes]]] = []

    async def one(address: tuple[str, int]) -> list[tuple[bytes, bytes]]:
        mta = await connect_mta(address)
        await start_mta(mta)
        replies = await mta.message()
        await mta.send(b"Q")
        return replies

    async def body(server: MilterServer, address: tuple[str, int]) -> None:
        results = await asyncio.gather(*(one(address) for _ in range(100)))
        assert all(r == [(b"c", b""), ADD_HEADER, (b"c", b"")] for r in results)
        assert server.connections == 100

    run_with_server(body, seen)
    assert len(seen) == 100


def test_unix_socket_has_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: replaced

    async def main() -> None:
        sock = bind_unix(path, 0o660)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        async with MilterServer(lambda: TestHandler([]), [sock]):
            mta = await connect_mta(path)
            await start_mta(mta)
            assert (await mta.message())[1] == ADD_HEADER

    asyncio.run(main())


# -- a real Postfix ---------------------------------------------------------------------------


class ServerThread:
    """A MilterServer on 127.0.0.1 in its own event loop thread."""

    def __init__(self, seen: list[list[tuple[str, bytes]]]) -> None:
        self.sock = bind_tcp("127.0.0.1", 0)
        self.port: int = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.server = MilterServer(lambda: TestHandler(seen), [self.sock])
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def milter() -> Iterator[tuple[ServerThread, list[list[tuple[str, bytes]]]]]:
    seen: list[list[tuple[str, bytes]]] = []
    with ServerThread(seen) as server:
        yield server, seen


ODD_HEADERS = (b"Subject:\tweird  spacing\r\n"
               b"X-Odd:no-space\r\n"
               b"X-Fold: first\r\n\t second\r\n"
               b"X-Three:   three\r\n"
               b"From: alice@example.org\r\n"
               b"To: root@" + TEST_HOSTNAME.encode() + b"\r\n")


@pytest.mark.postfix
def test_postfix_uses_the_milter(new_root: NewRoot, milter: tuple[ServerThread,
                                                                  list[list[tuple[str, bytes]]]]
                                 ) -> None:
    server, seen = milter
    settings = {
        "smtpd_milters": f"inet:127.0.0.1:{server.port}",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
        # reject-me is not a local user; let smtpd accept it so the milter decides
        "local_recipient_maps": "",
    }
    with PostfixInstance(new_root(), main_cf=settings) as pf, \
            smtplib.SMTP(pf.address, pf.port, source_address=(OUTSIDE, 0), timeout=30) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("alice@example.org")[0] == 250
        code, text = smtp.rcpt(f"reject-me@{TEST_HOSTNAME}")
        assert (code, text.decode()) == (550, REJECT_TEXT)
        assert smtp.rcpt(f"root@{TEST_HOSTNAME}")[0] == 250
        code, reply = smtp.data(ODD_HEADERS + b"\r\nhello\r\n")
        assert code == 250, reply
        queue_id = re.search(rb"queued as ([0-9A-Za-z]+)", reply)
        assert queue_id is not None
        pf.wait_for_log(rf"{queue_id.group(1).decode()}: to=<root@{TEST_HOSTNAME}>, "
                        r".*status=sent", timeout=20)
        mailbox = (pf.mail_directory / "root").read_bytes()

    [headers] = seen
    received = dict(headers)
    # The milter saw every byte after the colon, as the client sent it (SMFIP_HDR_LEADSPC);
    # folded lines arrive joined by a bare LF.
    assert received["Subject"] == b"\tweird  spacing"
    assert received["X-Odd"] == b"no-space"
    assert received["X-Fold"] == b" first\n\t second"
    assert received["X-Three"] == b"   three"
    # ... and the mailbox holds the same bytes, plus the header the milter added.
    assert b"\nSubject:\tweird  spacing\n" in mailbox
    assert b"\nX-Odd:no-space\n" in mailbox
    assert b"\nX-Fold: first\n\t second\n" in mailbox
    assert b"\nX-Postwarden-Test: yes\n" in mailbox
