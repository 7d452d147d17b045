"""DMARC aggregate reports: recording, grouping, both XML formats and their schemas."""

from __future__ import annotations

import gzip
import re
from dataclasses import replace

import pytest
from lxml import etree

from postwarden.milter import dmarc
from postwarden.milter.reports import (
    MAX_SIGNATURES,
    NAMESPACE,
    RFC7489,
    RFC9990,
    Evaluation,
    Published,
    Report,
    ReportError,
    build_reports,
    domain_of,
    parse_time,
    previous_day,
    validate,
)

DAY0 = 1_795_910_400            # 2026-11-29T00:00:00Z
RECORD = "v=DMARC1; p=reject; rua=mailto:dmarc@example.org"
BASE = Evaluation(
    time=DAY0 + 3600, source_ip="192.0.2.1", header_from="example.org",
    envelope_from="example.org", envelope_to="example.net", policy_domain="example.org",
    record=RECORD, disposition="none", dkim_aligned=True, spf_aligned=True,
    dkim=(("example.org", "s1", "pass"),), spf=("example.org", "mfrom", "pass"),
    policy="reject", requested="reject", discovery="treewalk")


def build(evaluations: list[Evaluation], fmt: str = RFC9990, node: str = "mx1") -> list[Report]:
    return build_reports(evaluations, begin=DAY0, end=DAY0 + 86400, org_name="Example Org",
                         email="dmarc-reports@mx.example.net", format=fmt, node=node)


def tree(report: Report) -> etree._Element:
    data = report.xml()
    validate(data, report.format)
    return etree.fromstring(data)


def text(element: etree._Element, path: str) -> list[str]:
    return [str(e.text or "") for e in element.iterfind(path, namespaces={"d": NAMESPACE})]


# -- recording -----------------------------------------------------------------------------

def test_from_result_keeps_domains_only_and_the_applied_disposition() -> None:
    record = dmarc.parse_record("v=DMARC1; p=reject; t=y")
    assert record is not None
    result = dmarc.DmarcResult(
        result="fail", from_domain="Example.ORG", policy_domain="example.org",
        org_domain="example.org", policy="reject", disposition="quarantine",
        spf_aligned=False, dkim_aligned=False, record=record, reason="no aligned pass",
        discovery="psl", testing=True)
    spf = dmarc.AuthOutcome("bounce.example.net", "softfail", scope="mfrom")
    signatures = [dmarc.AuthOutcome("Example.net", "FAIL", "sel")] * (MAX_SIGNATURES + 5)
    got = Evaluation.from_result(
        result, time=DAY0 + 5, source_ip="IPv6:2001:DB8::1",
        envelope_from="<alice@Bounce.Example.NET>", envelope_to="bob@example.COM",
        applied="report-only", spf=spf, dkim=signatures)
    assert (got.header_from, got.envelope_from, got.envelope_to) == \
        ("example.org", "bounce.example.net", "example.com")
    assert got.source_ip == "2001:db8::1"
    assert got.disposition == "none"       # not a disposition word: nothing was applied
    assert (got.policy, got.requested, got.discovery, got.testing, got.result) == \
        ("reject", "quarantine", "psl", True, "fail")
    assert got.record == "v=DMARC1; p=reject; t=y"
    assert len(got.dkim) == MAX_SIGNATURES and got.dkim[0] == ("example.net", "sel", "fail")
    assert got.spf == ("bounce.example.net", "mfrom", "softfail")


def test_json_round_trip_and_refusal() -> None:
    assert Evaluation.from_json(BASE.to_json()) == BASE
    none_spf = replace(BASE, spf=None, dkim=())
    assert Evaluation.from_json(none_spf.to_json()) == none_spf
    for bad in ("", "[]", "{}", '"x"', BASE.to_json().replace("true", '"yes"', 1),
                BASE.to_json().replace('["example.org","s1","pass"]', '["a",1,"pass"]')):
        with pytest.raises(ValueError):
            Evaluation.from_json(bad)


def test_domain_of() -> None:
    assert domain_of("<Alice@Example.ORG.>") == "example.org"
    assert domain_of("") == ""
    assert len(domain_of("a@" + "x" * 1000)) == 255


# -- grouping --------------------------------------------------------------------------------

def test_one_report_per_policy_domain_with_identical_rows_counted() -> None:
    other = replace(BASE, header_from="mail.example.com", envelope_from="mail.example.com",
                    policy_domain="example.com", dkim=(("example.com", "k", "pass"),),
                    record="v=DMARC1; p=none")
    failing = replace(BASE, source_ip="198.51.100.9", dkim_aligned=False, spf_aligned=False,
                      disposition="reject", dkim=(), spf=("evil.example", "mfrom", "fail"))
    evaluations = [BASE, BASE, other, failing, replace(BASE, time=DAY0 + 86400),
                   replace(BASE, time=DAY0 - 1), replace(BASE, policy_domain=""),
                   replace(BASE, source_ip="")]
    reports = build(evaluations)
    assert [r.policy_domain for r in reports] == ["example.com", "example.org"]
    org = reports[1]
    assert org.messages == 3
    assert sorted((row.source_ip, count) for row, count in org.rows) == \
        [("192.0.2.1", 2), ("198.51.100.9", 1)]
    root = tree(org)
    assert root.tag == f"{{{NAMESPACE}}}feedback"
    assert text(root, "d:record/d:row/d:count") == ["2", "1"]
    assert text(root, "d:record/d:row/d:policy_evaluated/d:disposition") == ["pass", "reject"]


