"""The SMTP client codec: replies at any chunk size, limits, malformed input, fuzzing,
command and DATA encoding, EHLO parsing and the masked, bounded transcript."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.probe.smtp import (
    MAX_BUFFER,
    MAX_LINE,
    MAX_LINES,
    Reply,
    ReplyParser,
    SmtpCommandError,
    SmtpProtocolError,
    Transcript,
    auth_plain_response,
    command,
    data_bytes,
    parse_ehlo,
)

CHUNKS = (1, 2, 16, 4096)

# Postfix 3.7.11's greeting and EHLO reply as seen from an outside client, then a
# pipelined group's replies in one stream.
STREAM = (b"220 postwarden-test.localdomain ESMTP Postfix (Debian/GNU)\r\n"
          b"250-postwarden-test.localdomain\r\n"
          b"250-PIPELINING\r\n"
          b"250-SIZE 10240000\r\n"
          b"250-VRFY\r\n"
          b"250-ETRN\r\n"
          b"250-STARTTLS\r\n"
          b"250-AUTH PLAIN LOGIN\r\n"
          b"250-ENHANCEDSTATUSCODES\r\n"
          b"250-8BITMIME\r\n"
          b"250 SMTPUTF8\r\n"
          b"250 2.1.0 Ok\r\n"
          b"554 5.7.1 <relaytest@example.com>: Relay access denied\r\n"
          b"354 End data with <CR><LF>.<CR><LF>\r\n"
          b"221\r\n")


def parse(data: bytes, chunk: int, complete: bool = True) -> list[Reply]:
    parser = ReplyParser()
    replies = []
    for start in range(0, len(data), chunk):
        parser.feed(data[start:start + chunk])
        while (reply := parser.next_reply()) is not None:
            replies.append(reply)
    assert parser.pending == 0 or not complete
    return replies


def failure(data: bytes, chunk: int) -> str:
    with pytest.raises(SmtpProtocolError) as caught:
        parse(data, chunk)
    return str(caught.value)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_replies_at_every_chunk_size(chunk: int) -> None:
    replies = parse(STREAM, chunk)
    assert [r.code for r in replies] == [220, 250, 250, 554, 354, 221]
    banner, ehlo, mail, rcpt, data, quit_ = replies
    assert banner.lines == ("postwarden-test.localdomain ESMTP Postfix (Debian/GNU)",)
    assert len(ehlo.lines) == 10 and ehlo.lines[-1] == "SMTPUTF8"
    assert mail.enhanced == "2.1.0" and mail.positive
    assert rcpt.is_permanent and not rcpt.is_transient and not rcpt.positive
    assert rcpt.enhanced == "5.7.1"
    assert str(rcpt) == "554 5.7.1 <relaytest@example.com>: Relay access denied"
    assert data.positive and data.enhanced == ""
    assert quit_.lines == ("",) and str(quit_) == "221"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_bare_lf_line_ends_are_tolerated(chunk: int) -> None:
    replies = parse(STREAM.replace(b"\r\n", b"\n"), chunk)
    assert replies == parse(STREAM, 4096)


def test_cr_inside_a_line_is_text_and_escaped_when_shown() -> None:
    [reply] = parse(b"450 4.7.1 try\ragain \x1b[31mlater\r\n", 4096)
    assert reply.is_transient and reply.text == "4.7.1 try\ragain \x1b[31mlater"
    assert str(reply) == "450 4.7.1 try\\ragain \\x1b[31mlater"


def test_reply_properties() -> None:
    reply = Reply(250, ("postwarden-test.localdomain", "PIPELINING"))
    assert reply.text == "postwarden-test.localdomain PIPELINING"
    assert reply.wire_lines() == ["250-postwarden-test.localdomain", "250 PIPELINING"]
    assert Reply(550, ("5.1.1x nope",)).enhanced == ""
    assert Reply(421, ("4.7.0 Error: too many connections",)).is_transient
    assert Reply(550, ()).enhanced == "" and str(Reply(550, ())) == "550"
    assert not Reply(199, ("x",)).positive


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("data", "reason"), [
    (b"hello\r\n", "without a three-digit code"),
    (b"25 ok\r\n", "without a three-digit code"),
    (b"2500 ok\r\n", "without a three-digit code"),
    (b"250_ok\r\n", "without a three-digit code"),
    (b"650 ok\r\n", "without a three-digit code"),
    (b"\r\n", "without a three-digit code"),
    (b"250-a\r\n251 b\r\n", "code changes within one reply: 250 then 251"),
    (b"x" * (MAX_LINE + 10) + b"\r\n", f"longer than {MAX_LINE} bytes"),
    (b"250-" + b"x" * (MAX_LINE - 3) + b"\r\n", f"longer than {MAX_LINE} bytes"),
    (b"250-x\r\n" * MAX_LINES + b"250 x\r\n", f"more than {MAX_LINES} lines"),
])
def test_malformed_and_oversized_replies_fail(chunk: int, data: bytes, reason: str) -> None:
    assert reason in failure(data, chunk)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_limits_are_inclusive(chunk: int) -> None:
    longest = b"250 " + b"x" * (MAX_LINE - 4) + b"\r\n"
    most = b"250-x\r\n" * (MAX_LINES - 1) + b"250 x\r\n"
    longest_reply, most_reply = parse(longest + most, chunk)
    assert len(longest_reply.text) == MAX_LINE - 4
    assert len(most_reply.lines) == MAX_LINES


def test_buffer_limit_counts_the_reply_being_assembled() -> None:
    parser = ReplyParser()
    line = b"250-" + b"x" * 1000 + b"\r\n"
    with pytest.raises(SmtpProtocolError, match=f"more than {MAX_BUFFER} bytes"):
        for _ in range(MAX_LINES):
            parser.feed(line)
            assert parser.next_reply() is None


def test_unterminated_line_fails_before_its_end_arrives() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * (MAX_LINE - 3))  # a CR may still follow
    with pytest.raises(SmtpProtocolError):
        parser.feed(b"xx")


def test_parser_stays_dead_after_an_error() -> None:
    parser = ReplyParser()
    parser.feed(b"oops\r\n250 fine\r\n")
    with pytest.raises(SmtpProtocolError) as first:
        parser.next_reply()
    with pytest.raises(SmtpProtocolError) as again:
        parser.next_reply()
    assert again.value is first.value
    with pytest.raises(SmtpProtocolError):
        parser.feed(b"250 more\r\n")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), chunk=st.sampled_from(CHUNKS))
def test_fuzz_only_protocol_errors(data: bytes, chunk: int) -> None:
    try:
        replies = parse(data, chunk, complete=False)
    except SmtpProtocolError:
        return
    assert replies == parse(data, 4096, complete=False)  # same replies at any chunk size


line_text = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(code=st.integers(200, 599), lines=st.lists(line_text, min_size=1, max_size=5),
       chunk=st.sampled_from(CHUNKS))
def test_fuzz_wire_lines_round_trip(code: int, lines: list[str], chunk: int) -> None:
    reply = Reply(code, tuple(lines))
    wire = "".join(f"{line}\r\n" for line in reply.wire_lines()).encode()
    assert parse(wire, chunk) == [reply]


def test_command_encoding() -> None:
    assert command("EHLO", "client.example") == b"EHLO client.example\r\n"
    assert command("QUIT") == b"QUIT\r\n"
    assert command("MAIL", "FROM:<>") == b"MAIL FROM:<>\r\n"
    utf8 = "TO:<j\u00f6rg@example.org>"
    assert command("RCPT", utf8) == f"RCPT {utf8}\r\n".encode()


@pytest.mark.parametrize(("verb", "argument"), [
    ("RCPT", "TO:<a@example.org>\r\nDATA"),
    ("RCPT", "TO:<a@example.org>\nRSET"),
    ("NOOP", "x\ry"),
    ("NOOP", "\0"),
    ("NO\nOP", ""),
    ("", "x"),
    ("MAIL FROM:<>", ""),
])
def test_command_refuses_smuggled_lines(verb: str, argument: str) -> None:
    with pytest.raises(SmtpCommandError):
        command(verb, argument)


@pytest.mark.parametrize(("message", "wire"), [
    (b"Subject: x\r\n\r\nhello\r\n", b"Subject: x\r\n\r\nhello\r\n.\r\n"),
    (b"Subject: x\n\nhello", b"Subject: x\r\n\r\nhello\r\n.\r\n"),
    (b".leading\r\n.\r\nmid\r\n..two\r\n", b"..leading\r\n..\r\nmid\r\n...two\r\n.\r\n"),
    (b"a\rb\n.c", b"a\r\nb\r\n..c\r\n.\r\n"),
    (b"", b".\r\n"),
])
def test_data_bytes_normalises_and_dot_stuffs(message: bytes, wire: bytes) -> None:
    assert data_bytes(message) == wire


@given(st.binary(max_size=200))
def test_data_bytes_never_ends_the_data_early(message: bytes) -> None:
    wire = data_bytes(message)
    assert wire.endswith(b".\r\n")
    body = b"\r\n" + wire[:-3]
    assert b"\r\n.\r\n" not in body
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")


def test_parse_ehlo() -> None:
    [_, ehlo, *_] = parse(STREAM, 4096)
    extensions = parse_ehlo(ehlo)
    assert extensions["AUTH"] == "PLAIN LOGIN"
    assert extensions["SIZE"] == "10240000"
    assert extensions["STARTTLS"] == ""
    assert "POSTWARDEN-TEST.LOCALDOMAIN" not in extensions
    assert list(extensions) == ["PIPELINING", "SIZE", "VRFY", "ETRN", "STARTTLS", "AUTH",
                                "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]


def test_parse_ehlo_legacy_auth_and_odd_lines() -> None:
    reply = Reply(250, ("mx", "auth=LOGIN", "xclient  NAME   ADDR", "@@ junk", "AUTH PLAIN"))
    assert parse_ehlo(reply) == {"AUTH": "PLAIN", "XCLIENT": "NAME ADDR"}
    assert parse_ehlo(Reply(250, ("mx", "AUTH=LOGIN"))) == {"AUTH": "LOGIN"}
    assert parse_ehlo(Reply(502, ("5.5.2 Error: command not recognized",))) == {}


def test_transcript_renders_and_masks_auth() -> None:
    transcript = Transcript()
    transcript.note("connected to 127.0.0.1:25")
    transcript.client(b"EHLO client.example\r\n")
    transcript.server(Reply(250, ("mx", "AUTH PLAIN LOGIN")))
    secret = auth_plain_response("user", "s3cret")
    transcript.client(f"AUTH PLAIN {secret}\r\n".encode())
    transcript.server(Reply(235, ("2.7.0 Authentication successful",)))
    transcript.client(b"AUTH LOGIN\r\n")
    transcript.server(Reply(334, ("VXNlcm5hbWU6",)))
    transcript.client(base64.b64encode(b"user") + b"\r\n")
    transcript.server(Reply(334, ("UGFzc3dvcmQ6",)))
    transcript.client(base64.b64encode(b"s3cret") + b"\r\n")
    transcript.server(Reply(535, ("5.7.8 Error: authentication failed",)))
    transcript.client(b"auth login dXNlcg==\r\n")
    transcript.server(Reply(334, ("UGFzc3dvcmQ6",)))
    transcript.client(b"*\r\n")
    transcript.server(Reply(501, ("5.7.0 Authentication aborted",)))
    transcript.client(b"MAIL FROM:<>\r\n")
    lines = transcript.lines()
    assert lines == [
        "*: connected to 127.0.0.1:25",
        "C: EHLO client.example",
        "S: 250-mx",
        "S: 250 AUTH PLAIN LOGIN",
        "C: AUTH PLAIN ****",
        "S: 235 2.7.0 Authentication successful",
        "C: AUTH LOGIN",
        "S: 334 VXNlcm5hbWU6",
        "C: ****",
        "S: 334 UGFzc3dvcmQ6",
        "C: ****",
        "S: 535 5.7.8 Error: authentication failed",
        "C: auth login ****",
        "S: 334 UGFzc3dvcmQ6",
        "C: *",
        "S: 501 5.7.0 Authentication aborted",
        "C: MAIL FROM:<>",
    ]
    text = "\n".join(lines)
    assert secret not in text and base64.b64encode(b"s3cret").decode() not in text
    assert "dXNlcg==" not in text
    assert transcript.lines(len(transcript) - 1) == ["C: MAIL FROM:<>"]


def test_transcript_shows_bare_line_ends_and_pipelined_groups() -> None:
    transcript = Transcript()
    transcript.client(b"DATA\r\nSubject: x\r\n\r\nbody\n.\nMAIL FROM:<a@b.example>\r\n")
    transcript.client(b"text\r.\r")
    assert transcript.lines() == [
        "C: DATA", "C: Subject: x", "C: ", "C: body\\n.\\nMAIL FROM:<a@b.example>",
        "C: text\\r.\\r"]


def test_transcript_is_bounded_and_says_so() -> None:
    transcript = Transcript(max_entries=5, max_chars=10_000)
    for number in range(8):
        transcript.client(f"NOOP {number}\r\n".encode())
    assert len(transcript) == 5
    assert transcript.lines()[-1] == "*: transcript truncated, 3 more entries not kept"
    by_size = Transcript(max_entries=500, max_chars=100)
    by_size.client(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n" + b"z\r\n")
    assert [entry[1][0] for entry in by_size.entries] == ["x", "z"] and by_size.dropped == 1
    huge = Transcript()
    huge.client(b"w" * 10_000 + b"\r\n")
    assert len(huge.entries[0][1]) == 2048 + 3


def test_auth_plain_response() -> None:
    assert base64.b64decode(auth_plain_response("u", "p")) == b"\0u\0p"
    with pytest.raises(SmtpCommandError):
        auth_plain_response("u\0x", "p")
