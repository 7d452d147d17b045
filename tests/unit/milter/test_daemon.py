"""The milter's message handling: signing, verification, A-R, forged A-R, DMARC actions."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dkim as dkimpy  # type: ignore[import-untyped]
import pytest

from postwarden import settings as config
from postwarden.milter import dkim, dmarc, keys, service
from postwarden.milter.daemon import Engine, MilterHandler, build_message, field_value
from postwarden.milter.protocol import (
    SMFIP_HDR_LEADSPC,
    Body,
    ChangeHeader,
    Connect,
    EndOfMessage,
    Header,
    InsertHeader,
    MailFrom,
    Negotiated,
    Quarantine,
    RcptTo,
    ReplyCode,
    Verdict,
)
from postwarden.milter.reports import Evaluation
from postwarden.milter.server import EndOfMessageResult, SessionContext
from postwarden.testing.dns import FakeResolver

AUTHSERV = "mx.example.net"
OUTSIDE = "192.0.2.7"
HEADERS: list[tuple[str, bytes]] = [
    ("From", b" Alice <alice@example.org>"),
    ("To", b" bob@example.net"),
    ("Subject", b" dinner\n\tat eight"),
    ("Date", b" Mon, 30 Nov 2026 06:00:00 +0000"),
    ("Message-ID", b" <1@example.org>"),
]
BODY = b"Hello Bob,\r\n\r\nsee you.\r\n"
SASL = {"{auth_authen}": "alice", "{auth_type}": "PLAIN"}

_KEYS: dict[str, keys.PrivateKey] = {}


def key(kind: str) -> keys.PrivateKey:
    if kind not in _KEYS:
        _KEYS[kind] = keys.generate("rsa" if kind == "rsa" else "ed25519")
    return _KEYS[kind]


@pytest.fixture
def keydir(tmp_path: Path) -> Path:
    keys.write_private(tmp_path / "r1.private", key("rsa"))
    keys.write_private(tmp_path / "e1.private", key("ed25519"))
    return tmp_path


def load(keydir: Path, extra: str = "", milter: str = "") -> config.Settings:
    text = f"""
