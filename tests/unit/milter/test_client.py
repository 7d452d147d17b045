"""The milter client against postwarden's own MilterServer, over a real unix socket.

A recording handler shows what arrived (macros per stage, header values byte-exact, the
body); the outcomes show what the client made of the replies. Also: SMFIP_NR_* (the
client then does not wait, and a verdict the server could not send at once arrives at end
of message), macro lists asked for with SETSYMLIST, and a milter that misbehaves.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from postwarden.listen import bind_unix
from postwarden.milter.client import (
    Envelope,
    MilterClient,
    OtherModification,
    Outcome,
    decode_modification,
    decode_reply,
    deliver,
    prepare,
)
from postwarden.milter.protocol import (
    BODY_CHUNK,
    SMFIF_ADDHDRS,
    SMFIF_CHGHDRS,
    SMFIF_QUARANTINE,
    SMFIM_CONNECT,
    SMFIM_ENVFROM,
    SMFIP_HDR_LEADSPC,
    SMFIP_NOHELO,
    SMFIP_NR_FLAGS,
    SMFIP_NR_HDR,
    AddHeader,
    Body,
    ChangeHeader,
    Connect,
    EndOfMessage,
    Header,
    Helo,
    InsertHeader,
    MailFrom,
    MilterProtocolError,
    Quarantine,
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

MESSAGE = (b"From: Alice <alice@example.org>\r\n"
           b"To: bob@example.net\r\n"
           b"Subject:\tspaced   out\r\n"
           b"X-Fold: first\r\n"
           b"\t second\r\n"
           b"X-Bare:no-space\r\n"
           b"\r\n"
           b"Hello Bob,\r\n"
           b"\r\n"
           b"  indented line  \r\n")
ENVELOPE = Envelope(
    sender="alice@example.org", recipients=("bob@example.net", "carol@example.net"),
    client_address="192.0.2.7", client_port=4711, client_name="mail.example.org",
    helo_name="mail.example.org",
    macros={"C": {"j": "mx.example.net", "{daemon_name}": "smtpd", "v": "Postfix 3.7"},
            "M": {"i": "ABC123", "{auth_authen}": "alice"},
            "E": {"i": "ABC123"}})


class Recorder(BaseHandler):
    """Records what it is given; answers as ``script`` says at each step."""

    def __init__(self, log: list[tuple[str, object]], script: dict[str, Reply],
                 changes: tuple[AddHeader | InsertHeader | ChangeHeader | Quarantine, ...],
                 ) -> None:
        self.log, self.script, self.changes = log, script, changes

    async def connect(self, ctx: SessionContext, event: Connect) -> Reply:
        self.log.append(("connect", (event.hostname, event.family, event.port, event.address,
                                     dict(ctx.stage_macros.get("C", {})))))
        return self.script.get("connect", Verdict.CONTINUE)

    async def helo(self, ctx: SessionContext, event: Helo) -> Reply:
        self.log.append(("helo", event.helo_name))
        return Verdict.CONTINUE

    async def mail_from(self, ctx: SessionContext, event: MailFrom) -> Reply:
        self.log.append(("mail", (event.args, dict(ctx.stage_macros.get("M", {})))))
        return Verdict.CONTINUE

    async def rcpt_to(self, ctx: SessionContext, event: RcptTo) -> Reply:
        self.log.append(("rcpt", event.args))
        if event.args[0] == "<carol@example.net>":
            return self.script.get("rcpt-carol", Verdict.CONTINUE)
        return self.script.get("rcpt", Verdict.CONTINUE)

    async def header(self, ctx: SessionContext, event: Header) -> Reply:
        self.log.append(("header", (event.name, event.value)))
        return self.script.get(f"header-{event.name}",
                               self.script.get("header", Verdict.CONTINUE))

    async def body(self, ctx: SessionContext, event: Body) -> Reply:
        self.log.append(("body", event.chunk))
        return Verdict.CONTINUE

    async def end_of_message(self, ctx: SessionContext,
                             event: EndOfMessage) -> EndOfMessageResult:
        self.log.append(("eom", dict(ctx.stage_macros.get("E", {}))))
        return EndOfMessageResult(self.script.get("eom", Verdict.CONTINUE), self.changes)

    async def abort(self, ctx: SessionContext) -> None:
        self.log.append(("abort", None))


Scenario = Callable[[str], Awaitable[None]]


def serve(tmp_path: Path, body: Scenario, *, script: dict[str, Reply] | None = None,
          changes: tuple[AddHeader | InsertHeader | ChangeHeader | Quarantine, ...] = (),
          options: MilterOptions | None = None) -> list[tuple[str, object]]:
    log: list[tuple[str, object]] = []
    path = tmp_path / "milter.sock"

    async def main() -> None:
        sock = bind_unix(path, 0o600)
        async with MilterServer(lambda: Recorder(log, script or {}, changes), [sock],
                                options):
            await body(f"unix:{path}")

    asyncio.run(main())
    return log


def steps(log: list[tuple[str, object]]) -> list[str]:
    return [name for name, _ in log]


# -- prepare -----------------------------------------------------------------------------------


def test_prepare_splits_like_postfix() -> None:
    prepared = prepare(MESSAGE)
    assert prepared.headers == (
        ("From", b" Alice <alice@example.org>"), ("To", b" bob@example.net"),
        ("Subject", b"\tspaced   out"), ("X-Fold", b" first\n\t second"),
        ("X-Bare", b"no-space"))
    assert prepared.chunks == (b"Hello Bob,\r\n\r\n  indented line  \r\n",)
    assert prepare(MESSAGE.replace(b"\r\n", b"\n")) == prepared


def test_prepare_cuts_the_body_into_65535_byte_chunks() -> None:
    body = b"x" * 100 + b"\r\n"
    prepared = prepare(b"Subject: big\r\n\r\n" + body * 1000)
    assert [len(c) for c in prepared.chunks] == [BODY_CHUNK, len(body) * 1000 - BODY_CHUNK]
    assert b"".join(prepared.chunks) == body * 1000


def test_prepare_without_header_or_body() -> None:
    assert prepare(b"no header here\r\n").headers == ()
    assert prepare(b"no header here\r\n").chunks == (b"no header here\r\n",)
    assert prepare(b"Subject: only\r\n").chunks == ()


# -- against MilterServer ----------------------------------------------------------------------


def test_a_whole_session_as_postfix_sends_it(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []
    changes = (InsertHeader(0, "DKIM-Signature", b" v=1; d=example.org;\n\tb=abc"),
               AddHeader("X-Added", b" yes"), ChangeHeader(1, "X-Bare", b""),
               Quarantine("held for review"))

    async def body(endpoint: str) -> None:
        outcomes.append(await deliver(endpoint, ENVELOPE, MESSAGE))

    log = serve(tmp_path, body, changes=changes)
    assert outcomes == [Outcome("eom", Verdict.CONTINUE, changes)]
    assert outcomes[0].headers("dkim-signature") == [b" v=1; d=example.org;\n\tb=abc"]
    assert steps(log) == ["connect", "helo", "mail", "rcpt", "rcpt", "header", "header",
                          "header", "header", "header", "body", "eom"]
    assert log[0][1] == ("mail.example.org", "4", 4711, "192.0.2.7",
                         {"j": "mx.example.net", "{daemon_name}": "smtpd", "v": "Postfix 3.7"})
    assert log[2][1] == (("<alice@example.org>",), {"i": "ABC123", "{auth_authen}": "alice"})
    # HDR_LEADSPC was negotiated: every value exactly as in the message
    assert [v for k, v in log if k == "header"] == list(prepare(MESSAGE).headers)
    assert log[10][1] == b"Hello Bob,\r\n\r\n  indented line  \r\n"
    assert log[11][1] == {"i": "ABC123"}


def test_client_follows_the_negotiated_steps(tmp_path: Path) -> None:
    agreed = []

    async def body(endpoint: str) -> None:
        client = await MilterClient.open(endpoint)
        agreed.append(await client.negotiate())
        outcome = await client.session(ENVELOPE, prepare(MESSAGE))
        assert outcome.stage == "eom"
        await client.quit()
        await client.close()

    options = MilterOptions(skip=SMFIP_NOHELO, no_reply=SMFIP_NR_HDR,
                            macros={SMFIM_CONNECT: ["j"], SMFIM_ENVFROM: ["i"]})
    log = serve(tmp_path, body, options=options)
    assert agreed[0].protocol == SMFIP_NOHELO | SMFIP_NR_HDR | SMFIP_HDR_LEADSPC
    assert agreed[0].macros == {SMFIM_CONNECT: ("j",), SMFIM_ENVFROM: ("i",)}
    assert "helo" not in steps(log)
    assert log[0][1] == ("mail.example.org", "4", 4711, "192.0.2.7", {"j": "mx.example.net"})
    assert log[1][1] == (("<alice@example.org>",), {"i": "ABC123"})
    assert steps(log).count("header") == 5


def test_a_verdict_at_a_step_without_reply_arrives_at_end_of_message(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []

    async def body(endpoint: str) -> None:
        outcomes.append(await deliver(endpoint, ENVELOPE, MESSAGE))
        outcomes.append(await deliver(endpoint, ENVELOPE, MESSAGE))

    rejection = ReplyCode(550, "5.7.1 bad header")
    log = serve(tmp_path, body, script={"header": rejection},
                changes=(AddHeader("X-Dropped", b" yes"),),
                options=MilterOptions(no_reply=SMFIP_NR_FLAGS))
    # the MTA could not be told at the header; it is told instead of the end-of-message
    # answer, and the modifications are not sent
    assert outcomes == [Outcome("eom", rejection)] * 2
    assert steps(log).count("eom") == 2


def test_a_held_verdict_goes_with_an_aborted_message(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []

    async def body(endpoint: str) -> None:
        client = await MilterClient.open(endpoint)
        await client.negotiate()
        assert await client.connect("client.example", "192.0.2.1", 25) is None
        assert await client.mail(["<a@example.org>"]) is None
        for name, value in prepare(MESSAGE).headers:   # X-Bare is refused, unheard
            assert await client.header(name, value) is None
        await client.abort()                          # RSET: that message is gone
        outcomes.append(await client.message(ENVELOPE, prepare(b"Subject: ok\r\n\r\nhi\r\n")))
        await client.quit()
        await client.close()

    serve(tmp_path, body, script={"header-X-Bare": Verdict.REJECT},
          options=MilterOptions(no_reply=SMFIP_NR_FLAGS))
    assert outcomes == [Outcome("eom", Verdict.CONTINUE)]


def test_rejected_recipients_and_early_verdicts(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []

    async def body(endpoint: str) -> None:
        outcomes.append(await deliver(endpoint, ENVELOPE, MESSAGE))
        await asyncio.sleep(0.1)  # let the server take the ABORT before it stops

    refuse = ReplyCode(550, "5.1.1 no such user")
    serve(tmp_path, body, script={"rcpt-carol": refuse})
    assert outcomes[-1] == Outcome("eom", Verdict.CONTINUE)   # bob is still accepted
    log = serve(tmp_path, body, script={"rcpt-carol": refuse, "rcpt": refuse})
    assert outcomes[-1] == Outcome("rcpt", refuse, (), ("bob@example.net",
                                                        "carol@example.net"))
    assert steps(log)[-1] == "abort"
    serve(tmp_path, body, script={"connect": Verdict.TEMPFAIL})
    assert outcomes[-1] == Outcome("connect", Verdict.TEMPFAIL)
    serve(tmp_path, body, script={"eom": Verdict.REJECT})
    assert outcomes[-1] == Outcome("eom", Verdict.REJECT)


def test_a_handler_error_gives_the_failsafe(tmp_path: Path) -> None:
    outcomes: list[Outcome] = []

    async def body(endpoint: str) -> None:
        outcomes.append(await deliver(endpoint, ENVELOPE, MESSAGE))

    serve(tmp_path, body, changes=(AddHeader("Bad Name", b" x"),))  # not ftext: refused
    assert outcomes == [Outcome("eom", Verdict.TEMPFAIL)]


# -- a milter that misbehaves ------------------------------------------------------------------


def fake_milter(tmp_path: Path, answer: bytes, body: Scenario) -> None:
    path = tmp_path / "fake.sock"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(answer)
        await writer.drain()
        await reader.read(100)
        writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(handle, str(path))
        async with server:
            await body(f"unix:{path}")

    asyncio.run(main())


def test_a_reply_longer_than_the_limit_is_refused(tmp_path: Path) -> None:
    async def body(endpoint: str) -> None:
        client = await MilterClient.open(endpoint)
        with pytest.raises(MilterProtocolError, match="reply of"):
            await client.negotiate()
        await client.close()

    fake_milter(tmp_path, struct.pack("!I", 0x7FFFFFFF) + b"O", body)


def test_optneg_asking_for_more_than_offered_is_refused(tmp_path: Path) -> None:
    async def body(endpoint: str) -> None:
        client = await MilterClient.open(endpoint)
        with pytest.raises(MilterProtocolError, match="not offered"):
            await client.negotiate(actions=SMFIF_ADDHDRS)
        await client.close()

    reply = struct.pack("!III", 6, SMFIF_ADDHDRS | SMFIF_CHGHDRS, 0)
    fake_milter(tmp_path, struct.pack("!I", 13) + b"O" + reply, body)


def test_a_silent_milter_times_out(tmp_path: Path) -> None:
    async def body(endpoint: str) -> None:
        client = await MilterClient.open(endpoint, timeout=0.2)
        with pytest.raises(TimeoutError):
            await client.negotiate()
        await client.close()

    fake_milter(tmp_path, b"", body)


def test_decoders() -> None:
    assert decode_reply(b"c", b"") is Verdict.CONTINUE
    assert decode_reply(b"y", b"451 4.7.1 try later\0") == ReplyCode(451, "4.7.1 try later")
    with pytest.raises(MilterProtocolError):
        decode_reply(b"y", b"250 ok\0")
    with pytest.raises(MilterProtocolError):
        decode_reply(b"z", b"")
    assert decode_modification(b"i", struct.pack("!I", 2) + b"X\0 v\0") == \
        InsertHeader(2, "X", b" v")
    assert decode_modification(b"q", b"why\0") == Quarantine("why")
    assert decode_modification(b"+", b"<x@example.org>\0") == \
        OtherModification(b"+", b"<x@example.org>\0")
    with pytest.raises(MilterProtocolError):
        decode_modification(b"h", b"only-a-name\0")
    assert SMFIF_QUARANTINE  # the constant the quarantine action needs exists
