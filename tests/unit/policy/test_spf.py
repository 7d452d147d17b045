"""SPF: macros, record syntax, limits, DNS failures, the policy check, the CLI, and the
dnspython adapter against a small DNS server on loopback started here."""

from __future__ import annotations

import asyncio
import ipaddress
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from postwarden import cli
from postwarden import dns as pw_dns
from postwarden.policy.model import Findings, PolicyRequest, SpfResult
from postwarden.policy.spf import SpfCheck, SpfSettings, check_host, check_identity, evaluate
from postwarden.policy.spf_macro import MacroContext, expand, expand_domain
from postwarden.policy.spf_record import SpfSyntaxError, check_domain_spec, parse_record
from postwarden.testing import FakeResolver

IP = "192.0.2.3"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def spf(zone: dict[str, list[tuple[str, str]]], ip: str = IP,
        sender: str = "strong-bad@email.example.com", helo: str = "mx.example.org",
        **options: Any) -> Any:
    return run(check_identity(ip, sender, helo, FakeResolver(zone), **options))


# -- macros (RFC 7208 7.4, the RFC's own examples) ---------------------------------------

CONTEXT = MacroContext(sender="strong-bad@email.example.com", domain="email.example.com",
                       ip=ipaddress.ip_address("192.0.2.3"), helo="mx.example.org",
                       receiver="mx.example.net", timestamp=1234)


@pytest.mark.parametrize(("text", "expanded"), [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%{h} %{c} %{r} %{t}", "mx.example.org 192.0.2.3 mx.example.net 1234"),
    ("a%%b%_c%-d", "a%b c%20d"),
    ("%{p}", "unknown"),
])
def test_macro_examples_of_rfc_7208(text: str, expanded: str) -> None:
    assert expand(text, CONTEXT) == expanded


def test_macro_ipv6_nibbles_and_url_escaping() -> None:
    six = MacroContext(sender="~jack&jill=up@example.com", domain="example.com",
                       ip=ipaddress.ip_address("2001:db8::cb01"), helo="h.example")
    assert expand("%{ir}.%{v}._spf.%{d2}", six).lower() == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    assert expand("%{c}", six) == "2001:db8::cb01"
    assert expand("l=%{L}", six) == "l=~jack%26jill%3Dup"


def test_macro_empty_local_part_is_postmaster() -> None:
    context = MacroContext(sender="@example.com", domain="example.com",
                           ip=ipaddress.ip_address(IP), helo="h.example")
    assert expand("%{l}", context) == "postmaster"


def test_expanded_domain_is_cut_to_253_from_the_left() -> None:
    context = MacroContext(sender="x@" + "a" * 60 + ".example.com", domain="example.com",
                           ip=ipaddress.ip_address(IP), helo="h")
    name = expand_domain("%{o}.%{o}.%{o}.%{o}.example.com", context)
    assert len(name) <= 253
    assert name.endswith(".example.com")


@pytest.mark.parametrize("spec", ["%{d0}", "foo%", "foo%.bar.com", "%(ir).x.com",
                                  "%{c}.example.com", "example.123", "%{x}.example.com"])
def test_bad_domain_specs_are_syntax_errors(spec: str) -> None:
    with pytest.raises(SpfSyntaxError):
        check_domain_spec(spec)


# -- record syntax -----------------------------------------------------------------------

@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.300", "v=spf1 ip4:192.0.2.1/33", "v=spf1 ip6:::1/129",
    "v=spf1 a/024", "v=spf1 mx:example.com//129", "v=spf1 foo:bar", "v=spf1 include",
    "v=spf1 exists", "v=spf1 redirect=a.example redirect=b.example", "v=spf1 all:x",
    "v=spf1 -all\x0dptr", "v=spf1 ip6:fe80::1%eth0", "v=spf1 a:%{d0}.example.com",
    "v=spf1 exp=a.example exp=b.example",
])
def test_syntax_errors(record: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_record(record)


def test_a_record_parses_in_full() -> None:
    parsed = parse_record("v=spf1 ~a:mail.example.com/24//64 ip6:2001:db8::/32 "
                          "mx -all moo=cow redirect=_spf.example.com exp=why.%{d}")
    assert [d.text for d in parsed.directives] == [
        "~a:mail.example.com/24//64", "ip6:2001:db8::/32", "mx", "-all"]
    assert (parsed.directives[0].cidr4, parsed.directives[0].cidr6) == (24, 64)
    assert parsed.redirect == "_spf.example.com"
    assert parsed.exp == "why.%{d}"


# -- evaluation --------------------------------------------------------------------------

def test_pass_fail_and_explanation() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all exp=why.%{d}")],
            "why.email.example.com": [("TXT", "%{i} is not one of %{d}'s servers")]}
    assert spf(zone).result is SpfResult.PASS
    failed = spf(zone, ip="198.51.100.7")
    assert failed.result is SpfResult.FAIL
    assert failed.explanation == "198.51.100.7 is not one of email.example.com's servers"