def test_the_last_record_of_the_period_is_published_with_defaults() -> None:
    old = replace(BASE, record="v=DMARC1; p=none")
    new = replace(BASE, time=BASE.time + 60,
                  record="v=DMARC1; p=quarantine; sp=reject; adkim=s; fo=1; t=y")
    [report] = build([new, old])
    root = tree(report)
    published = root.find("d:policy_published", namespaces={"d": NAMESPACE})
    assert published is not None
    values = {etree.QName(e).localname: e.text for e in published}
    assert values == {"domain": "example.org", "discovery_method": "treewalk",
                      "p": "quarantine", "sp": "reject", "np": "reject", "fo": "1",
                      "adkim": "s", "aspf": "r", "testing": "y"}


def test_published_defaults_and_record_problems() -> None:
    plain = Published.of("example.org", "v=DMARC1; p=Reject; rua=mailto:a@example.org")
    assert (plain.p, plain.sp, plain.np, plain.adkim, plain.testing, plain.pct, plain.rua) == \
        ("reject", "reject", "reject", "r", "n", 100, ("mailto:a@example.org",))
    assert plain.problems == ()
    odd = Published.of("example.org", "v=DMARC1; p=reject; np=none; pct=30; adkim=x")
    assert (odd.p, odd.sp, odd.np, odd.adkim, odd.pct) == ("reject", "reject", "none", "r", 30)
    assert odd.problems == ("invalid adkim=x; r used",)
    assert Published.of("example.org", "p=reject; v=DMARC1").problems == ("no DMARC record",)
    for fmt, expected in ((RFC9990, ["DMARC record: invalid adkim=x; r used; "
                                     "DMARC record: invalid t=maybe; n used"]),
                          (RFC7489, ["DMARC record: invalid adkim=x; r used",
                                     "DMARC record: invalid t=maybe; n used"])):
        report = build([replace(BASE, record="v=DMARC1; p=reject; adkim=x; t=maybe")], fmt)[0]
        path = "d:report_metadata/d:error" if fmt == RFC9990 else "report_metadata/error"
        assert text(tree(report), path) == expected


def test_policy_domains_that_are_not_domain_names_are_left_out() -> None:
    assert build([replace(BASE, policy_domain="../../etc/passwd")]) == []
    assert build([replace(BASE, policy_domain="bücher.example")])[0].policy_domain == \
        "xn--bcher-kva.example"


# -- rows ------------------------------------------------------------------------------------

def test_override_reasons() -> None:
    local = replace(BASE, dkim_aligned=False, spf_aligned=False, disposition="quarantine")
    testing = replace(local, record="v=DMARC1; p=reject; t=y", requested="quarantine",
                      testing=True)
    sampled = replace(local, record="v=DMARC1; p=reject; pct=10", requested="none",
                      disposition="none")
    unsure = replace(local, record="v=DMARC1; p=reject", requested="none",
                     disposition="none", result="temperror")
    [(row, _)] = build([unsure])[0].rows
    assert row.reasons == (("other", "DMARC temperror: the policy was not applied"),)
    new = {r.policy_domain: r for r in build([local])}
    [(row, _)] = new["example.org"].rows
    assert row.reasons == (("local_policy",
                            "the receiver applied quarantine instead of reject"),)
    [(row, _)] = build([testing])[0].rows
    assert row.reasons == (("policy_test_mode", ""),)
    [(row, _)] = build([testing], RFC7489)[0].rows
    assert row.reasons[0][0] == "other"
    [(row, _)] = build([sampled], RFC7489)[0].rows
    assert row.reasons == (("sampled_out", ""),)
    [(row, _)] = build([sampled])[0].rows
    assert row.reasons == (("other", "sampled out by pct=10"),)
    for fmt in (RFC9990, RFC7489):
        for report in build([local, testing, sampled, unsure], fmt):
            tree(report)


def test_dkim_signatures_in_rfc9990_order_and_at_most_100() -> None:
    signatures = (("unrelated.example", "a", "fail"), ("other.example", "b", "pass"),
                  ("example.org", "c", "fail"), ("mail.example.org", "d", "pass"),
                  ("example.org", "e", "pass"), ("x.example", "f", "bogus"))
    [(row, _)] = build([replace(BASE, header_from="mail.example.org",
                                dkim=signatures)])[0].rows
    # failures last; among them those of the From domain's organization first
    assert [s[1] for s in row.dkim_results] == ["d", "e", "b", "c", "a", "f"]
    assert row.dkim_results[-1] == ("x.example", "f", "permerror")
    many = tuple((f"d{i}.example", "s", "fail") for i in range(150))
    [(row, _)] = build([replace(BASE, dkim=many)])[0].rows
    assert len(row.dkim_results) == MAX_SIGNATURES


