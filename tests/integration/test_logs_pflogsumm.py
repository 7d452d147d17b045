"""``postwarden logs summary --format json`` totals against pflogsumm 1.1.5 and ground truth.

Three witnesses per log: the generator's ground truth (``postwarden.lab.maillog``), pflogsumm
as Debian installs it (/usr/sbin/pflogsumm, run on the same bytes, and exactly: see
test_maillog_pflogsumm.py) and postwarden. On generated logs with only the syslog names
pflogsumm knows, all three must agree on every total. With ``postfix/submissions/smtpd`` and
``postfix-out/...`` lines (which pflogsumm drops) postwarden must give the generic truth and
pflogsumm the pflogsumm-view truth, which ``logs summary --pflogsumm-compat`` must then
reproduce on the very same file. pflogsumm reads RFC 3339 with a colon in the offset; it
reads nothing in journalctl's ``short-iso`` (``+0100``) or JSON output, so for those formats
postwarden is compared with the truth and pflogsumm reads the same content rendered as BSD.

The last test runs a real Postfix instance, drives a scripted mix of SMTP sessions against
it, and compares postwarden's totals on Postfix's own ``maillog_file`` with pflogsumm's and
with what the script did.

Security: every log is written under a temporary directory; the instance listens on
loopback only and is stopped at the end.
Standards: pflogsumm 1.1.5 (Debian 1.1.5-8) counting rules; postlogd(8); smtpd(8) access
actions HOLD/DISCARD/WARN and ``warn_if_reject``; header_checks(5).
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from postwarden.lab import maillog
from postwarden.lab.maillog import Options
from postwarden.lab.maillog_truth import TOTALS_KEYS, Totals
from postwarden.lab.pflogsumm import exact_totals, parse_grand_totals, pflogsumm_argv
from postwarden.postfix.instance import TEST_HOSTNAME, PostfixInstance
from postwarden.postfix.process import free_port

NewRoot = Callable[[], Path]

LINES = 50_000
CLIENT = "127.0.0.3"  # outside mynetworks (127.0.0.1/32)
HOST = TEST_HOSTNAME
ROOT = f"root@{HOST}"


def summary_json(*paths: str | Path, stdin: bytes | None = None,
                 options: Sequence[str] = ()) -> dict[str, Any]:
    """``postwarden logs summary --format json`` on these inputs (``-`` reads ``stdin``)."""
    done = subprocess.run(
        [sys.executable, "-m", "postwarden", "logs", "summary", "--format", "json",
         *options, *map(str, paths)], input=stdin, capture_output=True, timeout=600,
        check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def summary(*paths: str | Path, stdin: bytes | None = None,
            options: Sequence[str] = ()) -> Totals:
    """postwarden's totals for these inputs."""
    totals = summary_json(*paths, stdin=stdin, options=options)["totals"]
    assert set(TOTALS_KEYS) <= set(totals), sorted(totals)
    return Totals(**{key: totals[key] for key in TOTALS_KEYS})


def pflogsumm(path: Path, workdir: Path) -> tuple[Totals, int]:
    """pflogsumm's Grand Totals, exactly (display thresholds lifted, counting untouched)."""
    argv = [*pflogsumm_argv(workdir, exact=True), str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True)
    return exact_totals(parse_grand_totals(done.stdout))


def differences(got: Totals, want: Totals) -> dict[str, tuple[int, int]]:
    """Only the totals that differ, as (got, want): a readable assertion message."""
    mine, theirs = got.as_dict(), want.as_dict()
    return {key: (mine[key], theirs[key]) for key in mine if mine[key] != theirs[key]}


@pytest.mark.parametrize(("log_format", "queue_ids"), [
    ("bsd", "short"), ("bsd", "long"), ("postlog", "short"), ("rfc3339", "short"),
    ("rfc3339", "long")])
def test_three_witnesses_agree_on_classic_names(tmp_path: Path, log_format: str,
                                                queue_ids: str) -> None:
    options = Options(lines=LINES, seed=21, format=log_format, queue_ids=queue_ids,
                      names="classic")
    log = tmp_path / "mail.log"
    truth = maillog.write_log(log, options)
    assert truth.totals == truth.pflogsumm
    reference, deferrals = pflogsumm(log, tmp_path)
    assert differences(reference, truth.totals) == {}
    assert deferrals == truth.deferrals
    document = summary_json(log)
    assert differences(Totals(**{key: document["totals"][key] for key in TOTALS_KEYS}),
                       truth.totals) == {}
    assert document["deferrals"] == truth.deferrals  # pflogsumm's "(N deferrals)"