def test_no_record_multiple_records_and_other_txt() -> None:
    assert spf({"email.example.com": [("TXT", "google-site-verification=x")]}).result is (
        SpfResult.NONE)
    assert spf({}).result is SpfResult.NONE
    two = {"email.example.com": [("TXT", "v=spf1 -all"), ("TXT", "v=spf1 +all")]}
    assert spf(two).result is SpfResult.PERMERROR


def test_dns_failure_is_temperror() -> None:
    resolver = FakeResolver({"email.example.com": [("TXT", "v=spf1 a:x.example.com -all")]})
    resolver.fail("x.example.com", "A", "SERVFAIL")
    answer = run(check_identity(IP, "u@email.example.com", "h.example", resolver))
    assert answer.result is SpfResult.TEMPERROR


def test_time_budget_gives_temperror() -> None:
    resolver = FakeResolver({"email.example.com": [("TXT", "v=spf1 -all")]}, delay=5)
    answer = run(check_identity(IP, "u@email.example.com", "h.example", resolver,
                                budget_seconds=0.05))
    assert answer.result is SpfResult.TEMPERROR


def _chain(count: int) -> dict[str, list[tuple[str, str]]]:
    zone = {"email.example.com": [("TXT", "v=spf1 include:i1.example.com -all")]}
    for n in range(1, count + 1):
        nxt = f" include:i{n + 1}.example.com" if n < count else " ip4:192.0.2.3"
        zone[f"i{n}.example.com"] = [("TXT", "v=spf1" + nxt)]
    return zone


def test_ten_lookups_are_allowed_eleven_are_permerror() -> None:
    assert spf(_chain(10)).result is SpfResult.PASS
    assert spf(_chain(11)).result is SpfResult.PERMERROR


def test_include_loop_is_permerror() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 include:email.example.com -all")]}
    assert spf(zone).result is SpfResult.PERMERROR


def test_void_lookup_limit() -> None:
    two = {"email.example.com": [("TXT", "v=spf1 a:n1.example.com a:n2.example.com -all")]}
    assert spf(two).result is SpfResult.FAIL
    three = {"email.example.com": [
        ("TXT", "v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com -all")]}
    assert spf(three).result is SpfResult.PERMERROR
    assert spf(three, void_limit=3).result is SpfResult.FAIL


def test_mx_limit_and_match() -> None:
    zone: dict[str, list[tuple[str, str]]] = {
        "email.example.com": [("TXT", "v=spf1 mx -all")]
        + [("MX", f"{n} mx{n}.example.com") for n in range(10)],
        "mx9.example.com": [("A", IP)]}
    assert spf(zone).result is SpfResult.PASS
    zone["email.example.com"].append(("MX", "99 mx10.example.com"))
    assert spf(zone).result is SpfResult.PERMERROR


def test_ptr_looks_at_ten_names_only() -> None:
    names = [f"h{n}.email.example.com" for n in range(11)]
    zone = {"email.example.com": [("TXT", "v=spf1 ptr -all")],
            "3.2.0.192.in-addr.arpa": [("PTR", n) for n in names],
            names[10]: [("A", IP)]}
    assert spf(zone).result is SpfResult.FAIL
    zone[names[9]] = [("A", IP)]
    assert spf(zone).result is SpfResult.PASS


def test_redirect_and_all_and_exists() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 redirect=_spf.example.com")],
            "_spf.example.com": [("TXT", "v=spf1 exists:%{i}.ok.example.com ~all")],
            "192.0.2.3.ok.example.com": [("A", "127.0.0.2")]}
    assert spf(zone).result is SpfResult.PASS
    assert spf(zone, ip="192.0.2.4").result is SpfResult.SOFTFAIL
    zone["email.example.com"] = [("TXT", "v=spf1 ?all redirect=_spf.example.com")]
    assert spf(zone).result is SpfResult.NEUTRAL  # RFC 7208 6.1: "all" wins


def test_ipv4_mapped_client_is_ipv4() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")]}
    assert spf(zone, ip="::ffff:192.0.2.3").result is SpfResult.PASS