def test_spf_results_per_format() -> None:
    helo = replace(BASE, spf=("mx.example.org", "helo", "pass"), envelope_from="")
    nospf = replace(BASE, spf=None)
    root = tree(build([helo])[0])
    assert text(root, "d:record/d:auth_results/d:spf/d:domain") == []
    assert text(root, "d:record/d:identifiers/d:envelope_from") == [""]
    old = etree.fromstring(build([helo], RFC7489)[0].xml())
    assert text(old, "record/auth_results/spf/scope") == ["helo"]
    old = etree.fromstring(build([nospf], RFC7489)[0].xml())
    assert text(old, "record/auth_results/spf/result") == ["none"]
    assert text(old, "record/auth_results/spf/domain") == ["example.org"]


def test_rfc7489_format() -> None:
    report = build([BASE, replace(BASE, source_ip="2001:db8::25")], RFC7489)[0]
    root = tree(report)
    assert root.tag == "feedback" and root.nsmap == {}
    assert text(root, "policy_published/pct") == ["100"]
    assert text(root, "record/row/policy_evaluated/disposition") == ["none", "none"]
    assert text(root, "record/row/source_ip") == ["192.0.2.1", "2001:db8::25"]
    assert root.find("report_metadata/generator") is None


def test_unprintable_text_is_replaced() -> None:
    report = build([replace(BASE, header_from="exa\x01mple.org")])[0]
    assert text(tree(report), "d:record/d:identifiers/d:header_from") == ["exa?mple.org"]


# -- schema ---------------------------------------------------------------------------------

def test_schemas_refuse_what_the_rfcs_refuse() -> None:
    new = build([BASE])[0].xml()
    old = build([BASE], RFC7489)[0].xml()
    validate(new, RFC9990)
    validate(old, RFC7489)
    with pytest.raises(ReportError, match="rfc9990 schema"):
        validate(old, RFC9990)                       # no namespace
    with pytest.raises(ReportError, match=r"rfc7489 schema.*pct"):
        validate(old.replace(b"<pct>100</pct>", b""), RFC7489)   # pct is required there
    with pytest.raises(ReportError):                # "pass" is an RFC 9990 word only
        validate(old.replace(b"<disposition>none<", b"<disposition>pass<"), RFC7489)
    with pytest.raises(ReportError):                # RFC 9990: selector is required
        validate(new.replace(b"<selector>s1</selector>", b""), RFC9990)
    with pytest.raises(ReportError):                # at least one record
        validate(re.sub(rb"<record>.*</record>", b"", new, flags=re.S), RFC9990)
    with pytest.raises(ReportError, match="well-formed"):
        validate(b"<feedback", RFC9990)


# -- names -----------------------------------------------------------------------------------

def test_report_id_file_name_and_subject() -> None:
    report = build([BASE])[0]
    again = build([BASE, BASE])[0]
    assert again.report_id == report.report_id       # stable: a re-send keeps its name
    assert build([BASE], node="mx2")[0].report_id != report.report_id
    assert build([BASE], RFC7489)[0].report_id != report.report_id
    assert re.fullmatch(r"[0-9a-f]{32}", report.report_id)
    assert report.filename == (f"mx.example.net!example.org!{DAY0}!{DAY0 + 86399}!"
                               f"{report.report_id}.xml.gz")
    # RFC 9990 3.3's dmarc-subject: "Report" "Domain:" d "Submitter:" d ["Report-ID:" id]
    assert re.fullmatch(r"Report Domain: example\.org Submitter: mx\.example\.net "
                        r"Report-ID: <[0-9a-f]{32}>", report.subject)
    data = report.gzipped()
    assert data == report.gzipped()                  # reproducible bytes
    assert gzip.decompress(data) == report.xml()


def test_a_bad_report_email_or_format_is_an_error() -> None:
    with pytest.raises(ReportError, match="not a plain address"):
        build_reports([BASE], begin=DAY0, end=DAY0 + 1, org_name="x", email="nobody")
    with pytest.raises(ReportError, match="unknown report format"):
        build_reports([BASE], begin=DAY0, end=DAY0 + 1, org_name="x", email="a@b.example",
                      format="xml")


def test_periods() -> None:
    assert previous_day(DAY0 + 86400 + 5) == (DAY0, DAY0 + 86400)
    assert previous_day(DAY0 + 86400) == (DAY0, DAY0 + 86400)
    assert parse_time("2026-11-29") == DAY0
    assert parse_time("2026-11-29T01:00:00+01:00") == DAY0
    assert parse_time("2026-11-29T06:00:00Z") == DAY0 + 6 * 3600
    assert parse_time(str(DAY0)) == DAY0
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday")
