"""Authentication-Results written (folding, quoting, no injection) and read (authserv-id,
forgery check), policyd's SPF header, ARC sets (never raising on garbage)."""

from __future__ import annotations

import email.parser
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.milter.authres import (
    Method,
    authserv_id_of,
    claims,
    header_value,
    parse_arc,
    parse_received_spf,
    parse_value,
    policyd_spf_index,
    quote_value,
    spf_from_headers,
)
from postwarden.milter.dmarc import AuthOutcome
from postwarden.policy.model import PolicyRequest, SpfOutcome, SpfResult
from postwarden.policy.spf import SpfCheck, SpfSettings
from postwarden.testing.dns import FakeResolver

ID = "mx.example.net"
FIELD = "Authentication-Results: "


def lines(value: str) -> list[str]:
    return (FIELD + value).split("\n")


def reparse(value: str) -> list[tuple[str, str]]:
    """The header fields a mail parser finds in ``A-R: value`` followed by a body."""
    raw = (FIELD + value.replace("\n", "\r\n") + "\r\nSubject: x\r\n\r\nbody\r\n").encode()
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    return list(message.items())


FULL = [
    Method("spf", "pass", properties=(("smtp.mailfrom", "bounce+x=y@mail.example.com"),)),
    Method("dkim", "pass", reason="2048-bit key",
           properties=(("header.d", "example.com"), ("header.s", "s2026"),
                       ("header.b", "AbC/dE+f"))),
    Method("dkim", "fail", reason="signature did not verify",
           properties=(("header.d", "esp.example.org"), ("header.s", "k1"),
                       ("header.i", "@esp.example.org"))),
    Method("dmarc", "pass", properties=(("header.from", "example.com"),
                                        ("policy.dmarc", "reject"))),
    Method("arc", "none"),
]


# -- writing -------------------------------------------------------------------------------

def test_value_round_trips_and_is_folded() -> None:
    value = header_value(ID, FULL)
    assert all(len(line) <= 78 for line in lines(value))
    assert len(lines(value)) > 1
    assert all(line.startswith(" ") for line in lines(value)[1:])
    parsed = parse_value(value)
    assert parsed is not None
    assert parsed[0] == ID
    assert parsed[1] == tuple(FULL)
    # unfolding (RFC 5322 2.2.3: remove the line breaks) gives the one-line value
    assert "\n" not in value.replace("\n ", " ") and "  " not in value.replace("\n", "")


def test_golden_value() -> None:
    value = header_value(ID, [Method("dkim", "pass", properties=(("header.d", "example.com"),
                                                                   ("header.s", "s1"))),
                              Method("dmarc", "fail", properties=(
                                  ("header.from", "example.com"),
                                  ("policy.dmarc", "quarantine")))])
    assert value == ("mx.example.net; dkim=pass header.d=example.com\n"
                     " header.s=s1; dmarc=fail header.from=example.com policy.dmarc=quarantine")


def test_no_methods_is_none() -> None:
    assert header_value(ID, []) == "mx.example.net; none"


def test_linesep_choice() -> None:
    value = header_value(ID, FULL, linesep="\r\n")
    assert "\r\n " in value and "\n " not in value.replace("\r\n ", "")


@pytest.mark.parametrize("hostile", [
    "evil.example; dmarc=pass",
    "evil.example\r\nX-Injected: yes",
    "evil.example\nFrom: ceo@example.com",
    'evil"; dkim=pass header.d="example.com',
    "evil\\",
    "(comment) example.com",
    "ex ample.com",
    "é.example",
    "\x00\x1b[31m",
    "a" * 5000,
])
def test_hostile_values_cannot_break_the_header(hostile: str) -> None:
    value = header_value(ID, [Method("dkim", "fail", reason=hostile, properties=(
        ("header.d", hostile), ("header.s", hostile), ("header.b", hostile))),
        Method("dmarc", "fail", properties=(("header.from", "example.com"),))])
    assert all(" " <= c <= "~" for c in value.replace("\n", ""))
    fields = reparse(value)
    assert [name for name, _ in fields] == ["Authentication-Results", "Subject"]
    parsed = parse_value(value)
    assert parsed is not None and parsed[0] == ID
    assert [(m.method, m.result) for m in parsed[1]] == [("dkim", "fail"), ("dmarc", "fail")]
    d = parsed[1][0].get("header.d")
    assert d is not None and "\n" not in d and len(d) <= 255