def test_ipv6_client_and_a_with_cidr() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 a/24//48 -all"),
                                  ("A", "192.0.2.200"), ("AAAA", "2001:db8:1::1")]}
    assert spf(zone, ip="2001:db8:1:ff::9").result is SpfResult.PASS
    assert spf(zone, ip="2001:db8:2::9").result is SpfResult.FAIL
    assert spf(zone, ip="192.0.2.1").result is SpfResult.PASS


def test_null_sender_checks_postmaster_at_helo() -> None:
    zone = {"mx.example.org": [("TXT", "v=spf1 -all exp=e.example.org")],
            "e.example.org": [("TXT", "%{s} via %{h}")]}
    answer = spf(zone, sender="")
    assert answer.result is SpfResult.FAIL
    assert answer.explanation == "postmaster@mx.example.org via mx.example.org"


def test_p_macro_uses_validated_name() -> None:
    zone = {"email.example.com": [("TXT", "v=spf1 -all exp=e.example.com")],
            "e.example.com": [("TXT", "from %{p}")],
            "3.2.0.192.in-addr.arpa": [("PTR", "evil.example.net"),
                                       ("PTR", "mail.email.example.com")],
            "evil.example.net": [("A", IP)], "mail.email.example.com": [("A", IP)]}
    assert spf(zone).explanation == "from mail.email.example.com"


def test_check_host_direct() -> None:
    resolver = FakeResolver({"example.net": [("TXT", "v=spf1 +all")]})
    answer = run(check_host(IP, "example.net", "a@example.net", "h", resolver))
    assert (answer.result, answer.mechanism) == (SpfResult.PASS, "+all")


def test_fake_resolver_nodata_nxdomain_cname() -> None:
    resolver = FakeResolver({"a.example": [("A", "192.0.2.1")],
                             "c.example": [("CNAME", "a.example")]})
    assert resolver.lookup("a.example", "TXT").rcode == "NOERROR"
    assert resolver.lookup("b.example", "TXT").rcode == "NXDOMAIN"
    assert resolver.lookup("C.example.", "A").records == ("192.0.2.1",)
    resolver.fail("a.example")
    assert resolver.lookup("a.example", "A").rcode == "TIMEOUT"


# -- the policy check --------------------------------------------------------------------

ZONE = {"example.com": [("TXT", "v=spf1 ip4:192.0.2.0/24 -all")],
        "mail.example.com": [("TXT", "v=spf1 a -all"), ("A", "192.0.2.10")],
        "bad.example": [("TXT", "v=spf1 -all")],
        "perm.example": [("TXT", "v=spf1 foo")],
        "temp.example": [("TXT", "v=spf1 a:slow.example -all")]}


def request(**attrs: str) -> PolicyRequest:
    base = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
            "client_address": "192.0.2.10", "helo_name": "mail.example.com",
            "sender": "alice@example.com", "recipient": "bob@example.net",
            "instance": "a1.b2.c3"}
    base.update(attrs)
    return PolicyRequest(base)


def checker(**settings: Any) -> tuple[SpfCheck, FakeResolver]:
    resolver = FakeResolver(ZONE)
    resolver.fail("slow.example")
    return SpfCheck(SpfSettings(**settings), resolver, hostname="mx.example.net"), resolver


def test_pass_prepends_received_spf_once_per_instance() -> None:
    check, resolver = checker()
    findings = Findings()
    verdict = run(check.check(request(), findings))
    assert verdict is not None and not verdict.final
    assert verdict.action == (
        "PREPEND Received-SPF: Pass (domain of example.com designates 192.0.2.10 as "
        "permitted sender) identity=mailfrom; client-ip=192.0.2.10; helo=mail.example.com; "
        "envelope-from=alice@example.com; receiver=mx.example.net")
    assert findings.spf is not None and findings.spf.result is SpfResult.PASS
    assert findings.spf.domain == "example.com"
    asked = len(resolver.queries)
    second = Findings()
    again = run(check.check(request(recipient="carol@example.net"), second))
    assert again is not None and again.action == "DUNNO"
    assert second.spf is not None and second.spf.result is SpfResult.PASS
    assert len(resolver.queries) == asked  # no DNS for the second recipient


def test_mail_from_fail_is_rejected_with_5_7_23() -> None:
    check, _ = checker()
    verdict = run(check.check(request(sender="x@bad.example", instance="i2"), Findings()))
    assert verdict is not None and verdict.final
    assert verdict.action.startswith(
        "550 5.7.23 Message rejected due to: SPF fail - not authorized. Please see "
        "https://www.open-spf.org/Why?s=mailfrom;id=x@bad.example;ip=192.0.2.10;")
    repeat = run(check.check(request(sender="x@bad.example", instance="i2"), Findings()))
    assert repeat is not None and repeat.action == verdict.action