@pytest.mark.parametrize("log_format", ["bsd", "rfc3339", "short-iso", "journal-json"])
def test_every_syslog_name_counts(tmp_path: Path, log_format: str) -> None:
    """postfix/submissions/smtpd and postfix-out/* count in postwarden, not in pflogsumm."""
    options = Options(lines=LINES, seed=22, format=log_format, names="all")
    log = tmp_path / "mail.log"
    truth = maillog.write_log(log, options)
    assert differences(summary(log), truth.totals) == {}
    # pflogsumm on the same content, as BSD lines (the only form it reads in every case).
    bsd = tmp_path / "mail-bsd.log"
    maillog.write_log(bsd, Options(lines=LINES, seed=22, format="bsd", names="all"))
    reference, _ = pflogsumm(bsd, tmp_path)
    assert differences(reference, truth.pflogsumm) == {}
    # --pflogsumm-compat: postwarden sees only what pflogsumm sees, and then agrees with it
    # (nothing at all in short-iso and journal JSON).
    direct, _ = pflogsumm(log, tmp_path)
    if log_format in ("short-iso", "journal-json"):
        assert direct == Totals()
    else:
        assert direct == reference
    assert differences(summary(log, options=["--pflogsumm-compat"]), direct) == {}


@pytest.mark.parametrize(("log_format", "names"), [("bsd", "classic"), ("rfc3339", "all")])
def test_a_large_file_split_across_processes(tmp_path: Path, log_format: str,
                                             names: str) -> None:
    """Above its size threshold (16 MiB) ``logs summary`` cuts a plain file into parts
    counted by forked workers; queue ids whose lines straddle a cut (deferrals retried an
    hour later, bounce notices, forwards) must merge into exactly one pass's totals."""
    log = tmp_path / "mail.log"
    truth = maillog.write_log(log, Options(lines=150_000, seed=26, format=log_format,
                                           names=names))
    assert log.stat().st_size > 16 << 20
    for jobs in ("1", "2", "3", "8"):
        got = summary_json(log, options=["--jobs", jobs])
        totals = Totals(**{key: got["totals"][key] for key in TOTALS_KEYS})
        assert differences(totals, truth.totals) == {}, jobs
        assert got["deferrals"] == truth.deferrals, jobs
    compat = summary(log, options=["--jobs", "3", "--pflogsumm-compat"])
    reference = truth.pflogsumm if log_format == "bsd" else pflogsumm(log, tmp_path)[0]
    assert differences(compat, reference) == {}


@pytest.mark.parametrize("log_format", ["bsd", "rfc3339"])
def test_gzip_input(tmp_path: Path, log_format: str) -> None:
    log = tmp_path / "mail.log.gz"
    truth = maillog.write_log(log, Options(lines=LINES, seed=23, format=log_format))
    assert differences(summary(log), truth.totals) == {}


def rotate(directory: Path, parts: Sequence[bytes], names: Sequence[str],
           mtimes: Sequence[float]) -> list[Path]:
    """Write a logrotate set: ``parts`` oldest first, each with its name and mtime."""
    paths = []
    for part, name, mtime in zip(parts, names, mtimes, strict=True):
        path = directory / name
        data = (gzip.compress(part) if name.endswith(".gz") else
                bz2.compress(part) if name.endswith(".bz2") else part)
        path.write_bytes(data)
        os.utime(path, (mtime, mtime))
        paths.append(path)
    return paths


