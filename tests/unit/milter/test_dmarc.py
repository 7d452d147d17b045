"""DMARC evaluation (RFC 9989): discovery by tree walk, alignment, p/sp/np, psd, t, pct,
DNS errors and the time budget. Test domains only; DNS from FakeResolver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from postwarden.milter.dmarc import AuthOutcome, DmarcResult, DmarcSettings, evaluate
from postwarden.testing.dns import FakeResolver

SETTINGS = DmarcSettings()


def zone(records: dict[str, str], *, hosts: Sequence[str] = ()) -> FakeResolver:
    resolver = FakeResolver()
    for name, text in records.items():
        resolver.add(f"_dmarc.{name}", "TXT", text)
    for host in hosts:
        resolver.add(host, "A", "192.0.2.1")
    return resolver


def run(from_domain: str, resolver: FakeResolver, *, spf: AuthOutcome | None = None,
        dkim: Sequence[AuthOutcome] = (), settings: DmarcSettings = SETTINGS,
        sample: float | None = None) -> DmarcResult:
    draw = (lambda: sample) if sample is not None else None
    return asyncio.run(evaluate(from_domain, spf, dkim, resolver, settings, sample=draw))


def spf_pass(domain: str, scope: str = "mfrom") -> AuthOutcome:
    return AuthOutcome(domain, "pass", scope=scope)


def dkim(domain: str, result: str = "pass", selector: str = "s1") -> AuthOutcome:
    return AuthOutcome(domain, result, selector)


def dmarc_queries(resolver: FakeResolver) -> list[str]:
    return [name for name, kind in resolver.queries if name.startswith("_dmarc.")]


# -- pass / fail ---------------------------------------------------------------------------

EXAMPLE = {"example.com": "v=DMARC1; p=reject; rua=mailto:agg@example.com"}


def test_no_record_is_none() -> None:
    r = run("example.org", zone({}))
    assert (r.result, r.policy, r.disposition, r.policy_domain) == ("none", "", "none", "")
    assert r.record is None and "no DMARC record" in r.reason


def test_spf_aligned_pass() -> None:
    r = run("example.com", zone(EXAMPLE), spf=spf_pass("example.com"))
    assert (r.result, r.spf_aligned, r.dkim_aligned, r.disposition) == (
        "pass", True, False, "none")
    assert r.policy == "reject" and r.policy_domain == "example.com"
    assert r.record is not None and r.record.rua == ("mailto:agg@example.com",)


def test_unaligned_fail_rejects() -> None:
    r = run("example.com", zone(EXAMPLE), spf=spf_pass("example.net"),
            dkim=[dkim("example.net")])
    assert (r.result, r.policy, r.disposition) == ("fail", "reject", "reject")
    assert not r.spf_aligned and not r.dkim_aligned
    assert "p=reject" in r.reason


def test_no_identifiers_fail() -> None:
    assert run("example.com", zone(EXAMPLE)).result == "fail"


def test_helo_scope_counts_only_for_the_null_sender() -> None:
    r = run("example.com", zone(EXAMPLE), spf=spf_pass("example.com", scope="helo"))
    assert r.result == "fail" and not r.spf_aligned
    # RFC 7208 2.4: for MAIL FROM:<> the MAIL FROM identity is postmaster@HELO
    r = asyncio.run(evaluate("example.com", spf_pass("mx.example.com", scope="helo"), [],
                             zone(EXAMPLE), SETTINGS, null_sender=True))
    assert r.result == "pass" and r.spf_aligned


@pytest.mark.parametrize("result", ["fail", "softfail", "neutral", "none", "temperror",
                                    "permerror", "policy"])
def test_only_pass_counts(result: str) -> None:
    r = run("example.com", zone(EXAMPLE), spf=AuthOutcome("example.com", result, scope="mfrom"),
            dkim=[dkim("example.com", result)])
    assert r.result == "fail"


def test_any_aligned_signature_passes_not_only_the_first() -> None:
    # authheaders checks only the topmost signature; an aligned second one must count.
    r = run("example.com", zone(EXAMPLE),
            dkim=[dkim("esp.example.net"), dkim("example.com", "fail"), dkim("example.com")])
    assert r.result == "pass" and r.dkim_aligned


def test_case_and_trailing_dot_and_idn() -> None:
    resolver = zone({"xn--bcher-kva.example": "v=DMARC1; p=reject"})
    r = run("Bücher.Example.", resolver, dkim=[dkim("XN--BCHER-KVA.example")])
    assert r.result == "pass" and r.from_domain == "xn--bcher-kva.example"


@pytest.mark.parametrize("bad", ["", "   ", "[192.0.2.1]", "exa mple.com", "-bad-.com",
                                 "a" * 64 + ".com"])
def test_bad_from_domain_is_permerror(bad: str) -> None:
    r = run(bad, zone(EXAMPLE))
    assert r.result == "permerror" and r.disposition == "none"


# -- alignment matrix ----------------------------------------------------------------------

ORG = "v=DMARC1; p=reject; adkim={a}; aspf={a}"


@pytest.mark.parametrize(("mode", "author", "identifier", "aligned"), [
    ("r", "example.com", "example.com", True),
    ("r", "mail.example.com", "example.com", True),
    ("r", "example.com", "mail.example.com", True),
    ("r", "a.mail.example.com", "b.example.com", True),
    ("r", "example.com", "example.net", False),
    ("r", "example.com", "badexample.com", False),
    ("r", "example.com", "example.com.evil.net", False),
    ("s", "example.com", "example.com", True),
    ("s", "EXAMPLE.com", "example.COM", True),
    ("s", "mail.example.com", "example.com", False),
    ("s", "example.com", "mail.example.com", False),
])
@pytest.mark.parametrize("kind", ["spf", "dkim"])
def test_alignment_matrix(mode: str, author: str, identifier: str, aligned: bool,
                          kind: str) -> None:
    resolver = zone({"example.com": ORG.format(a=mode)}, hosts=["mail.example.com"])
    if kind == "spf":
        r = run(author, resolver, spf=spf_pass(identifier))
        assert r.spf_aligned is aligned
    else:
        r = run(author, resolver, dkim=[dkim(identifier)])
        assert r.dkim_aligned is aligned
    assert r.result == ("pass" if aligned else "fail")


def test_adkim_and_aspf_are_independent() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject; adkim=s; aspf=r"},
                    hosts=["mail.example.com"])
    assert run("mail.example.com", resolver, dkim=[dkim("example.com")]).result == "fail"
    assert run("mail.example.com", resolver, spf=spf_pass("example.com")).result == "pass"


def test_psd_n_below_splits_organizations() -> None:
    # sub.example.com declares itself an org domain: example.com's d= does not align.
    resolver = zone({"example.com": "v=DMARC1; p=reject",
                     "sub.example.com": "v=DMARC1; p=quarantine; psd=n"},
                    hosts=["a.sub.example.com"])
    r = run("a.sub.example.com", resolver, dkim=[dkim("example.com")])
    assert (r.result, r.org_domain, r.policy_domain) == ("fail", "sub.example.com",
                                                         "sub.example.com")
    assert r.policy == "quarantine"   # sp absent: p of the org record
    assert run("a.sub.example.com", resolver, dkim=[dkim("b.sub.example.com")]).result == "pass"
    # and from example.com, a signature by the sub-organization does not align either
    assert run("example.com", resolver, dkim=[dkim("x.sub.example.com")]).result == "fail"


def test_identifier_outside_org_costs_no_query() -> None:
    resolver = zone(EXAMPLE)
    run("example.com", resolver, dkim=[dkim(f"d{i}.example.net") for i in range(20)])
    assert dmarc_queries(resolver) == ["_dmarc.example.com", "_dmarc.com"]


def test_many_identifiers_are_bounded() -> None:
    resolver = zone(EXAMPLE)
    r = run("example.com", resolver, dkim=[dkim(f"a.b.c.d{i}.example.com") for i in range(30)])
    assert r.result == "pass"   # the first one walked aligns
    resolver = zone({"example.com": "v=DMARC1; p=reject", **{
        f"d{i}.example.com": "v=DMARC1; p=none; psd=n" for i in range(30)}})
    r = run("example.com", resolver, dkim=[dkim(f"x.d{i}.example.com") for i in range(30)])
    assert r.result == "fail"
    assert len(dmarc_queries(resolver)) <= 2 + 8 * 8


# -- policy discovery: p / sp / np and the walk --------------------------------------------

SUBS = {"example.com": "v=DMARC1; p=reject; sp=quarantine; np=none"}


def test_existing_subdomain_gets_sp() -> None:
    r = run("mail.example.com", zone(SUBS, hosts=["mail.example.com"]))
    assert (r.policy, r.disposition, r.policy_domain, r.org_domain) == (
        "quarantine", "quarantine", "example.com", "example.com")
    assert "sp=quarantine" in r.reason


def test_nonexistent_subdomain_gets_np() -> None:
    resolver = zone(SUBS)
    r = run("nx.example.com", resolver)
    assert (r.policy, r.disposition) == ("none", "none")
    assert "np=none" in r.reason
    assert {("nx.example.com", t) for t in ("A", "AAAA", "MX")} <= set(resolver.queries)


def test_subdomain_exists_with_mx_only_or_nodata() -> None:
    resolver = zone(SUBS)
    resolver.add("mx-only.example.com", "MX", "10 mail.example.com")
    resolver.exist("txt-only.example.com")
    assert run("mx-only.example.com", resolver).policy == "quarantine"
    assert run("txt-only.example.com", resolver).policy == "quarantine"


def test_np_absent_falls_back_to_sp_then_p() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject; sp=quarantine"})
    assert run("nx.example.com", resolver).policy == "quarantine"
    resolver = zone({"example.com": "v=DMARC1; p=reject"})
    assert run("nx.example.com", resolver).policy == "reject"
    assert ("nx.example.com", "A") not in resolver.queries   # np absent: no existence query


def test_np_without_sp_and_existing_subdomain_uses_p() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=quarantine; np=reject"},
                    hosts=["www.example.com"])
    assert run("www.example.com", resolver).policy == "quarantine"
    assert run("ghost.example.com", resolver).policy == "reject"


def test_existence_dns_error_is_temperror_when_failing() -> None:
    resolver = zone(SUBS)
    resolver.fail("flaky.example.com")
    r = run("flaky.example.com", resolver)
    assert r.result == "temperror"
    r = run("flaky.example.com", resolver, dkim=[dkim("example.com")])
    assert r.result == "pass"


def test_author_record_wins_over_org_record() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject",
                     "mail.example.com": "v=DMARC1; p=none; sp=reject"})
    r = run("mail.example.com", resolver)
    assert (r.policy_domain, r.policy, r.org_domain) == ("mail.example.com", "none",
                                                         "example.com")


def test_rfc_example_org_record_applies_below_intermediate_record() -> None:
    # RFC 9989 4.10.2: records at mail.example.com and example.com -> org example.com,
    # whose record (sp) applies to a.mail.example.com.
    resolver = zone({"mail.example.com": "v=DMARC1; p=none",
                     "example.com": "v=DMARC1; p=reject; sp=quarantine"},
                    hosts=["a.mail.example.com"])
    r = run("a.mail.example.com", resolver)
    assert (r.org_domain, r.policy_domain, r.policy) == ("example.com", "example.com",
                                                         "quarantine")
    assert dmarc_queries(resolver) == ["_dmarc.a.mail.example.com", "_dmarc.mail.example.com",
                                       "_dmarc.example.com", "_dmarc.com"]


def test_walk_stops_at_psd_n_and_ignores_errors_beyond() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject; psd=n"})
    resolver.fail("_dmarc.com")
    r = run("example.com", resolver, spf=spf_pass("example.com"))
    assert r.result == "pass" and r.org_domain == "example.com"


def test_psd_record_applies_to_unregistered_subdomains() -> None:
    # RFC 9989 (PSD DMARC): only the PSD publishes; the org domain is one label below it.
    resolver = zone({"bank": "v=DMARC1; p=reject; np=reject; sp=quarantine; psd=y"},
                    hosts=["brand.bank"])
    r = run("login.brand.bank", resolver)
    assert (r.policy_domain, r.org_domain, r.policy, r.result) == (
        "bank", "brand.bank", "reject", "fail")   # login.brand.bank does not exist: np
    r = run("brand.bank", resolver)
    assert (r.policy, r.org_domain) == ("quarantine", "brand.bank")
    # relaxed alignment within the org domain under the PSD
    assert run("login.brand.bank", resolver, dkim=[dkim("brand.bank")]).result == "pass"
    assert run("login.brand.bank", resolver, dkim=[dkim("other.bank")]).result == "fail"


def test_org_record_beats_psd_record() -> None:
    resolver = zone({"bank": "v=DMARC1; p=reject; psd=y",
                     "brand.bank": "v=DMARC1; p=none"}, hosts=["www.brand.bank"])
    r = run("www.brand.bank", resolver)
    assert (r.policy_domain, r.policy) == ("brand.bank", "none")


def test_long_names_take_at_most_eight_queries() -> None:
    name = "a.b.c.d.e.f.g.h.i.j.mail.example.com"
    resolver = zone({})
    assert run(name, resolver).result == "none"
    assert len(dmarc_queries(resolver)) == 8
    resolver = zone({"example.com": "v=DMARC1; p=reject"})
    r = run(name, resolver, dkim=[dkim("x.y.z.1.2.3.4.5.6.7.8.example.com")])
    assert r.result == "pass"
    assert len(dmarc_queries(resolver)) <= 16


def test_multiple_records_at_a_name_are_ignored() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject"})
    resolver.add("_dmarc.mail.example.com", "TXT", "v=DMARC1; p=none")
    resolver.add("_dmarc.mail.example.com", "TXT", "v=DMARC1; p=quarantine")
    resolver.add("mail.example.com", "A", "192.0.2.1")
    r = run("mail.example.com", resolver)
    assert (r.policy_domain, r.policy) == ("example.com", "reject")
    resolver = FakeResolver()
    resolver.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    resolver.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    assert run("example.org", resolver).result == "none"


def test_other_txt_records_at_dmarc_name_are_ignored() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject"})
    resolver.add("_dmarc.example.com", "TXT", "v=spf1 -all")
    resolver.add("_dmarc.example.com", "TXT", "google-site-verification=abc")
    assert run("example.com", resolver).policy == "reject"


def test_unusable_record_is_permerror_without_policy() -> None:
    r = run("example.com", zone({"example.com": "v=DMARC1; p=rejekt"}))
    assert (r.result, r.disposition, r.policy) == ("permerror", "none", "")
    assert r.record is not None and "invalid p=rejekt" in r.reason


def test_bad_policy_with_rua_acts_as_none() -> None:
    r = run("example.com", zone({"example.com": "v=DMARC1; p=rejekt; rua=mailto:a@b.example"}))
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")


# -- t=y and pct ---------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "expected"), [("reject", "quarantine"),
                                                  ("quarantine", "none"), ("none", "none")])
def test_testing_mode_is_one_step_milder(policy: str, expected: str) -> None:
    r = run("example.com", zone({"example.com": f"v=DMARC1; p={policy}; t=y"}))
    assert (r.result, r.policy, r.disposition) == ("fail", policy, expected)
    assert r.testing is (policy != "none")


def test_testing_mode_n_is_normal() -> None:
    r = run("example.com", zone({"example.com": "v=DMARC1; p=reject; t=n"}))
    assert r.disposition == "reject" and not r.testing


@pytest.mark.parametrize(("pct", "draw", "expected"), [
    (50, 0.3, "reject"), (50, 0.7, "quarantine"), (0, 0.0, "quarantine"),
    (100, 0.999, "reject"), (1, 0.0, "reject"), (1, 0.01, "quarantine"),
])
def test_pct_sampling(pct: int, draw: float, expected: str) -> None:
    r = run("example.com", zone({"example.com": f"v=DMARC1; p=reject; pct={pct}"}), sample=draw)
    assert r.disposition == expected


def test_pct_quarantine_not_sampled_is_none() -> None:
    r = run("example.com", zone({"example.com": "v=DMARC1; p=quarantine; pct=0"}), sample=0.5)
    assert r.disposition == "none" and "pct=0" in r.reason


def test_pct_never_drawn_on_pass() -> None:
    def draw() -> float:
        raise AssertionError("sampled a passing message")
    resolver = zone({"example.com": "v=DMARC1; p=reject; pct=10"})
    r = asyncio.run(evaluate("example.com", spf_pass("example.com"), [], resolver, SETTINGS,
                             sample=draw))
    assert r.result == "pass"


# -- DNS errors and the budget -------------------------------------------------------------

@pytest.mark.parametrize("rcode", ["TIMEOUT", "SERVFAIL"])
def test_dns_error_at_author_is_temperror(rcode: str) -> None:
    resolver = zone(EXAMPLE)
    resolver.fail("_dmarc.example.com", rcode=rcode)
    r = run("example.com", resolver, spf=spf_pass("example.com"))
    assert (r.result, r.disposition) == ("temperror", "none")
    assert rcode in r.reason


def test_dns_error_at_org_below_public_suffix_is_temperror() -> None:
    resolver = zone({})
    resolver.add("mail.example.com", "A", "192.0.2.1")
    resolver.fail("_dmarc.example.com")
    assert run("mail.example.com", resolver).result == "temperror"


def test_dns_error_at_public_suffix_falls_back_to_psl() -> None:
    resolver = zone(EXAMPLE)
    resolver.fail("_dmarc.com")
    r = run("example.com", resolver)
    assert (r.result, r.policy, r.discovery) == ("fail", "reject", "psl")
    strict = DmarcSettings(psl_fallback=False)
    assert run("example.com", resolver, settings=strict).result == "temperror"


def test_identifier_walk_error_only_matters_when_nothing_aligns() -> None:
    resolver = zone(EXAMPLE)
    resolver.fail("_dmarc.x.example.com")
    r = run("example.com", resolver, dkim=[dkim("x.example.com")])
    assert r.result == "temperror" and "alignment could not be checked" in r.reason
    r = run("example.com", resolver, dkim=[dkim("x.example.com"), dkim("example.com")])
    assert r.result == "pass"


def test_budget_turns_slow_dns_into_temperror() -> None:
    resolver = zone(EXAMPLE)
    resolver.delay = 2.0
    started = time.monotonic()
    r = run("example.com", resolver, settings=DmarcSettings(budget=0.2))
    assert time.monotonic() - started < 1.5
    assert r.result == "temperror" and "budget" in r.reason


def test_walk_queries_run_concurrently() -> None:
    resolver = zone({"example.com": "v=DMARC1; p=reject"})
    resolver.delay = 0.2
    started = time.monotonic()
    run("a.b.c.mail.example.com", resolver, settings=DmarcSettings(budget=1.0))
    assert time.monotonic() - started < 0.8   # 6 names, one round trip