def test_helo_fail_rejects_before_mail_from() -> None:
    check, _ = checker()
    verdict = run(check.check(request(helo_name="bad.example", instance="i3"), Findings()))
    assert verdict is not None and verdict.action.startswith("550 5.7.23")
    assert "s=helo;id=postmaster@bad.example" in verdict.action
    lenient, _ = checker(helo_reject="False")
    header = run(lenient.check(request(helo_name="bad.example", instance="i3"), Findings()))
    assert header is not None and header.action.startswith("PREPEND Received-SPF: Pass")


def test_errors_are_header_only_by_default_and_options_act() -> None:
    perm = request(sender="u@perm.example", instance="i4")
    temp = request(sender="u@temp.example", instance="i5")
    check, _ = checker()
    verdict = run(check.check(perm, Findings()))
    assert verdict is not None and verdict.action.startswith("PREPEND Received-SPF: PermError")
    verdict = run(check.check(temp, Findings()))
    assert verdict is not None and verdict.action.startswith("PREPEND Received-SPF: TempError")
    strict, _ = checker(permerror_reject=True, temperror_defer=True)
    verdict = run(strict.check(perm, Findings()))
    assert verdict is not None and verdict.action.startswith(
        "550 5.7.24 Message rejected due to: SPF permerror")
    verdict = run(strict.check(temp, Findings()))
    assert verdict is not None and verdict.action.startswith(
        "DEFER_IF_PERMIT 4.7.24 Message deferred due to: SPF temperror")


def test_authentication_results_header() -> None:
    check, _ = checker(header_type="AR", authserv_id="mx.example.net")
    verdict = run(check.check(request(), Findings()))
    assert verdict is not None
    assert verdict.action.startswith("PREPEND Authentication-Results: mx.example.net; "
                                     "spf=pass (")
    assert verdict.action.endswith(" smtp.mailfrom=example.com")


def test_null_sender_records_the_helo_outcome() -> None:
    check, _ = checker()
    findings = Findings()
    verdict = run(check.check(request(sender="", instance="i6"), findings))
    assert verdict is not None and "identity=helo" in verdict.action
    assert "envelope-from=postmaster@mail.example.com" in verdict.action
    assert findings.spf is not None and findings.spf.identity == "helo"


@pytest.mark.parametrize("attrs", [{"client_address": "127.0.0.1"},
                                   {"client_address": "::ffff:127.0.0.5"},
                                   {"sasl_username": "alice"}])
def test_local_and_authenticated_clients_are_skipped(attrs: dict[str, str]) -> None:
    check, resolver = checker()
    findings = Findings()
    assert run(check.check(request(sender="x@bad.example", **attrs), findings)) is None
    assert findings.spf is None
    assert resolver.queries == []


def test_untrusted_text_cannot_break_the_reply_line() -> None:
    zone = {"evil.example": [("TXT", "v=spf1 -all exp=e.evil.example")],
            "e.evil.example": [("TXT", "bad\r\nREJECT injected")]}
    check = SpfCheck(SpfSettings(mail_from_reject="False"), FakeResolver(zone),
                     hostname="mx")
    verdict = run(check.check(request(sender='a"b(c)@evil.example', helo_name="x\ny",
                                      instance="i7"), Findings()))
    assert verdict is not None
    assert "\n" not in verdict.action and "\r" not in verdict.action
    assert 'envelope-from="a\\"b(c)@evil.example"' in verdict.action


def test_evaluate_returns_both_outcomes() -> None:
    resolver = FakeResolver(ZONE)
    helo, mail = run(evaluate(request(), resolver, SpfSettings()))
    assert helo is not None and helo.identity == "helo" and helo.result is SpfResult.PASS
    assert mail is not None and mail.identity == "mailfrom"


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="helo_reject"):
        SpfSettings(helo_reject="Maybe")
    with pytest.raises(ValueError, match="mail_from_reject"):
        SpfSettings(mail_from_reject="Null")
    with pytest.raises(ValueError, match="skip_networks"):
        SpfSettings(skip_networks=("nonsense",))


# -- the command line --------------------------------------------------------------------

@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    resolver = FakeResolver(ZONE)
    monkeypatch.setattr(pw_dns, "DnsResolver", lambda **kwargs: resolver)
    return resolver