def test_bad_method_names_and_ptypes_are_dropped() -> None:
    value = header_value(ID, [Method("dkim; x", "pass"), Method("spf", "pass x"),
                              Method("dmarc", "pass", properties=(
                                  ("evil", "1"), ("bogus.d", "x"), ("header.d e", "x"),
                                  ("header.from", "example.com")))])
    assert value == "mx.example.net; dmarc=pass header.from=example.com"


@pytest.mark.parametrize(("text", "expected"), [
    ("example.com", "example.com"),
    ("user@example.com", "user@example.com"),
    ("@example.com", "@example.com"),
    ("a b", '"a b"'),
    ('a"b', '"a\\"b"'),
    ("", '""'),
    ("x/y=", '"x/y="'),
])
def test_quote_value(text: str, expected: str) -> None:
    assert quote_value(text, address=True) == expected


def test_authserv_id_is_quoted_when_needed() -> None:
    assert header_value("my host", []).startswith('"my host"; none')


# -- reading: authserv-id and forgery ------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("mx.example.net; spf=pass smtp.mailfrom=example.com", "mx.example.net"),
    (" mx.example.net 1; none", "mx.example.net"),
    ("(our (nested) comment) mx.example.net (x) ; dkim=pass", "mx.example.net"),
    ('"mx.example.net"; none', "mx.example.net"),
    ("\r\n\tmx.example.net;\r\n\tdkim=pass", "mx.example.net"),
    ("mx.example.net", "mx.example.net"),
    (b"mx.example.net; dkim=pass header.d=\xff\xfe", "mx.example.net"),
    ("", None),
    (";", None),
    ("(unterminated comment mx.example.net; none", None),
    ('"unterminated; none', None),
    ("mx.example.net extra words; none", None),
])
def test_authserv_id_of(value: str | bytes, expected: str | None) -> None:
    assert authserv_id_of(value) == expected


@pytest.mark.parametrize(("value", "ours"), [
    ("mx.example.net; spf=pass", True),
    ("MX.Example.NET; spf=pass", True),
    ("(x) mx.example.net 1; dkim=pass", True),
    ('"mx.example.net"; dmarc=pass', True),
    ("mx.example.net", True),
    ("mx.example.net (unbalanced; dmarc=pass", True),       # a lenient reader sees ours
    ("mx.example.net extra; dmarc=pass", True),
    ("mx.example.network; dmarc=pass", False),
    ("other.example.net; dmarc=pass", False),
    ("sub.mx.example.net; dmarc=pass", False),
    ("", False),
])
def test_claims(value: str, ours: bool) -> None:
    assert claims(value, ID) is ours
    assert claims(value.encode(), ID) is ours


def test_claims_with_empty_id_claims_nothing() -> None:
    assert not claims("; none", "") and not claims("x; none", " ")


def test_parse_value_tolerates_odd_results() -> None:
    parsed = parse_value("mx.example.net; dkim/1=pass (good) reason=\"ok\" header.d=a.example;"
                         " garbage; spf = fail smtp.mailfrom = <x@b.example> ; ; iprev=pass "
                         "policy.iprev=192.0.2.1")
    assert parsed is not None
    methods = {m.method: m for m in parsed[1]}
    assert methods["dkim"].result == "pass" and methods["dkim"].reason == "ok"
    assert methods["dkim"].get("HEADER.D") == "a.example"
    assert methods["spf"].result == "fail"
    assert methods["iprev"].get("policy.iprev") == "192.0.2.1"


# -- policyd's header ----------------------------------------------------------------------

def policyd_header(header_type: str, *, identity: str = "mailfrom",
                   result: SpfResult = SpfResult.PASS,
                   sender: str = "alice@example.com") -> tuple[bytes, bytes]:
    """The header policyd's SpfCheck really writes, as (name, value) for the milter."""
    check = SpfCheck(SpfSettings(header_type=header_type, authserv_id=ID, receiver=ID),
                     FakeResolver(), hostname="ignored.example")
    request = PolicyRequest({"client_address": "192.0.2.7", "helo_name": "mail.example.com",
                             "sender": sender if identity == "mailfrom" else ""})
    domain = "example.com" if identity == "mailfrom" else "mail.example.com"
    header = check.header(request, SpfOutcome(result, identity, domain, "why (this) x"))
    assert header is not None
    name, _, value = header.partition(":")
    return name.encode(), value.encode()


