"""The log generator: deterministic, exact in length, one content in every format, and a
ground truth that follows pflogsumm 1.1.5's counting rules (checked rule by rule here, and
against pflogsumm itself in test_maillog_pflogsumm.py)."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import pytest

from postwarden.lab import maillog, maillog_truth, pflogsumm
from postwarden.lab.maillog import Options
from postwarden.lab.maillog_truth import (
    Counter,
    Fact,
    Totals,
    client_domain,
    generic_command,
    pflogsumm_command,
)

BSD = re.compile(rb"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d mx1 ")
RFC3339 = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+01:00 mx1 ")
SHORT_ISO = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0100 mx1 ")
POSTLOG = re.compile(rb"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d mx1 ")


def render(**options: object) -> tuple[bytes, maillog.Truth]:
    out = io.BytesIO()
    truth = maillog.generate(out, Options(**options))  # type: ignore[arg-type]
    return out.getvalue(), truth


def bodies(data: bytes, stamp: re.Pattern[bytes]) -> list[bytes]:
    lines = data.splitlines()
    assert all(stamp.match(line) for line in lines), [ln for ln in lines if not stamp.match(ln)][:3]
    return [stamp.sub(b"", line, count=1) for line in lines]


def test_same_seed_same_log_and_exact_length() -> None:
    first, truth = render(lines=3000, seed=7)
    again, _ = render(lines=3000, seed=7)
    other, _ = render(lines=3000, seed=8)
    assert first == again
    assert first != other
    assert first.count(b"\n") == truth.lines == 3000
    assert render(lines=0)[0] == b""


def test_every_format_carries_the_same_lines() -> None:
    bsd, truth = render(lines=5000, seed=2, format="bsd")
    rfc, rfc_truth = render(lines=5000, seed=2, format="rfc3339")
    iso, _ = render(lines=5000, seed=2, format="short-iso")
    postlog, _ = render(lines=5000, seed=2, format="postlog")
    journal, _ = render(lines=5000, seed=2, format="journal-json")
    assert truth == rfc_truth
    assert bodies(bsd, BSD) == bodies(rfc, RFC3339) == bodies(iso, SHORT_ISO)
    assert bodies(postlog, POSTLOG) == bodies(bsd, BSD)
    entries = [json.loads(line) for line in journal.splitlines()]
    messages = []
    for entry in entries:
        text = entry["MESSAGE"]
        raw = bytes(text) if isinstance(text, list) else text.encode()
        pid = f"[{entry['_PID']}]" if "_PID" in entry else ""
        messages.append(f"{entry['SYSLOG_IDENTIFIER']}{pid}: ".encode() + raw)
    assert messages == bodies(bsd, BSD)
    # Time order holds across the whole file.
    stamps = [int(entry["__REALTIME_TIMESTAMP"]) for entry in entries]
    assert stamps == sorted(stamps)


def test_bsd_day_is_space_padded_and_rfc3339_keeps_the_year() -> None:
    bsd, _ = render(lines=1, start=maillog.DEFAULT_START, utc_offset=0)
    postlog, _ = render(lines=1, start=maillog.DEFAULT_START, utc_offset=0, format="postlog")
    assert postlog.startswith(b"Mar 05 00:00:")
    rfc, _ = render(lines=1, start=maillog.DEFAULT_START, utc_offset=0, format="rfc3339")
    assert bsd.startswith(b"Mar  5 00:00:")
    assert rfc.startswith(b"2026-03-05T00:00:") and b"+00:00 mx1 " in rfc


def test_the_log_has_every_kind_that_matters() -> None:
    data, truth = render(lines=40_000, seed=1, queue_ids="long")
    text = data.decode("utf-8", "surrogateescape")
    for total, value in truth.totals.as_dict().items():
        assert value > 0, total
    for needle in ("postfix/submissions/smtpd[", "postfix-out/smtpd[", "postfix-out/qmgr[",
                   "postfix/submission/smtpd[", "postfix/smtps/smtpd[", "postfix/postscreen[",
                   "NOQUEUE: reject: RCPT", "NOQUEUE: reject_warning: RCPT", ": reject: RCPT",
                   ": hold: RCPT", ": discard: RCPT", "NOQUEUE: hold: RCPT", ": hold: header",
                   ": discard: body",
                   ": warning: header", ": milter-reject: END-OF-MESSAGE",
                   ": milter-hold: END-OF-MESSAGE", ": milter-discard: END-OF-MESSAGE",
                   "NOQUEUE: milter-reject: MAIL", "status=sent (forwarded as ",
                   "sender non-delivery notification", "status=expired, returned to sender",
                   "orig_to=<", "conn_use=", "unknown[2001:db8:", "SASL LOGIN authentication",
                   "dovecot: imap-login: Login aborted", "dovecot: imap-login: Disconnected",
                   "saved mail to INBOX", "uid=0 from=<root>", "relay=none", '"'):
        assert needle in text, needle
    assert re.search(r" [0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9A-Za-z]+: client=", text)
    assert re.search(r"postfix/smtps/smtpd\[\d+\]: NOQUEUE: reject: ", text)
    assert b"\xff" in data  # a postscreen line with bytes that are not UTF-8
    short, _ = render(lines=2000, seed=1)
    assert re.search(rb" [0-9A-F]{10,12}: client=", short)


def test_classic_names_make_both_truths_equal() -> None:
    _, classic = render(lines=20_000, seed=4, names="classic")
    assert classic.totals == classic.pflogsumm
    assert classic.deferrals == classic.pflogsumm_deferrals
    data, every = render(lines=20_000, seed=4, names="all")
    assert b"submissions/smtpd" not in render(lines=20_000, seed=4, names="classic")[0]
    assert b"submissions/smtpd" in data
    # pflogsumm drops what comes through postfix/submissions/smtpd and postfix-out/*.
    assert every.pflogsumm.received < every.totals.received
    assert every.pflogsumm.delivered < every.totals.delivered
    assert every.pflogsumm.rejected < every.totals.rejected


def test_gzip_and_truth_file(tmp_path: Path) -> None:
    out = tmp_path / "mail.log.gz"
    truth_path = tmp_path / "truth.json"
    assert maillog.main(["--lines", "2000", "--seed", "9", "--format", "rfc3339",
                         "--truth", str(truth_path), str(out)]) == 0
    plain, truth = render(lines=2000, seed=9, format="rfc3339")
    assert gzip.decompress(out.read_bytes()) == plain
    document = json.loads(truth_path.read_text())
    assert document["totals"] == truth.totals.as_dict()
    assert document["pflogsumm"] == truth.pflogsumm.as_dict()
    assert document["lines"] == 2000 and document["options"]["seed"] == 9
    assert list(document["totals"]) == list(maillog_truth.TOTALS_KEYS)


def test_a_bad_output_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            ) -> None:
    assert maillog.main(["--lines", "10", str(tmp_path / "missing" / "x.log")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


@pytest.mark.parametrize(("name", "pflogsumm", "generic"), [
    ("postfix/smtpd", "smtpd", "smtpd"),
    ("postfix/submission/smtpd", "smtpd", "smtpd"),
    ("postfix/smtps/smtpd", "smtpd", "smtpd"),
    ("postfix/submissions/smtpd", "submissions/smtpd", "smtpd"),
    ("postfix/10025/smtpd", "10025/smtpd", "smtpd"),
    ("postfix-out/smtp", None, "smtp"),
    ("dovecot", None, None),
])
def test_syslog_names(name: str, pflogsumm: str | None, generic: str | None) -> None:
    assert pflogsumm_command(name) == pflogsumm
    assert generic_command(name) == generic


@pytest.mark.parametrize(("client", "domain"), [
    ("mail.example.com[192.0.2.1]", "example.com"),
    ("a.b.Example.co.uk[192.0.2.1]", "example.co.uk"),
    ("mail.example.de[192.0.2.1]", "mail.example.de"),   # a 2-letter TLD is not shortened
    ("Example.COM[192.0.2.1]", "Example.COM"),           # nor is a name of two labels
    ("unknown[192.0.2.1]", "192.0.2.1"),
    ("unknown[2001:db8::1]", "2001:db8::1"),
    ("mx.example.net[2001:db8::1]", "example.net"),
])
def test_client_domain_is_pflogsumms_gimme_domain(client: str, domain: str) -> None:
    assert client_domain(client) == domain


def test_counter_follows_pflogsumm_rules() -> None:
    counter = Counter(pflogsumm_command)
    feed = counter.feed
    feed("postfix/smtpd", Fact("client", "A1", "unknown[192.0.2.9]"))
    feed("postfix/qmgr", Fact("size", "A1", "", 100))          # from=<>: domain of the client
    feed("postfix/qmgr", Fact("size", "A1", "", 100))          # a second qmgr line: ignored
    feed("postfix/local", Fact("delivery", "A1", "Bob@Example.ORG", 0, "sent"))
    feed("postfix/local", Fact("delivery", "A1", "bob@example.org", 0, "sent"))
    feed("postfix/local", Fact("delivery", "A1", "x@example.org", 1, "sent"))  # forwarded
    feed("postfix/smtp", Fact("delivery", "A1", "y@example.net", 0, "deferred"))
    feed("postfix/smtp", Fact("delivery", "A1", "y@example.net", 0, "deferred"))
    feed("postfix/smtp", Fact("delivery", "A1", "y@example.net", 0, "bounced"))
    feed("postfix/qmgr", Fact("size", "N1", "", 50))           # a bounce notice: not received
    feed("postfix/local", Fact("delivery", "N1", "alice@Example.ORG", 0, "sent"))
    feed("postfix/pickup", Fact("pickup", "P1"))
    feed("postfix/qmgr", Fact("size", "P1", "Root@MX1.example.org", 10))
    feed("postfix/submissions/smtpd", Fact("client", "S1", "unknown[192.0.2.8]"))
    feed("postfix/qmgr", Fact("size", "S1", "carol@example.com", 70))  # never received
    feed("postfix/submissions/smtpd", Fact("reject", "", "reject"))    # dropped
    feed("postfix/postscreen", Fact("reject", "", "reject"))
    feed("postfix/smtpd", Fact("reject", "", "reject_warning"))
    feed("postfix/cleanup", Fact("cleanup", "C1", "milter-reject"))
    feed("postfix/cleanup", Fact("cleanup", "C1", "warning"))
    feed("postfix/cleanup", Fact("cleanup", "C1", "hold"))
    feed("postfix/smtpd", Fact("reject", "C2", "discard"))
    feed("postfix-out/smtp", Fact("delivery", "O1", "z@example.net", 0, "sent"))  # skipped
    assert counter.totals() == Totals(
        received=2, delivered=3, forwarded=1, deferred=1, bounced=1, rejected=2,
        reject_warnings=2, held=1, discarded=1, bytes_received=110,
        bytes_delivered=100 + 100 + 50, senders=2, sending_hosts=2, recipients=3,
        recipient_hosts=1)
    assert counter.deferrals == 2


def test_figures_as_pflogsumm_prints_them() -> None:
    assert pflogsumm.pflogsumm_figure(524_288) == "524288"
    assert pflogsumm.pflogsumm_figure(524_289) == "512k"
    assert pflogsumm.pflogsumm_figure(1_491 * 1_048_576 + 5) == "1491m"
    report = ("Grand Totals\n------------\nmessages\n\n"
              "     10   received\n      9   delivered\n      0   forwarded\n"
              "      2   deferred  (3  deferrals)\n      1   bounced\n"
              "      4   rejected (28%)\n      0   reject warnings\n      0   held\n"
              "      0   discarded (0%)\n\n   1234k  bytes received\n"
              "   9999   bytes delivered\n      3   senders\n"
              "      2   sending hosts/domains\n      5   recipients\n"
              "      1   recipient hosts/domains\n\n\nPer-Hour Traffic Summary\n")
    figures = pflogsumm.parse_grand_totals(report)
    assert figures["deferrals"] == "3" and figures["bytes_received"] == "1234k"
    assert figures["rejected"] == "4" and figures["recipient_hosts"] == "1"
    with pytest.raises(ValueError, match="lacks"):
        pflogsumm.parse_grand_totals("Grand Totals\n")


def test_a_fixed_population_caps_distinct_addresses() -> None:
    _, small = render(lines=20_000, seed=5, population=300)
    _, large = render(lines=60_000, seed=5, population=300)
    _, free = render(lines=60_000, seed=5)
    # Senders: the remote pool plus the fixed local users (and from=<> domains).
    assert large.totals.senders <= 300 + 400 + 1
    assert large.totals.senders - small.totals.senders < free.totals.senders // 4
    assert free.totals.senders > large.totals.senders
