"""The milter codec: a Postfix transcript at any chunk size, every limit, replies, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.milter.protocol import (
    MAX_PACKET,
    SMFIA_INET,
    SMFIF_ADDHDRS,
    SMFIF_CHGHDRS,
    SMFIF_SETSYMLIST,
    SMFIM_CONNECT,
    SMFIM_ENVFROM,
    SMFIP_HDR_LEADSPC,
    SMFIP_NOBODY,
    SMFIP_NOHELO,
    SMFIP_NR_HDR,
    Abort,
    AddHeader,
    Body,
    ChangeHeader,
    Connect,
    Data,
    EndOfHeaders,
    EndOfMessage,
    Event,
    Header,
    Helo,
    InsertHeader,
    Macros,
    MailFrom,
    MilterDecoder,
    MilterProtocolError,
    MilterReplyError,
    OptNeg,
    Quarantine,
    Quit,
    QuitNewConnection,
    RcptTo,
    ReplyCode,
    Unknown,
    Verdict,
    encode_modification,
    encode_optneg,
    encode_progress,
    encode_reply,
    needs_reply,
    negotiate,
)

CHUNKS = (1, 2, 16, 4096)
POSTFIX_ACTIONS = 0x1FF        # Postfix 3.7 offers every action
POSTFIX_PROTOCOL = 0x1FFFFF    # and every protocol step, HDR_LEADSPC included


def packet(command: bytes, data: bytes = b"") -> bytes:
    """What the MTA side writes: length, command, data."""
    return struct.pack("!I", 1 + len(data)) + command + data


def z(*parts: bytes) -> bytes:
    return b"".join(part + b"\0" for part in parts)


# One SMTP session as Postfix 3.7 sends it to a milter (order and macros per MILTER_README).
TRANSCRIPT: list[tuple[bytes, Event]] = [
    (packet(b"O", struct.pack("!III", 6, POSTFIX_ACTIONS, POSTFIX_PROTOCOL)),
     OptNeg(6, POSTFIX_ACTIONS, POSTFIX_PROTOCOL)),
    (packet(b"D", b"C" + z(b"j", b"mx.example.org", b"{daemon_name}", b"smtpd", b"v",
                           b"Postfix 3.7.11")),
     Macros("C", {"j": "mx.example.org", "{daemon_name}": "smtpd", "v": "Postfix 3.7.11"})),
    (packet(b"C", b"mail.example.net\0" + b"4" + struct.pack("!H", 49152) + b"203.0.113.7\0"),
     Connect("mail.example.net", SMFIA_INET, 49152, "203.0.113.7")),
    (packet(b"H", z(b"mail.example.net")), Helo("mail.example.net")),
    (packet(b"D", b"M" + z(b"{mail_addr}", b"alice@example.net")),
     Macros("M", {"{mail_addr}": "alice@example.net"})),
    (packet(b"M", z(b"<alice@example.net>", b"SIZE=1234", b"BODY=8BITMIME")),
     MailFrom(("<alice@example.net>", "SIZE=1234", "BODY=8BITMIME"))),
    (packet(b"D", b"R" + z(b"i", b"4Xyz12")), Macros("R", {"i": "4Xyz12"})),
    (packet(b"R", z(b"<bob@example.org>")), RcptTo(("<bob@example.org>",))),
    (packet(b"T"), Data()),
    (packet(b"L", z(b"Subject", b"\tweird  spacing ")), Header("Subject", b"\tweird  spacing ")),
    (packet(b"L", z(b"To", b"bob@example.org")), Header("To", b"bob@example.org")),
    (packet(b"L", z(b"X-Fold", b" a\n\tb")), Header("X-Fold", b" a\n\tb")),
    (packet(b"L", z(b"X-8bit", b" caf\xc3\xa9 \xff")), Header("X-8bit", b" caf\xc3\xa9 \xff")),
    (packet(b"N"), EndOfHeaders()),
    (packet(b"B", b"hello\r\n\0world\r\n"), Body(b"hello\r\n\0world\r\n")),
    (packet(b"E"), EndOfMessage()),
    (packet(b"A"), Abort()),
    (packet(b"A"), Abort()),  # Postfix sends ABORT twice after end of message
    (packet(b"U", z(b"XFOO bar")), Unknown("XFOO bar")),
    (packet(b"K"), QuitNewConnection()),
    (packet(b"C", z(b"unknown") + b"U"), Connect("unknown", "U", None, None)),
    (packet(b"C", z(b"localhost") + b"6" + struct.pack("!H", 25) + z(b"IPv6:::1")),
     Connect("localhost", "6", 25, "IPv6:::1")),
    (packet(b"C", z(b"localhost") + b"L" + struct.pack("!H", 0) + z(b"/run/sock")),
     Connect("localhost", "L", 0, "/run/sock")),
    (packet(b"Q"), Quit()),
]
STREAM = b"".join(raw for raw, _ in TRANSCRIPT)


def decode_all(stream: bytes, chunk: int, *, complete: bool = True) -> list[Event]:
    """Feed ``stream`` in ``chunk``-byte reads, taking events between reads as an adapter
    does; with ``complete`` no bytes may be left over."""
    decoder = MilterDecoder()
    events: list[Event] = []
    for start in range(0, len(stream), chunk):
        decoder.feed(stream[start:start + chunk])
        while (event := decoder.next_event()) is not None:
            events.append(event)
    assert decoder.pending == 0 or not complete
    return events


@pytest.mark.parametrize("chunk", CHUNKS)
def test_transcript_at_every_chunk_size(chunk: int) -> None:
    assert decode_all(STREAM, chunk) == [event for _, event in TRANSCRIPT]


def test_incomplete_packet_waits() -> None:
    decoder = MilterDecoder()
    decoder.feed(packet(b"H", z(b"x"))[:-1])
    assert decoder.next_event() is None
    decoder.feed(b"\0")
    assert decoder.next_event() == Helo("x")


def test_strings_keep_non_utf8_bytes() -> None:
    [event] = decode_all(packet(b"M", z(b"<\xffa@b>")), 4096)
    assert isinstance(event, MailFrom)
    assert event.args[0].encode("utf-8", "surrogateescape") == b"<\xffa@b>"


@pytest.mark.parametrize("raw, reason", [
    (b"\0\0\0\0", "length 0"),
    (struct.pack("!I", MAX_PACKET + 1), "limit"),
    (packet(b"Z"), "unknown command"),
    (packet(b"H", b"no-nul"), "NUL"),
    (packet(b"H", z(b"a", b"b")), "one string"),
    (packet(b"L", z(b"only-name")), "name and a value"),
    (packet(b"L", z(b"", b"value")), "name and a value"),
    (packet(b"D", b"C" + z(b"j")), "without a value"),
    (packet(b"D"), "no command byte"),
    (packet(b"O", b"\0" * 11), "expected 12"),
    (packet(b"O", struct.pack("!III", 1, 0, 0)), "version 1"),
    (packet(b"C", z(b"host") + b"X" + b"\0\0" + z(b"a")), "family"),
    (packet(b"C", z(b"host") + b"4" + b"\0"), "truncated"),
    (packet(b"C", z(b"host")), "truncated"),
    (packet(b"T", b"x"), "unexpected 1 data"),
    (packet(b"Q", b"x"), "unexpected"),
])
def test_bad_input_is_a_protocol_error(raw: bytes, reason: str) -> None:
    decoder = MilterDecoder()
    with pytest.raises(MilterProtocolError, match=reason):
        decoder.feed(raw)
        decoder.next_event()
    # the decoder is dead afterwards: it never resynchronises on a lost stream
    with pytest.raises(MilterProtocolError, match=reason):
        decoder.next_event()
    with pytest.raises(MilterProtocolError, match=reason):
        decoder.feed(packet(b"T"))


def test_oversized_length_fails_before_the_data_arrives() -> None:
    decoder = MilterDecoder()
    decoder.feed(b"\0\x7f")
    with pytest.raises(MilterProtocolError, match="limit"):
        decoder.feed(b"\0\0")


def test_largest_packet_is_accepted() -> None:
    data = b"x" * (MAX_PACKET - 1)
    assert decode_all(packet(b"B", data), 65536) == [Body(data)]


def test_negotiate_asks_for_leading_space_when_offered() -> None:
    agreed = negotiate(OptNeg(6, POSTFIX_ACTIONS, POSTFIX_PROTOCOL), actions=SMFIF_ADDHDRS)
    assert agreed.protocol == SMFIP_HDR_LEADSPC
    assert agreed.actions == SMFIF_ADDHDRS
    assert encode_optneg(agreed) == packet(b"O", struct.pack("!III", 6, 1, SMFIP_HDR_LEADSPC))


def test_negotiate_masks_by_the_offer() -> None:
    offer = OptNeg(6, SMFIF_ADDHDRS, SMFIP_NOHELO)  # an old MTA: no LEADSPC, no CHGHDRS
    agreed = negotiate(offer, actions=SMFIF_ADDHDRS | SMFIF_CHGHDRS,
                       skip=SMFIP_NOHELO | SMFIP_NOBODY)
    assert agreed.actions == SMFIF_ADDHDRS
    assert agreed.protocol == SMFIP_NOHELO


def test_negotiate_older_version_and_symbol_lists() -> None:
    offer = OptNeg(6, POSTFIX_ACTIONS, POSTFIX_PROTOCOL)
    agreed = negotiate(offer, actions=0, macros={SMFIM_ENVFROM: ["{auth_type}", "i"],
                                                 SMFIM_CONNECT: ["j"]})
    assert agreed.actions == SMFIF_SETSYMLIST
    expected = (struct.pack("!III", 6, SMFIF_SETSYMLIST, SMFIP_HDR_LEADSPC)
                + struct.pack("!I", SMFIM_CONNECT) + b"j\0"
                + struct.pack("!I", SMFIM_ENVFROM) + b"{auth_type} i\0")
    assert encode_optneg(agreed) == packet(b"O", expected)
    assert negotiate(OptNeg(2, 0x3F, 0x7F), actions=SMFIF_ADDHDRS).version == 2


@pytest.mark.parametrize("kwargs", [{"skip": SMFIP_NR_HDR}, {"macros": {9: ["j"]}},
                                    {"macros": {SMFIM_CONNECT: ["a b"]}}])
def test_negotiate_refuses_what_cannot_be_sent(kwargs: dict[str, object]) -> None:
    with pytest.raises(MilterReplyError):
        negotiate(OptNeg(6, 0x1FF, 0x1FFFFF), actions=0, **kwargs)  # type: ignore[arg-type]


def test_needs_reply() -> None:
    assert needs_reply(Header("a", b"b"))
    assert not needs_reply(Header("a", b"b"), SMFIP_NR_HDR)
    for event in (Macros("C", {}), Abort(), Quit(), QuitNewConnection()):
        assert not needs_reply(event)
    assert needs_reply(EndOfMessage(), 0x1FFFFF)


def test_verdicts() -> None:
    assert encode_reply(Verdict.CONTINUE) == b"\0\0\0\x01c"
    assert encode_reply(Verdict.ACCEPT) == b"\0\0\0\x01a"
    assert encode_reply(Verdict.REJECT) == b"\0\0\0\x01r"
    assert encode_reply(Verdict.TEMPFAIL) == b"\0\0\0\x01t"
    assert encode_reply(Verdict.DISCARD) == b"\0\0\0\x01d"
    assert encode_progress() == b"\0\0\0\x01p"
    assert encode_reply(ReplyCode(550, "5.7.1 no thanks")) == packet(
        b"y", z(b"550 5.7.1 no thanks"))


@pytest.mark.parametrize("code, text", [(250, "ok"), (354, "go"), (600, "x"), (550, "a\r\nb"),
                                        (550, "a\nb"), (550, "a\0"), (450, "5.7.1 wrong class")])
def test_bad_reply_codes(code: int, text: str) -> None:
    with pytest.raises(MilterReplyError):
        ReplyCode(code, text)


def test_modifications() -> None:
    assert encode_modification(AddHeader("X-Test", b" yes")) == packet(b"h", z(b"X-Test", b" yes"))
    assert encode_modification(InsertHeader(0, "A-R", b" x;\n\tdkim=pass")) == packet(
        b"i", b"\0\0\0\0" + z(b"A-R", b" x;\n\tdkim=pass"))
    assert encode_modification(ChangeHeader(2, "Subject", b"")) == packet(
        b"m", b"\0\0\0\x02" + z(b"Subject", b""))
    assert encode_modification(Quarantine("dmarc=fail")) == packet(b"q", z(b"dmarc=fail"))


@pytest.mark.parametrize("change", [
    AddHeader("X-Test", b"yes\r\nBcc: victim@example.org"),   # would forge a second field
    AddHeader("X-Test", b"yes\nX: y"),
    AddHeader("X-Test", b"yes\n"),
    AddHeader("X-Test", b"a\0b"),
    AddHeader("X Test", b"a"),
    AddHeader("X-Test:", b"a"),
    AddHeader("", b"a"),
    ChangeHeader(0, "Subject", b"x"),
    InsertHeader(-1, "Subject", b"x"),
    Quarantine(""),
    Quarantine("a\nb"),
])
def test_modifications_that_cannot_be_sent(change: AddHeader | InsertHeader | ChangeHeader
                                           | Quarantine) -> None:
    with pytest.raises(MilterReplyError):
        encode_modification(change)


@settings(max_examples=300)
@given(st.binary(max_size=300), st.sampled_from(CHUNKS))
def test_fuzz_raw_bytes_raise_only_protocol_errors(raw: bytes, chunk: int) -> None:
    with contextlib.suppress(MilterProtocolError):
        decode_all(raw, chunk, complete=False)


@settings(max_examples=500)
@given(st.lists(st.tuples(st.sampled_from(b"ABCDEHKLMNOQRTUZ"), st.binary(max_size=40)),
                max_size=8),
       st.sampled_from(CHUNKS))
def test_fuzz_framed_packets_raise_only_protocol_errors(
        packets: list[tuple[int, bytes]], chunk: int) -> None:
    stream = b"".join(packet(bytes([command]), data) for command, data in packets)
    try:
        events = decode_all(stream, chunk)
    except MilterProtocolError:
        return
    assert len(events) == len(packets)