RECEIVED = (b"Received", b" from mail.example.com (mail.example.com [192.0.2.7])")


@pytest.mark.parametrize("header_type", ["SPF", "AR"])
def test_policyd_header_is_read(header_type: str) -> None:
    headers = [policyd_header(header_type), RECEIVED, (b"From", b" a@example.com")]
    assert spf_from_headers(headers, ID) == AuthOutcome("example.com", "pass", scope="mfrom")
    assert spf_from_headers(headers, ID, envelope_from="alice@example.com") is not None
    assert policyd_spf_index(headers, ID) == 0


@pytest.mark.parametrize("header_type", ["SPF", "AR"])
@pytest.mark.parametrize("result", list(SpfResult))
def test_policyd_results(header_type: str, result: SpfResult) -> None:
    outcome = spf_from_headers([policyd_header(header_type, result=result)], ID)
    assert outcome is not None and outcome.result == result.value


@pytest.mark.parametrize("header_type", ["SPF", "AR"])
def test_policyd_helo_identity(header_type: str) -> None:
    outcome = spf_from_headers([policyd_header(header_type, identity="helo")], ID)
    assert outcome == AuthOutcome("mail.example.com", "pass", scope="helo")


def test_header_below_received_is_the_senders() -> None:
    forged = (b"Received-SPF", b" Pass (forged) identity=mailfrom; client-ip=192.0.2.7; "
                               b"helo=x; envelope-from=ceo@example.com; receiver=mx.example.net")
    assert spf_from_headers([RECEIVED, forged], ID) is None
    assert spf_from_headers([policyd_header("SPF", result=SpfResult.FAIL), RECEIVED, forged],
                            ID) == AuthOutcome("example.com", "fail", scope="mfrom")


def test_only_the_topmost_spf_header_counts() -> None:
    headers = [policyd_header("AR", result=SpfResult.SOFTFAIL), policyd_header("AR"), RECEIVED]
    outcome = spf_from_headers(headers, ID)
    assert outcome is not None and outcome.result == "softfail"


def test_foreign_or_mismatched_headers_are_not_believed() -> None:
    other = (b"Authentication-Results", b" other.example; spf=pass smtp.mailfrom=example.com")
    assert spf_from_headers([other, RECEIVED], ID) is None
    assert spf_from_headers([policyd_header("SPF")], "someone.else") is None
    assert spf_from_headers([policyd_header("AR")], ID, envelope_from="x@evil.example") is None
    assert spf_from_headers([policyd_header("AR")], ID, envelope_from="") is None
    assert spf_from_headers([policyd_header("AR")], "") is None
    # an A-R of ours without spf= does not hide a later one, but is not an SPF result either
    dkim_only = (b"Authentication-Results", b" mx.example.net; dkim=pass header.d=x.example")
    assert spf_from_headers([dkim_only, RECEIVED], ID) is None


def test_other_prepends_above_are_skipped() -> None:
    headers = [(b"X-Greylist", b" delayed 300 seconds"), policyd_header("SPF"), RECEIVED]
    assert spf_from_headers(headers, ID) is not None
    assert policyd_spf_index(headers, ID) == 1


def test_parse_received_spf() -> None:
    parsed = parse_received_spf(' SoftFail (x; y) identity=mailfrom; client-ip=192.0.2.1; '
                                'helo="a b"; envelope-from=<>')
    assert parsed == ("softfail", {"identity": "mailfrom", "client-ip": "192.0.2.1",
                                   "helo": "a b", "envelope-from": "<>"})
    assert parse_received_spf("maybe identity=mailfrom") is None
    assert parse_received_spf("") is None


# -- ARC -----------------------------------------------------------------------------------

def arc_set(i: int, cv: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"ARC-Seal", f" i={i}; a=rsa-sha256; t=1700000000; cv={cv};\r\n\td=relay.example; "
                      f"s=arc; b=AbC\r\n\t dEf=".encode()),
        (b"ARC-Message-Signature", f" i={i}; a=rsa-sha256; c=relaxed/relaxed; d=relay.example;"
                                   f" s=arc; h=from:to:subject; bh=xyz=; b=sig=".encode()),
        (b"ARC-Authentication-Results", f" i={i}; relay.example; spf=pass "
                                        f"smtp.mailfrom=example.com".encode()),
    ]