def test_cli_prints_result_word_first(fake_dns: FakeResolver,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["spf", "check", "--ip", "198.51.100.1", "--sender", "a@example.com",
                     "--helo", "mail.example.com"])
    out = capsys.readouterr().out
    assert code == 0
    assert out == "fail SPF fail - not authorized\n"
    assert cli.main(["spf", "check", "--ip", "192.0.2.10", "--sender", "",
                     "--helo", "mail.example.com"]) == 0
    assert capsys.readouterr().out.startswith("pass domain of mail.example.com designates")


@pytest.mark.parametrize("argv", [["--ip", "nope", "--sender", "a@b.example"],
                                  ["--ip", IP, "--sender", ""],
                                  ["--ip", IP, "--sender", "a@b.example", "--timeout", "0"],
                                  ["--ip", IP, "--sender", "a@b.example",
                                   "--nameserver", "ns.example:53"]])
def test_cli_bad_input_is_one_line_and_exit_2(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["spf", "check", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("postwarden: ")


# -- the dnspython adapter against a DNS server on loopback ------------------------------

SERVER_ZONE: dict[tuple[str, str], list[str]] = {
    ("example.com.", "TXT"): ['"v=spf1 ip4:192.0.2.0/24" " -all"', '"other"'],
    ("example.com.", "A"): ["192.0.2.1"],
    ("example.com.", "MX"): ["10 mx.example.com."],
    ("mail.example.com.", "TXT"): ['"v=spf1 mx -all"'],
    ("mail.example.com.", "MX"): ["10 example.com."],
    ("3.2.0.192.in-addr.arpa.", "PTR"): ["example.com."],
}
SILENT = "slow.example.com."
BROKEN = "broken.example.com."


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        if name == SILENT:
            return
        response = dns.message.make_response(query)
        if name == BROKEN:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in SERVER_ZONE:
            response.answer.append(dns.rrset.from_text_list(
                name, 300, "IN", rdtype, SERVER_ZONE[(name, rdtype)]))
        elif not any(key[0] == name for key in SERVER_ZONE):
            response.set_rcode(dns.rcode.NXDOMAIN)
        sock.sendto(response.to_wire(), self.client_address)


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    server = socketserver.ThreadingUDPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_adapter_answers(dns_server: str) -> None:
    resolver = pw_dns.DnsResolver(nameserver=dns_server, timeout=2)

    async def ask() -> list[Any]:
        return [await resolver.query(n, t) for n, t in (
            ("example.com", "TXT"), ("example.com", "MX"), ("example.com", "AAAA"),
            ("nowhere.example.com", "A"), ("3.2.0.192.in-addr.arpa", "PTR"))]

    txt, mx, nodata, nx, ptr = run(ask())
    assert txt.rcode == "NOERROR"
    assert sorted(txt.records) == ["other", "v=spf1 ip4:192.0.2.0/24 -all"]
    assert mx.records == ("10 mx.example.com",)
    assert (nodata.rcode, nodata.records) == ("NOERROR", ())
    assert nx.rcode == "NXDOMAIN"
    assert ptr.records == ("example.com",)


def test_adapter_failures(dns_server: str) -> None:
    resolver = pw_dns.DnsResolver(nameserver=dns_server, timeout=0.3)
    assert run(resolver.query("slow.example.com", "TXT")).rcode == "TIMEOUT"
    assert run(resolver.query("broken.example.com", "TXT")).rcode == "SERVFAIL"
    assert run(resolver.query("a" * 64 + ".example.com", "A")).rcode == "NXDOMAIN"


def test_cli_against_the_server(dns_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["spf", "check", "--nameserver", dns_server, "--helo", "h.example.org"]
    assert cli.main([*base, "--ip", "192.0.2.77", "--sender", "a@example.com"]) == 0
    assert capsys.readouterr().out.startswith("pass ")
    assert cli.main([*base, "--ip", "192.0.2.1", "--sender", "a@mail.example.com"]) == 0
    assert capsys.readouterr().out.startswith("pass ")
    assert cli.main([*base, "--ip", "198.51.100.1", "--sender", "a@example.com"]) == 0
    assert capsys.readouterr().out == "fail SPF fail - not authorized\n"
    assert cli.main([*base, "--ip", IP, "--sender", "a@slow.example.com",
                     "--timeout", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("temperror ")


def test_nameserver_syntax() -> None:
    assert pw_dns.parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert pw_dns.parse_nameserver("[::1]:5353") == ("::1", 5353)
    assert pw_dns.parse_nameserver("::1") == ("::1", 53)
