"""The policy protocol codec: requests at any chunk size, every limit, replies, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.policy.model import PolicyRequest
from postwarden.policy.protocol import (
    MAX_ATTRIBUTES,
    MAX_BUFFER,
    MAX_LINE,
    MAX_REQUEST,
    LocalProtocolError,
    ProtocolError,
    RequestDecoder,
    encode_reply,
)

CHUNKS = (1, 2, 16, 4096)

# What smtpd 3.7 sends at RCPT time (SMTPD_POLICY_README's example, with 3.x attributes).
RCPT = (b"request=smtpd_access_policy\n"
        b"protocol_state=RCPT\n"
        b"protocol_name=ESMTP\n"
        b"client_address=203.0.113.7\n"
        b"client_name=mail.example.net\n"
        b"reverse_client_name=mail.example.net\n"
        b"client_port=49152\n"
        b"helo_name=mail.example.net\n"
        b"sender=alice@example.net\n"
        b"recipient=bob@example.org\n"
        b"recipient_count=0\n"
        b"queue_id=\n"
        b"instance=123.456.7\n"
        b"size=1234\n"
        b"sasl_method=\n"
        b"ccert_subject=\n"
        b"stress=\n"
        b"\n")
SECOND = (b"request=smtpd_access_policy\nprotocol_state=DATA\nrecipient_count=3\n"
          b"sender=J\xc3\xb6rg@example.de\nclient_address=2001:db8::1\n\n")


def decode(stream: bytes, chunk: int) -> list[PolicyRequest]:
    decoder = RequestDecoder()
    found = []
    for start in range(0, len(stream), chunk):
        decoder.feed(stream[start:start + chunk])
        while (request := decoder.next_request()) is not None:
            found.append(request)
    return found


def failure(stream: bytes, chunk: int) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode(stream, chunk)
    return str(caught.value)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_requests_at_every_chunk_size(chunk: int) -> None:
    first, second = decode(RCPT + SECOND, chunk)
    assert first.protocol_state == "RCPT"
    assert first.client_address == "203.0.113.7"
    assert first.sender == "alice@example.net"
    assert first.recipient == "bob@example.org"
    assert first.get("queue_id") == ""
    assert second.protocol_state == "DATA"
    assert second.recipient_count == 3
    assert second.sender == "Jörg@example.de"
    assert str(second.client_ip) == "2001:db8::1"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_crlf_tolerated_and_values_may_hold_equals(chunk: int) -> None:
    (request,) = decode(b"request=smtpd_access_policy\r\nccert_subject=CN=a=b\r\n\r\n",
                        chunk)
    assert request.get("ccert_subject") == "CN=a=b"


def test_non_utf8_survives_round_trip() -> None:
    (request,) = decode(b"request=smtpd_access_policy\nsender=\xff\xfe@x\n\n", 4096)
    assert request.sender.encode("utf-8", "surrogateescape") == b"\xff\xfe@x"


def test_duplicate_attribute_last_wins() -> None:
    (request,) = decode(b"request=smtpd_access_policy\nsender=a@x\nsender=b@x\n\n", 16)
    assert request.sender == "b@x"


def test_partial_request_waits() -> None:
    decoder = RequestDecoder()
    decoder.feed(RCPT[:-1])
    assert decoder.next_request() is None
    assert decoder.in_request
    decoder.feed(b"\n")
    assert decoder.next_request() is not None
    assert not decoder.in_request


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("stream", "reason"), [
    (b"request=smtpd_access_policy\nno equals sign\n\n", "without '='"),
    (b"request=smtpd_access_policy\nsender=a\0b\n\n", "NUL"),
    (b"request=smtpd_access_policy\n=value\n\n", "empty name"),
    (b"request=smtpd_other\nsender=a\n\n", "expected request=smtpd_access_policy"),
    (b"sender=a\n\n", "no request attribute"),
    (b"\n", "empty request"),
])
def test_malformed_requests(chunk: int, stream: bytes, reason: str) -> None:
    assert reason in failure(stream, chunk)


@pytest.mark.parametrize("chunk", (16, 4096))
def test_line_limit(chunk: int) -> None:
    ok = b"request=smtpd_access_policy\nccert_subject=" + b"x" * (MAX_LINE - 14) + b"\n\n"
    assert len(decode(ok, chunk)) == 1
    long = b"request=smtpd_access_policy\nccert_subject=" + b"x" * MAX_LINE + b"\n\n"
    assert "line longer" in failure(long, chunk)


def test_long_line_fails_before_its_end_arrives() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"request=smtpd_access_policy\n")
    with pytest.raises(ProtocolError, match="line longer"):
        for _ in range(MAX_LINE + 1):
            decoder.feed(b"x")


def test_attribute_count_limit() -> None:
    lines = b"".join(b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES - 1))
    assert len(decode(b"request=smtpd_access_policy\n" + lines + b"\n", 4096)) == 1
    too_many = b"request=smtpd_access_policy\n" + lines + b"z=1\n\n"
    assert "attributes" in failure(too_many, 4096)


def test_request_size_limit() -> None:
    value = b"x" * 4000
    lines = b"".join(b"a%d=%s\n" % (i, value) for i in range(MAX_REQUEST // 4000 + 1))
    assert "request longer" in failure(b"request=smtpd_access_policy\n" + lines + b"\n", 4096)


def test_buffer_limit() -> None:
    decoder = RequestDecoder()
    with pytest.raises(ProtocolError, match="without waiting"):
        for _ in range(MAX_BUFFER // 100 + 2):
            decoder.feed(b"a=" + b"x" * 97 + b"\n")


def test_decoder_stays_failed() -> None:
    decoder = RequestDecoder()
    decoder.feed(b"junk\n")
    with pytest.raises(ProtocolError):
        decoder.next_request()
    with pytest.raises(ProtocolError):
        decoder.feed(RCPT)
    with pytest.raises(ProtocolError):
        decoder.next_request()


def test_reply() -> None:
    assert encode_reply("DUNNO") == b"action=DUNNO\n\n"
    assert encode_reply("DEFER_IF_PERMIT Greylisted, see http://x/") == (
        b"action=DEFER_IF_PERMIT Greylisted, see http://x/\n\n")
    assert encode_reply("PREPEND X-Test: J\u00f6rg") == "action=PREPEND X-Test: Jörg\n\n".encode()


@pytest.mark.parametrize("action", ["", "  ", "DUNNO\naction=OK", "REJECT a\rb", "OK\0",
                                    "REJECT \udcff", "REJECT " + "x" * MAX_LINE])
def test_reply_refused(action: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_reply(action)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_fuzz_only_protocol_errors(chunks: list[bytes]) -> None:
    decoder = RequestDecoder()
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while decoder.next_request() is not None:
                pass
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(st.characters(exclude_characters="=\n\r\0",
                                             exclude_categories=["Cs"]),
                               min_size=1, max_size=20).filter(lambda s: s != "request"),
                       st.text(st.characters(exclude_characters="\n\r\0",
                                             exclude_categories=["Cs"]), max_size=50),
                       max_size=30),
       st.sampled_from(CHUNKS))
def test_fuzz_round_trip(attributes: dict[str, str], chunk: int) -> None:
    stream = b"request=smtpd_access_policy\n" + b"".join(
        f"{k}={v}\n".encode("utf-8", "surrogateescape") for k, v in attributes.items()
    ) + b"\n"
    (request,) = decode(stream, chunk)
    assert dict(request.attributes) == {"request": "smtpd_access_policy", **attributes}


def outcome(stream: bytes, chunk: int) -> list[dict[str, str]] | str:
    """The requests' attributes, or the protocol error's text."""
    try:
        return [dict(request.attributes) for request in decode(stream, chunk)]
    except ProtocolError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"request=smtpd_access_policy", b"a=1", b"a=2", b"=x",
                                 b"b", b"c==d", b"", b"e=\xff\xfe", b"f=\xc3\xb6", b"\r",
                                 b"g=h\r", b"=", b"i=\0"]), max_size=12))
def test_fast_path_and_line_by_line_agree(lines: list[bytes]) -> None:
    """A request fed whole takes the one-pass path; fed a byte at a time it is read line
    by line. Both must find the same attributes, or fail with the same error (the fast
    path leaves anything unusual to the line-by-line one, which names it)."""
    stream = b"\n".join(lines) + b"\n\n"
    assert outcome(stream, len(stream)) == outcome(stream, 1)