def test_rotated_set_and_stdin(tmp_path: Path) -> None:
    """A logrotate set given in any order is read oldest first: by mtime (gzip and bzip2
    keep the rotated file's), and by logrotate's number when the mtimes are all the same
    (a copied set)."""
    whole = tmp_path / "whole.log"
    truth = maillog.write_log(whole, Options(lines=LINES, seed=24, names="classic"))
    lines = whole.read_bytes().splitlines(keepends=True)
    cut = (len(lines) // 3, 2 * len(lines) // 3)
    parts = [b"".join(lines[:cut[0]]), b"".join(lines[cut[0]:cut[1]]),
             b"".join(lines[cut[1]:])]
    day = 86400.0
    base = time.time() - 10 * day
    for names in (("mail.log.2.gz", "mail.log.1", "mail.log"),
                  ("mail.log.2.gz", "mail.log.1.bz2", "mail.log")):
        for mtimes in ((base, base + day, base + 2 * day), (base, base, base)):
            for path in tmp_path.glob("mail.log*"):
                path.unlink()
            oldest, middle, newest = rotate(tmp_path, parts, names, mtimes)
            assert differences(summary(newest, oldest, middle), truth.totals) == {}, (
                names, mtimes)
    assert differences(summary("-", stdin=whole.read_bytes()), truth.totals) == {}


# -- a real Postfix -----------------------------------------------------------------------------

HEADER_CHECKS = """\
/^Subject: hold me/ HOLD held by the test
/^Subject: discard me/ DISCARD discarded by the test
/^Subject: reject me/ REJECT rejected by the test
/^Subject: warn me/ WARN warned by the test
"""


def send(port: int, sender: str, recipients: Sequence[str], subject: str = "test") -> list[int]:
    """One SMTP session from the outside client; the RCPT codes (DATA only if one took)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(CLIENT, 0), timeout=30) as client:
        client.ehlo("client.sender.example")
        assert client.mail(sender)[0] == 250
        codes = [client.rcpt(rcpt)[0] for rcpt in recipients]
        if 250 in codes:
            client.data(f"Subject: {subject}\r\nFrom: <{sender}>\r\n\r\nhello\r\n".encode())
    return codes


@pytest.mark.postfix
def test_real_postfix_log(new_root: NewRoot, tmp_path: Path) -> None:
    root = new_root()
    (root / "header_checks").write_text(HEADER_CHECKS)
    submissions = free_port("127.0.0.1")
    closed = free_port("127.0.0.1")  # nobody listens: delivery there is deferred
    pf = PostfixInstance(root, services=[
        f"127.0.0.1:{submissions} inet n - n - - smtpd -o syslog_name=postfix/submissions"],
        main_cf={
            "relay_domains": "discard.example, defer.example, bounce.example",
            "transport_maps": "inline:{ discard.example=discard:, "
                              f"defer.example=smtp:[127.0.0.1]:{closed}, "
                              "bounce.example=error:mailbox-unavailable }",
            # smtpd refuses at RCPT what an error: transport would bounce, so bounce.example
            # skips the unlisted-recipient check that rejects nosuchuser@.
            "smtpd_reject_unlisted_recipient": "no",
            "smtpd_recipient_restrictions":
                f"check_recipient_access inline:{{ postmaster@{HOST}=HOLD }}, warn_if_reject, "
                f"check_recipient_access inline:{{ abuse@{HOST}=REJECT }}, "
                "check_recipient_access inline:{ bounce.example=OK }, "
                "reject_unlisted_recipient",
            "header_checks": f"regexp:{root}/header_checks",
            "minimal_backoff_time": "1h", "maximal_backoff_time": "2h",
            "queue_run_delay": "1h",
        })
    alice = "alice@sender.example"
    with pf:
        for _ in range(3):
            assert send(pf.port, alice, [ROOT]) == [250]
        assert send(pf.port, alice, ["x@discard.example", ROOT]) == [250, 250]
        assert send(pf.port, alice, ["y@defer.example"]) == [250]
        assert send(pf.port, ROOT, ["z@bounce.example"]) == [250]
        assert send(pf.port, alice, [f"nosuchuser@{HOST}", "a@elsewhere.example"]) == [550, 454]
        assert send(pf.port, alice, [f"abuse@{HOST}"]) == [250]        # reject_warning
        assert send(pf.port, alice, [f"postmaster@{HOST}"]) == [250]   # access HOLD
        for what in ("hold", "discard", "reject"):
            assert send(pf.port, alice, [ROOT], f"{what} me") == [250]
        assert send(pf.port, "bob@other.example", [ROOT], "warn me") == [250]
        assert send(submissions, "carol@third.example", [ROOT]) == [250]
        subprocess.run(["/usr/sbin/sendmail", "-C", str(pf.config_dir), "-f", ROOT, "-i", ROOT],
                       input=b"Subject: cron\n\nfrom pickup\n", check=True, timeout=30)
        # 10 deliveries (3 + 2 + the bounce notice + abuse + warn + submissions + pickup),
        # one deferral and one bounce.
        deadline = time.monotonic() + 60
        while len(re.findall(r"status=(?:sent|deferred|bounced)", pf.log_text())) < 12:
            assert time.monotonic() < deadline, pf.log_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
    log = tmp_path / "maillog"
    shutil.copyfile(pf.log_path, log)
    text = log.read_text()
    assert "postfix/submissions/smtpd[" in text and "postfix/pickup[" in text
    script = Totals(received=14, delivered=10, forwarded=0, deferred=1, bounced=1, rejected=3,
                    reject_warnings=2, held=2, discarded=1, senders=4, sending_hosts=4,
                    recipients=2, recipient_hosts=2)
    reference, deferrals = pflogsumm(log, tmp_path)
    mine = summary(log)
    assert summary(log, options=["--pflogsumm-compat"]) == reference
    assert deferrals == 1
    # pflogsumm misses the message that came through postfix/submissions/smtpd.
    script_pflogsumm = Totals(**{**script.as_dict(), "received": 13, "senders": 3,
                                 "sending_hosts": 3})
    ignore_bytes = {"bytes_received": 0, "bytes_delivered": 0}
    assert differences(Totals(**{**reference.as_dict(), **ignore_bytes}), script_pflogsumm) == {}
    assert differences(Totals(**{**mine.as_dict(), **ignore_bytes}), script) == {}
    # Bytes: the script cannot know Postfix's sizes; pflogsumm can. The submissions message
    # is the only one pflogsumm does not count as received.
    carol = re.search(r"(\w+): from=<carol@third\.example>, size=(\d+)", text)
    assert carol is not None
    assert mine.bytes_received == reference.bytes_received + int(carol.group(2))
    assert mine.bytes_delivered == reference.bytes_delivered > 0