[milter]
authserv_id = "{AUTHSERV}"
{milter}
[dkim]
internal_networks = ["127.0.0.1/32"]
[[dkim.key]]
domain = "example.org"
selector = "r1"
key_file = "r1.private"
[[dkim.key]]
domain = "example.org"
selector = "e1"
key_file = "e1.private"
algorithm = "ed25519-sha256"
[dkim.sign]
"example.org" = ["r1", "e1"]
{extra}
"""
    return config.parse(tomllib.loads(text), keydir / "postwarden.toml")


def zone() -> FakeResolver:
    resolver = FakeResolver()
    resolver.add("r1._domainkey.example.org", "TXT", keys.dns_record(key("rsa").public_key()))
    resolver.add("e1._domainkey.example.org", "TXT",
                 keys.dns_record(key("ed25519").public_key()))
    resolver.add("example.org", "TXT", "v=spf1 ip4:192.0.2.0/24 -all")
    resolver.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    return resolver


class Store:
    def __init__(self) -> None:
        self.added: list[Evaluation] = []

    async def add(self, evaluation: Evaluation) -> None:
        self.added.append(evaluation)

    async def between(self, start: float, end: float) -> list[Evaluation]:
        return self.added

    async def expire(self, before: float, batch: int = 1000) -> int:
        return 0

    async def close(self) -> None:
        return None


def engine(settings: config.Settings, resolver: FakeResolver | None = None,
           store: Store | None = None) -> Engine:
    return Engine(settings, resolver or zone(), service.load_keys(settings.dkim),
                  store)


def deliver(eng: Engine, headers: Sequence[tuple[str, bytes]] = HEADERS, body: bytes = BODY,
            *, macros: Mapping[str, str] | None = None, client: str = OUTSIDE,
            sender: str = "alice@example.org", leadspc: bool = True) -> EndOfMessageResult:
    async def run() -> EndOfMessageResult:
        ctx = SessionContext("test", negotiated=Negotiated(
            6, 0x3F, SMFIP_HDR_LEADSPC if leadspc else 0))
        ctx.connect = Connect("client.example", "4", 4711, client)
        ctx.helo_name = "client.example"
        ctx.stage_macros = {"M": dict(macros or {}), "E": {"i": "4ABC"}}
        handler = MilterHandler(eng)
        await handler.mail_from(ctx, MailFrom((f"<{sender}>",)))
        await handler.rcpt_to(ctx, RcptTo(("<bob@example.net>",)))
        for name, value in headers:
            await handler.header(ctx, Header(name, value))
        await handler.body(ctx, Body(body))
        result = await handler.end_of_message(ctx, EndOfMessage())
        await handler.close(ctx)
        return result
    return asyncio.run(run())


def apply(headers: Sequence[tuple[str, bytes]], result: EndOfMessageResult
          ) -> list[tuple[str, bytes]]:
    """The header as Postfix leaves it after the modifications (in their order)."""
    out = list(headers)
    for change in result.modifications:
        if isinstance(change, InsertHeader):
            out.insert(change.index, (change.name, change.value))
        elif isinstance(change, ChangeHeader):
            positions = [i for i, (n, _) in enumerate(out) if n.lower() == change.name.lower()]
            assert change.value == b""
            del out[positions[change.index - 1]]
    return out


def names(result: EndOfMessageResult) -> list[str]:
    return [type(c).__name__ + ":" + getattr(c, "name", "") for c in result.modifications]


# -- signing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [
    {"macros": SASL},                                   # SASL login from outside
    {"client": "127.0.0.1"},                            # internal_networks
    {"macros": {"{daemon_name}": "ORIGINATING"}},       # milter_macro_daemon_name
])
def test_internal_sender_gets_rsa_and_ed25519_signatures_that_verify(
        keydir: Path, how: dict[str, Any]) -> None:
    result = deliver(engine(load(keydir)), **how)
    assert result.verdict == Verdict.CONTINUE
    assert names(result) == ["InsertHeader:DKIM-Signature"] * 2
    assert all(isinstance(c, InsertHeader) and c.index == 0 and c.value.startswith(b" ")
               and b"\r" not in c.value for c in result.modifications)
    message = build_message(apply(HEADERS, result), BODY, True)
    found = asyncio.run(dkim.verify(message, zone()))
    assert sorted((r.result.value, r.algorithm) for r in found) == [
        ("pass", "ed25519-sha256"), ("pass", "rsa-sha256")]
    records = {b"r1._domainkey.example.org.": keys.dns_record(key("rsa").public_key()),
               b"e1._domainkey.example.org.": keys.dns_record(key("ed25519").public_key())}
    # dkimpy verifies RSA here (its Ed25519 needs PyNaCl, which is not installed)
    rsa_index = [r.algorithm for r in found].index("rsa-sha256")
    assert dkimpy.DKIM(message).verify(idx=rsa_index, dnsfunc=lambda name, timeout=5:
                                       records[name].encode())


def test_without_leadspc_values_carry_no_leading_space(keydir: Path) -> None:
    plain = [(n, v[1:]) for n, v in HEADERS]   # Postfix drops the space without the option
    result = deliver(engine(load(keydir)), plain, macros=SASL, leadspc=False)
    assert all(not c.value.startswith(b" ") for c in result.modifications
               if isinstance(c, InsertHeader))
    message = build_message([(n, b" " + v) for n, v in apply(plain, result)], BODY, True)
    assert [r.result.value for r in asyncio.run(dkim.verify(message, zone()))] == \
        ["pass", "pass"]


def test_sign_mode_does_not_verify_outside_mail(keydir: Path) -> None:
    result = deliver(engine(load(keydir, milter='mode = "sign"')))
    assert result == EndOfMessageResult(Verdict.CONTINUE)


def test_verify_mode_does_not_sign(keydir: Path) -> None:
    result = deliver(engine(load(keydir, milter='mode = "verify"')), macros=SASL)
    assert names(result) == ["InsertHeader:Authentication-Results"]


# -- verification, A-R, forged A-R -----------------------------------------------------------


def signed_headers() -> list[tuple[str, bytes]]:
    """HEADERS with a good RSA signature of example.org on top."""
    raw = dkim.sign(build_message(HEADERS, BODY, True), domain="example.org",
                    selector="r1", key=key("rsa"))
    value = raw.partition(b":")[2].rstrip(b"\r\n").replace(b"\r\n", b"\n")
    return [("DKIM-Signature", value), *HEADERS]


def ar_value(result: EndOfMessageResult) -> str:
    [value] = [c.value for c in result.modifications
               if isinstance(c, InsertHeader) and c.name == "Authentication-Results"]
    return " ".join(value.decode().split())


def test_inbound_mail_gets_one_authentication_results_with_our_id(keydir: Path) -> None:
    store = Store()
    result = deliver(engine(load(keydir), store=store), signed_headers())
    assert result.verdict == Verdict.CONTINUE
    text = ar_value(result)
    assert text.startswith(AUTHSERV + ";")
    assert "dkim=pass" in text and "header.d=example.org" in text
    assert "spf=pass" in text                      # evaluated here: 192.0.2.7 is allowed
    assert "dmarc=" in text
    [evaluation] = store.added
    assert evaluation.header_from == "example.org" and evaluation.source_ip == OUTSIDE
    assert evaluation.dkim == (("example.org", "r1", "pass"),)


def test_forged_authentication_results_are_deleted_highest_index_first(keydir: Path) -> None:
    headers = [("Authentication-Results", f" {AUTHSERV}; dkim=pass".encode()),
               ("Authentication-Results", b" other.example; spf=pass"),
               *signed_headers(),
               ("Authentication-Results", f" {AUTHSERV.upper()};\n\tdmarc=pass".encode())]
    result = deliver(engine(load(keydir)), headers)
    deletions = [c for c in result.modifications if isinstance(c, ChangeHeader)]
    assert [(c.index, c.value) for c in deletions] == [(3, b""), (1, b"")]
    kept = apply(headers, result)
    ours = [v for n, v in kept if n == "Authentication-Results" and AUTHSERV.encode() in v]
    assert len(ours) == 1 and b"dkim=pass" in ours[0]
    assert (b" other.example; spf=pass") in [v for _, v in kept]


def test_forged_authentication_results_are_deleted_from_signed_mail_too(keydir: Path) -> None:
    headers = [("Authentication-Results", f" {AUTHSERV}; dkim=pass".encode()), *HEADERS]
    result = deliver(engine(load(keydir)), headers, macros=SASL)
    assert names(result)[0] == "ChangeHeader:Authentication-Results"
    assert names(result)[1:] == ["InsertHeader:DKIM-Signature"] * 2


def test_bad_signature_fails_and_unsigned_is_none(keydir: Path) -> None:
    tampered = [(n, v.replace(b"dinner", b"lunch")) for n, v in signed_headers()]
    assert "dkim=fail" in ar_value(deliver(engine(load(keydir)), tampered))
    assert "dkim=none" in ar_value(deliver(engine(load(keydir)), HEADERS))


def test_spf_from_outside_the_record_fails(keydir: Path) -> None:
    text = ar_value(deliver(engine(load(keydir), ), signed_headers(), client="198.51.100.1"))
    assert "spf=fail" in text and "smtp.mailfrom=alice@example.org" in text


def test_oversized_message_passes_unchecked(keydir: Path) -> None:
    settings = load(keydir, milter="max_message_size = 65536")
    headers = [("Authentication-Results", f" {AUTHSERV}; dkim=pass".encode()), *HEADERS]
    result = deliver(engine(settings), headers, b"x" * 70_000 + b"\r\n", macros=SASL)
    assert result.verdict == Verdict.CONTINUE
    assert names(result) == ["ChangeHeader:Authentication-Results"]


# -- DMARC dispositions ------------------------------------------------------------------------


def fake_dmarc(disposition: str) -> Iterator[None]:
    async def evaluate(from_domain: str, spf: object, dkim_: object, resolver: object,
                       settings: object, *, null_sender: bool = False) -> dmarc.DmarcResult:
        return dmarc.DmarcResult("fail", from_domain, from_domain, from_domain, disposition,
                                 disposition, False, False,
                                 dmarc.DmarcPolicyRecord(p=disposition,
                                                         raw=f"v=DMARC1; p={disposition}"),
                                 "no aligned identifier")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dmarc, "evaluate", evaluate)
        yield


@pytest.fixture
def reject_policy() -> Iterator[None]:
    yield from fake_dmarc("reject")


@pytest.fixture
def quarantine_policy() -> Iterator[None]:
    yield from fake_dmarc("quarantine")


def test_dmarc_reject_is_550_571(keydir: Path, reject_policy: None) -> None:
    store = Store()
    result = deliver(engine(load(keydir), store=store), client="198.51.100.1")
    assert isinstance(result.verdict, ReplyCode) and result.verdict.code == 550
    assert result.verdict.text.startswith("5.7.1 ") and "example.org" in result.verdict.text
    assert result.modifications == ()
    [evaluation] = store.added
    assert evaluation.disposition == "reject"


def test_dmarc_reject_spares_internal_senders(keydir: Path, reject_policy: None) -> None:
    settings = load(keydir, '"example.com" = []')   # an internal sender of a domain we do
    headers = [("From", b" x@example.com"), *HEADERS[1:]]   # not sign for is verified
    result = deliver(engine(settings), headers, macros=SASL, sender="x@example.com")
    assert result.verdict == Verdict.CONTINUE


@pytest.mark.parametrize(("extra", "verdict", "change", "applied"), [
    ('on_reject = "quarantine"', Verdict.CONTINUE, Quarantine, "quarantine"),
    ('on_reject = "report"', Verdict.CONTINUE, None, "none"),
])
def test_dmarc_reject_alternatives(keydir: Path, reject_policy: None, extra: str,
                                   verdict: Verdict, change: type | None, applied: str) -> None:
    store = Store()
    result = deliver(engine(load(keydir, f"[dmarc]\n{extra}"), store=store))
    assert result.verdict == verdict
    found = [c for c in result.modifications if change is not None and isinstance(c, change)]
    assert len(found) == (1 if change else 0)
    assert store.added[0].disposition == applied


def test_dmarc_quarantine_by_header(keydir: Path, quarantine_policy: None) -> None:
    result = deliver(engine(load(keydir, '[dmarc]\non_quarantine = "header"')))
    assert "InsertHeader:X-Postwarden-DMARC" in names(result)
    assert not any(isinstance(c, Quarantine) for c in result.modifications)


def test_dmarc_quarantine_by_milter_action(keydir: Path, quarantine_policy: None) -> None:
    result = deliver(engine(load(keydir)))
    [q] = [c for c in result.modifications if isinstance(c, Quarantine)]
    assert "example.org" in q.reason


def test_dry_run_changes_nothing(keydir: Path, reject_policy: None,
                                 caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    settings = load(keydir, milter="dry_run = true")
    headers = [("Authentication-Results", f" {AUTHSERV}; dkim=pass".encode()), *HEADERS]
    with caplog.at_level("INFO", logger="postwarden.milter.daemon"):
        result = deliver(engine(settings, store=store), headers)
        signed = deliver(engine(settings), macros=SASL)
    assert result == EndOfMessageResult(Verdict.ACCEPT) == signed
    assert "applied=reject" in caplog.text and "dry_run=yes" in caplog.text
    assert "action=sign" in caplog.text
    assert store.added[0].disposition == "none"


def test_store_failure_does_not_fail_the_message(keydir: Path, reject_policy: None) -> None:
    class Broken(Store):
        async def add(self, evaluation: Evaluation) -> None:
            raise OSError("disk full")
    eng = engine(load(keydir), store=Broken())
    result = deliver(eng)
    assert isinstance(result.verdict, ReplyCode)
    assert eng.counters.errors["store"] == 1


# -- small pieces ------------------------------------------------------------------------------


def test_field_value_and_message_building() -> None:
    assert field_value("x; y\r\n\tz", True) == b" x; y\n\tz"
    assert field_value(" x", False) == b"x"
    assert build_message([("A", b" 1\n\t2")], b"b\r\n", True) == b"A: 1\r\n\t2\r\n\r\nb\r\n"
    assert build_message([("A", b"1")], b"", False) == b"A: 1\r\n\r\n"


def test_metrics_text(keydir: Path) -> None:
    eng = engine(load(keydir))
    deliver(eng, macros=SASL)
    deliver(eng, signed_headers())
    text = eng.counters.prometheus()
    assert 'postwarden_milter_messages_total{worker="0",action="signed"} 1' in text
    assert 'postwarden_milter_signatures_total{worker="0",algorithm="ed25519-sha256"} 1' in text
    assert 'postwarden_milter_dkim_results_total{worker="0",result="pass"} 1' in text
    assert 'postwarden_milter_message_seconds_count{worker="0"} 2' in text
    assert 'postwarden_milter_connections{worker="0"} 0' in text


POLICYD_AR = ("Authentication-Results",
              f" {AUTHSERV}; spf=pass (designates 198.51.100.1) smtp.mailfrom=example.org"
              .encode())


def test_spf_is_taken_from_policyds_header_which_is_then_replaced(
        keydir: Path, caplog: pytest.LogCaptureFixture) -> None:
    headers = [POLICYD_AR, *signed_headers()]
    with caplog.at_level("INFO", logger="postwarden.milter.daemon"):
        result = deliver(engine(load(keydir)), headers, client="198.51.100.1")
    assert "spf=pass(header)" in caplog.text
    assert "spf=pass" in ar_value(result)        # DNS says fail for this client
    kept = apply(headers, result)
    assert [v for n, v in kept if n == "Authentication-Results"] == [
        next(c.value for c in result.modifications if isinstance(c, InsertHeader))]


def test_spf_source_evaluate_ignores_headers(keydir: Path) -> None:
    headers = [POLICYD_AR, *signed_headers()]
    settings = load(keydir, milter='spf_source = "evaluate"')
    assert "spf=fail" in ar_value(deliver(engine(settings), headers, client="198.51.100.1"))