def test_arc_chain_parsed() -> None:
    headers = arc_set(2, "pass") + arc_set(1, "none") + [(b"From", b" a@example.com")]
    chain = parse_arc(headers)
    assert chain.structure_ok and chain.present and chain.claimed_cv == "pass"
    assert [i.instance for i in chain.instances] == [1, 2]
    first = chain.instances[0]
    assert first.cv == "none" and first.complete
    assert dict(first.seal)["b"] == "AbCdEf="   # folding whitespace removed
    assert dict(first.signature)["h"] == "from:to:subject"
    assert first.results == "relay.example; spf=pass smtp.mailfrom=example.com"


def test_no_arc() -> None:
    chain = parse_arc([(b"From", b" a@example.com")])
    assert not chain.present and not chain.structure_ok and chain.claimed_cv == ""


@pytest.mark.parametrize(("headers", "problem"), [
    (arc_set(1, "pass"), "expected none"),
    (arc_set(1, "none") + arc_set(3, "pass"), "not 1..N"),
    (arc_set(1, "none")[:2], "incomplete"),
    (arc_set(1, "none") + arc_set(1, "none")[:1], "more than one seal"),
    ([(b"ARC-Seal", b" i=1; cv")], "unparseable"),                       # OpenDMARC 1.4.2 crash
    ([(b"ARC-Seal", b" a=rsa-sha256; cv=none")], "unparseable"),          # no i=
    ([(b"ARC-Seal", b" i=0; cv=none")], "unparseable"),
    ([(b"ARC-Seal", b" i=51; cv=none")], "more than 50"),
    ([(b"ARC-Seal", b" i=1000; cv=none")], "unparseable"),
    ([(b"ARC-Authentication-Results", b" relay.example; spf=pass")], "unparseable"),
    ([*arc_set(1, "none"), (b"ARC-Seal", b" i=2; cv=fail; b=x")], "expected pass"),
])
def test_arc_problems(headers: list[tuple[bytes, bytes]], problem: str) -> None:
    chain = parse_arc(headers)
    assert not chain.structure_ok
    assert any(problem in p for p in chain.problems), chain.problems


def test_huge_arc_signature_and_many_sets() -> None:
    big = [(b"ARC-Seal", b" i=1; cv=none; b=" + b"A" * 100_000)]
    assert parse_arc(big).present
    many = [h for i in range(1, 80) for h in arc_set(i, "none" if i == 1 else "pass")]
    chain = parse_arc(many)
    assert len(chain.instances) == 50 and any("more than 50" in p for p in chain.problems)


# -- never raise ---------------------------------------------------------------------------

NAMES = st.sampled_from([b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results",
                         b"Authentication-Results", b"Received-SPF", b"Received", b"arc-seal",
                         b"\xff\x00"])
VALUES = st.one_of(st.binary(max_size=300),
                   st.text(alphabet=" ;=()\"\\i0123456789cv.abn\r\n\t", max_size=120)
                   .map(str.encode))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=12))
def test_readers_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    chain = parse_arc(headers)
    assert isinstance(chain.problems, tuple)
    spf_from_headers(headers, ID, envelope_from="a@example.com")
    policyd_spf_index(headers, ID)
    for _, value in headers:
        authserv_id_of(value)
        claims(value, ID)
        parse_value(value)
        parse_received_spf(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=80), st.text(max_size=80))
def test_writer_never_breaks_the_field(reason: str, d: str, authserv: str) -> None:
    value = header_value(authserv or ID, [Method("dkim", "pass", reason=reason,
                                                 properties=(("header.d", d),)),
                                          Method("dmarc", "pass")])
    assert all(" " <= c <= "~" for c in value.replace("\n", ""))
    assert all(line.startswith(" ") for line in value.split("\n")[1:])
    fields = reparse(value)
    assert [name for name, _ in fields] == ["Authentication-Results", "Subject"]
    parsed = parse_value(value)
    assert parsed is not None
    assert [m.method for m in parsed[1]] == ["dkim", "dmarc"]
