"""Where DMARC aggregate reports go: rua parsing, RFC 9990 section 4, the mail, sendmail."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from postwarden.milter.report_mail import (
    MAX_DESTINATIONS,
    Destination,
    Destinations,
    mailto_destinations,
    message,
    submit,
    verify,
)
from postwarden.milter.reports import Evaluation, ReportError, build_reports, validate
from postwarden.testing.dns import FakeResolver

DAY0 = 1_795_910_400
EVALUATION = Evaluation(
    time=DAY0 + 60, source_ip="192.0.2.1", header_from="example.org",
    envelope_from="example.org", envelope_to="example.net", policy_domain="example.org",
    record="v=DMARC1; p=none; rua=mailto:agg@reports.example.net", disposition="none",
    dkim_aligned=True, spf_aligned=False, dkim=(("example.org", "s", "pass"),),
    spf=("example.org", "mfrom", "fail"))


def addresses(found: Destinations) -> list[str]:
    return [d.address for d in found.usable]


def test_only_plain_mailto_addresses() -> None:
    found = mailto_destinations([
        " mailto:a@Example.ORG ", "https://reports.example/x", "mailto:b@example.org!10m",
        "mailto:c%40x@example.org?subject=hi", "mailto:-oQ@example.org",
        "mailto:d@exa mple.org", "mailto:a@example.org", "mailto:nobody",
        "mailto:e@example.org%2Cf@example.org"])
    assert addresses(found) == ["a@example.org", "b@example.org"]
    assert len(found.ignored) == 6
    assert any("not a mailto: URI" in line for line in found.ignored)
    many = mailto_destinations(f"mailto:r{i}@example.org" for i in range(8))
    assert len(many.usable) == MAX_DESTINATIONS
    assert sum("more than" in line for line in many.ignored) == 8 - MAX_DESTINATIONS


def run_verify(rua: str, resolver: FakeResolver, domain: str = "example.org") -> Destinations:
    uris = [uri.strip() for uri in rua.split(",")]
    return asyncio.run(verify(domain, mailto_destinations(uris), resolver))


def test_destinations_inside_the_organization_need_no_consent() -> None:
    resolver = FakeResolver()
    found = run_verify("mailto:d@reports.example.org", resolver, "sub.example.org")
    assert addresses(found) == ["d@reports.example.org"]
    assert resolver.queries == []


def test_external_destinations_need_a_report_record() -> None:
    resolver = FakeResolver({
        "example.org._report._dmarc.agreed.example": [("TXT", "v=DMARC1")],
        "example.org._report._dmarc.junk.example": [("TXT", "v=spf1 -all")],
    })
    found = run_verify("mailto:a@agreed.example, mailto:b@junk.example, "
                       "mailto:c@silent.example", resolver)
    assert addresses(found) == ["a@agreed.example"]
    assert not found.temporary
    assert ("example.org._report._dmarc.agreed.example", "TXT") in resolver.queries
    assert [line.split(":")[0] for line in found.ignored] == \
        ["b@junk.example", "c@silent.example"]


def test_an_override_on_the_same_host_replaces_and_another_host_cancels() -> None:
    resolver = FakeResolver({
        "example.org._report._dmarc.same.example": [
            ("TXT", "v=DMARC1; rua=mailto:inbox@same.example")],
        "example.org._report._dmarc.moved.example": [
            ("TXT", "v=DMARC1; rua=mailto:inbox@elsewhere.example")],
    })
    assert addresses(run_verify("mailto:x@same.example", resolver)) == ["inbox@same.example"]
    moved = run_verify("mailto:x@moved.example", resolver)
    assert addresses(moved) == [] and "another host" in moved.ignored[0]


def test_a_dns_failure_is_temporary() -> None:
    resolver = FakeResolver()
    resolver.fail("example.org._report._dmarc.slow.example")
    found = run_verify("mailto:x@slow.example", resolver)
    assert addresses(found) == [] and found.temporary


def test_too_long_names_cannot_be_checked() -> None:
    long = ".".join(["a" * 60] * 4) + ".example"
    found = run_verify(f"mailto:x@{long}", FakeResolver())
    assert addresses(found) == [] and "longer than DNS allows" in found.ignored[0]


def test_the_report_mail() -> None:
    [report] = build_reports([EVALUATION], begin=DAY0, end=DAY0 + 86400,
                             org_name="Example Receiver", email="dmarc@mx.example.net")
    data = report.gzipped()
    raw = message(report, data, ["agg@reports.example.net", "b@example.org"], now=DAY0 + 90000)
    mail = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail["From"] == "Example Receiver <dmarc@mx.example.net>"
    assert mail["To"] == "agg@reports.example.net, b@example.org"
    assert " ".join(str(mail["Subject"]).split()) == \
        f"Report Domain: example.org Submitter: mx.example.net Report-ID: <{report.report_id}>"
    assert mail["Message-ID"] == f"<{report.report_id}@mx.example.net>"
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_content_type() == "application/gzip"
    assert attachment.get_filename() == report.filename
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    validate(gzip.decompress(payload), report.format)


FAKE_SENDMAIL = """#!{python}
import json, sys
with open({log!r}, "w") as out:
    json.dump({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}, out)
sys.exit({status})
"""


def fake_sendmail(tmp_path: Path, status: int = 0) -> tuple[Path, Path]:
    log = tmp_path / "sendmail.json"
    program = tmp_path / "sendmail"
    program.write_text(FAKE_SENDMAIL.format(python=sys.executable, log=str(log),
                                            status=status))
    program.chmod(0o755)
    return program, log


def test_submit_runs_sendmail_with_an_argument_list(tmp_path: Path) -> None:
    program, log = fake_sendmail(tmp_path)
    submit(str(program), "dmarc@mx.example.net", ["a@example.org", "b@example.org"],
           b"Subject: x\n\nbody\n")
    called = json.loads(log.read_text())
    assert called["argv"] == ["-i", "-f", "dmarc@mx.example.net", "--", "a@example.org",
                              "b@example.org"]
    assert called["stdin"] == "Subject: x\n\nbody\n"


def test_submit_failures(tmp_path: Path) -> None:
    program, _ = fake_sendmail(tmp_path, status=75)
    with pytest.raises(ReportError, match="status 75"):
        submit(str(program), "dmarc@mx.example.net", ["a@example.org"], b"x")
    with pytest.raises(ReportError, match="not a plain address"):
        submit(str(program), "-odummy@x.example", ["a@example.org"], b"x")
    with pytest.raises(ReportError, match="No such file"):
        submit(str(tmp_path / "missing"), "d@mx.example.net", ["a@example.org"], b"x")


def test_domains_are_normalised_local_parts_are_not() -> None:
    found = mailto_destinations(["mailto:a@x.example", "mailto:a@X.EXAMPLE.",
                                 "mailto:A@x.example"])
    assert found.usable == (Destination("a@x.example", "x.example"),
                            Destination("A@x.example", "x.example"))
