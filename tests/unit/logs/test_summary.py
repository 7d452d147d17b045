"""logs summary: pflogsumm's totals, checked against the real pflogsumm (Debian 1.1.5) run on
the same logs, and the security section."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden.logs.summary import TOTAL_KEYS, Summary, client_domain, lower_domain
from postwarden.logs.summary_report import render, units

PFLOGSUMM = "/usr/sbin/pflogsumm"
PFLOGSUMM_LABELS = {
    "received": "received", "delivered": "delivered", "forwarded": "forwarded",
    "deferred": "deferred", "bounced": "bounced", "rejected": "rejected",
    "reject warnings": "reject_warnings", "held": "held", "discarded": "discarded",
    "bytes received": "bytes_received", "bytes delivered": "bytes_delivered",
    "senders": "senders", "sending hosts/domains": "sending_hosts",
    "recipients": "recipients", "recipient hosts/domains": "recipient_hosts",
}


def pflogsumm_totals(path: Path, *extra: str) -> dict[str, tuple[int, str]]:
    out = subprocess.run([PFLOGSUMM, *extra, str(path)], capture_output=True, text=True,
                         check=True, timeout=120, errors="replace").stdout
    totals: dict[str, tuple[int, str]] = {}
    for m in re.finditer(r"^ +(\d+)([ km])  ([a-z /]+?)(?: \(|$)", out, re.M):
        label = m.group(3).strip()
        if label in PFLOGSUMM_LABELS and PFLOGSUMM_LABELS[label] not in totals:
            totals[PFLOGSUMM_LABELS[label]] = (int(m.group(1)), m.group(2))
    assert len(totals) == len(PFLOGSUMM_LABELS), out[:2000]
    return totals


def ours(path: Path, **options: bool) -> Summary:
    s = Summary(year=2025, **options)
    with path.open(encoding="utf-8", errors="replace") as f:
        s.feed(f)
    return s


def assert_same_totals(path: Path, **options: bool) -> Summary:
    s = ours(path, **options)
    theirs = pflogsumm_totals(path)
    mine = {k: units(v) for k, v in s.totals().items()}
    assert mine == theirs
    return s


# -- a golden log, written here line by line ----------------------------------------------

class Log:
    def __init__(self, stamp: str = "bsd", seed: int = 1) -> None:
        self.lines: list[str] = []
        self.rnd = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.t = 0
        self.stamp = stamp
        self.n = 0

    def qid(self) -> str:
        self.n += 1
        return f"{0xA0000 + self.n:X}{self.rnd.randrange(16**4):04X}"

    def add(self, service: str, text: str) -> None:
        self.t += 7
        h, m, s = self.t // 3600 % 24, self.t // 60 % 60, self.t % 60
        day = 5 + self.t // 86400
        if self.stamp == "bsd":
            head = f"Mar {day:2d} {h:02d}:{m:02d}:{s:02d}"
        else:
            head = f"2025-03-{day:02d}T{h:02d}:{m:02d}:{s:02d}.{self.n:06d}+01:00"
        self.lines.append(f"{head} mx1 {service}[{1000 + len(service)}]: {text}\n")

    def inbound(self, client: str, sender: str, rcpts: list[str], size: int,
                status: str = "sent", service: str = "postfix/smtpd") -> str:
        q = self.qid()
        self.add(service, f"connect from {client}")
        self.add(service, f"{q}: client={client}")
        self.add("postfix/cleanup", f"{q}: message-id=<{q}@example.com>")
        self.add("postfix/qmgr", f"{q}: from=<{sender}>, size={size}, nrcpt={len(rcpts)} "
                                 "(queue active)")
        self.add(service, f"disconnect from {client} ehlo=1 mail=1 rcpt=1 data=1 commands=4")
        for r in rcpts:
            self.deliver(q, r, status)
        self.add("postfix/qmgr", f"{q}: removed")
        return q

    def deliver(self, q: str, rcpt: str, status: str, agent: str = "postfix/lmtp") -> None:
        detail = {"sent": "250 2.0.0 Ok", "deferred": "connect to x[192.0.2.9]:25: refused",
                  "bounced": "host x said: 550 5.1.1 no (in reply to RCPT TO command)",
                  "forwarded": "forwarded as 12345ABCDE"}[status]
        word = "sent" if status == "forwarded" else status
        self.add(agent, f"{q}: to=<{rcpt}>, relay=mx.example.net[192.0.2.9]:25, delay=1.5, "
                        f"delays=0.1/0/0.4/1, dsn=2.0.0, status={word} ({detail})")

    def write(self, path: Path) -> Path:
        path.write_text("".join(self.lines))
        return path


def golden(stamp: str, seed: int = 1) -> Log:
    log = Log(stamp, seed)
    rnd = log.rnd
    for i in range(40):
        client = rnd.choice(["mail.Example.COM[192.0.2.10]", "unknown[2001:db8::77]",
                             "mx.mail.example.co.uk[198.51.100.4]",
                             "relay.example.org[192.0.2.11]"])
        sender = rnd.choice(["Alice@Example.COM", "bob@example.org", "",
                             "carol@mail.example.net"])
        rcpts = rnd.sample(["u1@example.org", "U2@EXAMPLE.org", "root", "u3@example.net"],
                           rnd.randrange(1, 4))
        log.inbound(client, sender, rcpts, rnd.randrange(100, 900000),
                    rnd.choice(["sent", "sent", "forwarded", "bounced"]))
        if i % 5 == 0:   # deferred twice, then sent
            q = log.qid()
            log.add("postfix/smtpd", f"{q}: client=unknown[203.0.113.{i}]")
            log.add("postfix/qmgr", f"{q}: from=<x{i}@example.com>, size=5000, nrcpt=1 "
                                    "(queue active)")
            log.deliver(q, f"far{i}@example.net", "deferred", "postfix/smtp")
            log.add("postfix/qmgr", f"{q}: from=<x{i}@example.com>, size=5000, nrcpt=1 "
                                    "(queue active)")
            log.deliver(q, f"far{i}@example.net", "deferred", "postfix/smtp")
            log.deliver(q, f"far{i}@example.net", "sent", "postfix/smtp")
            log.add("postfix/qmgr", f"{q}: removed")
        if i % 7 == 0:   # local submission
            q = log.qid()
            log.add("postfix/pickup", f"{q}: uid=0 from=<root>")
            log.add("postfix/qmgr", f"{q}: from=<root@mx1.example.org>, size=700, nrcpt=1 "
                                    "(queue active)")
            log.deliver(q, "root@mx1.example.org", "sent", "postfix/local")
            log.add("postfix/qmgr", f"{q}: removed")
    rejects = [
        "postfix/smtpd", "NOQUEUE: reject: RCPT from unknown[203.0.113.5]: 554 5.7.1 "
        "<v@example.net>: Relay access denied; from=<s@example.com> to=<v@example.net> "
        "proto=ESMTP helo=<x>",
        "postfix/smtpd", "NOQUEUE: reject_warning: RCPT from unknown[203.0.113.6]: 450 4.7.1 "
        "<x>: Helo command rejected: need fully-qualified hostname; from=<s@example.com> "
        "to=<u1@example.org> proto=ESMTP helo=<x>",
        "postfix/postscreen", "NOQUEUE: reject: RCPT from [2001:db8::66]:4000: 550 5.7.1 "
        "Service unavailable; client [2001:db8::66] blocked using dnsbl.example.net; "
        "from=<a@example.com>, to=<u1@example.org>, proto=ESMTP, helo=<x>",
        "postfix/smtpd", "ABCDE12345: hold: RCPT from unknown[203.0.113.7]: <u1@example.org>: "
        "Recipient address triggers HOLD action; from=<a@example.com> to=<u1@example.org> "
        "proto=ESMTP helo=<x>",
        "postfix/smtpd", "ABCDE12346: discard: RCPT from unknown[203.0.113.8]: "
        "<u1@example.org>: Recipient address triggers DISCARD action; from=<a@example.com> "
        "to=<u1@example.org> proto=ESMTP helo=<x>",
        "postfix/smtpd", "ABCDE12347: milter-reject: END-OF-MESSAGE from unknown[203.0.113.9]: "
        "5.7.1 rejected by milter; from=<a@example.com> to=<u1@example.org> proto=ESMTP "
        "helo=<x>",
        "postfix/cleanup", "ABCDE12348: reject: header Subject: pills from unknown[203.0.113.9]"
        "; from=<a@example.com> to=<u1@example.org> proto=ESMTP helo=<x>: 5.7.1 no",
        "postfix/cleanup", "ABCDE12349: milter-reject: END-OF-MESSAGE from unknown"
        "[203.0.113.9]: 5.7.1 DMARC reject; from=<a@example.com> to=<u1@example.org> "
        "proto=ESMTP helo=<x>",
        "postfix/cleanup", "ABCDE1234A: warning: header X-Bulk: yes from unknown[203.0.113.9]"
        "; from=<a@example.com> to=<u1@example.org> proto=ESMTP helo=<x>",
        "postfix/cleanup", "ABCDE1234B: hold: body hold me from unknown[203.0.113.9]; "
        "from=<a@example.com> to=<u1@example.org> proto=ESMTP helo=<x>",
        "postfix/cleanup", "ABCDE1234C: discard: header X-Drop: 1 from unknown[203.0.113.9]; "
        "from=<a@example.com> to=<u1@example.org> proto=ESMTP helo=<x>",
        "postfix/smtpd", "warning: unknown[203.0.113.20]: SASL LOGIN authentication failed: "
        "UGFzc3dvcmQ6",
        "postfix/submission/smtpd", "warning: unknown[203.0.113.20]: SASL PLAIN authentication "
        "failed: , sasl_username=admin",
        "postfix/smtpd", "SSL_accept error from unknown[203.0.113.21]: lost connection",
        "postfix/postscreen", "PREGREET 11 after 0.1 from [203.0.113.22]:4000: EHLO x\\r\\n",
        "postwarden", "policyd: client=203.0.113.23 helo=x sender=<a@example.com> "
        "recipient=<u1@example.org> state=RCPT action=DEFER_IF_PERMIT check=greylist ms=1 "
        "reason=greylisted",
    ]
    for service, text in zip(rejects[::2], rejects[1::2], strict=True):
        log.add(service, text)
    return log


@pytest.mark.parametrize("stamp", ["bsd", "rfc3339"])
def test_totals_equal_pflogsumm(tmp_path: Path, stamp: str) -> None:
    s = assert_same_totals(golden(stamp).write(tmp_path / "mail.log"))
    t = s.totals()
    assert t["deferred"] == 8 and s.deferrals == 16   # distinct ids, all lines
    assert (t["held"], t["discarded"]) == (2, 2)
    assert t["rejected"] == 4        # smtpd, postscreen, cleanup reject and milter-reject
    assert t["reject_warnings"] == 2


def test_totals_equal_pflogsumm_on_a_bigger_random_log(tmp_path: Path) -> None:
    log = Log("bsd", seed=5)
    for seed in range(2, 30):
        log.lines += golden("bsd", seed).lines
    assert_same_totals(log.write(tmp_path / "big.log"))


def test_names_pflogsumm_drops_are_counted(tmp_path: Path) -> None:
    log = Log()
    log.inbound("unknown[192.0.2.1]", "a@example.com", ["u@example.org"], 1000,
                service="postfix/submissions/smtpd")
    log.inbound("unknown[192.0.2.2]", "b@example.com", ["u@example.org"], 1000,
                service="postfix/10025/smtpd")
    path = log.write(tmp_path / "names.log")
    theirs = pflogsumm_totals(path)
    assert theirs["received"] == (0, " ")                  # pflogsumm drops both
    assert ours(path).totals()["received"] == 2
    assert_same_totals(path, pflogsumm_compat=True)


def test_security_section(tmp_path: Path) -> None:
    s = ours(golden("bsd").write(tmp_path / "mail.log"))
    sec = s.to_json()["security"]
    assert sec["sasl_failures"] == 2
    assert {"key": "203.0.113.20", "count": 2} in sec["sasl_failures_by_client"]
    assert {"key": "admin", "count": 1} in sec["sasl_failures_by_account"]
    assert sec["relay_attempts"] == 1
    assert sec["relay_attempts_by_client"] == [{"key": "203.0.113.5", "count": 1}]
    assert {"key": "blocked using dnsbl.example.net", "count": 1} in sec["rejects_by_restriction"]
    assert sec["tls_failures"] == 1
    assert sec["postscreen_drops_by_test"] == [{"key": "PREGREET", "count": 1}]
    assert sec["postwarden_decisions"] == [{"key": "greylist DEFER_IF_PERMIT", "count": 1}]


def test_memory_stays_bounded_by_queue_ids() -> None:
    s = Summary(year=2025, max_queue_ids=100)
    for i in range(5000):   # messages that never leave the queue
        q = f"{0x100000 + i:X}"
        s.feed([f"Mar  5 00:00:01 mx1 postfix/smtpd[1]: {q}: client=unknown[192.0.2.1]\n",
                f"Mar  5 00:00:01 mx1 postfix/qmgr[2]: {q}: from=<a@b.example>, size=10, "
                "nrcpt=1 (queue active)\n"])
    assert len(s._sizes) <= 101 and len(s._rcvd) <= 101
    assert s.totals()["received"] == 5000


def test_pflogsumm_address_rules() -> None:
    assert lower_domain("Bob@Example.ORG") == "Bob@example.org"
    assert lower_domain("root") == "root"
    assert client_domain("mail.Example.COM", "192.0.2.1") == "example.com"
    assert client_domain("mx.mail.example.co.uk", "192.0.2.1") == "example.co.uk"
    assert client_domain("mail.dom1.example", "192.0.2.1") == "mail.dom1.example"
    assert client_domain("unknown", "2001:db8::1") == "2001:db8::1"


def test_text_report_has_pflogsumm_grand_totals(tmp_path: Path) -> None:
    path = golden("bsd").write(tmp_path / "mail.log")
    text = render(ours(path))
    theirs = subprocess.run([PFLOGSUMM, str(path)], capture_output=True, text=True,
                            check=True).stdout
    start = theirs.index("Grand Totals")
    block = theirs[start:theirs.index("recipient hosts/domains", start)]
    assert block in text


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postwarden", "logs", *args],
                          capture_output=True, text=True, input=stdin, timeout=120)


def test_cli_json_totals_keys_and_stdin(tmp_path: Path) -> None:
    path = golden("rfc3339").write(tmp_path / "mail.log")
    result = run_cli("summary", "--format", "json", "-", stdin=path.read_text())
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert list(data["totals"]) == list(TOTAL_KEYS)
    assert data["totals"] == ours(path).totals()


def test_cli_missing_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("summary", str(tmp_path / "nope.log"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "nope.log" in result.stderr


def test_cli_test_pattern(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    path.write_bytes(
        b"Mar  5 00:00:01 mx1 postfix/smtpd[1]: connect from unknown[192.0.2.1]\n"
        b"Mar  5 00:00:02 mx1 postfix/smtpd[1]: something Postfix 9 says \xff\n"
        b"Mar  5 00:00:03 mx1 postfix/anvil[2]: statistics: max cache size 1 at Mar 5\n")
    result = run_cli("test-pattern", str(path))
    assert result.returncode == 0, result.stderr
    assert "Lines: 3, matched: 2, no pattern: 1" in result.stdout
    assert "smtpd.connect" in result.stdout and "postfix.statistics" in result.stdout
    assert "2: [no pattern] Mar  5 00:00:02" in result.stdout
    data = json.loads(run_cli("test-pattern", "--format", "json", str(path)).stdout)
    assert data["patterns"] == {"smtpd.connect": 1}
    assert data["ignored"] == {"postfix.statistics": 1}
    assert [s["line"] for s in data["shown"]] == [2]


def test_reused_queue_id_is_a_new_message(tmp_path: Path) -> None:
    """Short queue ids come back (inode numbers are reused). pflogsumm keeps the first size of
    a queue id for good: it drops the second message's size and gives its delivery the first
    one's. The summary forgets a queue id at qmgr's 'removed', and counts each message with
    its own size; everything else stays equal."""
    log = Log()
    for size in (1000, 250000):
        log.add("postfix/smtpd", "ABCDEF1234: client=unknown[192.0.2.1]")
        log.add("postfix/qmgr", f"ABCDEF1234: from=<a@example.com>, size={size}, nrcpt=1 "
                                "(queue active)")
        log.deliver("ABCDEF1234", "u@example.org", "deferred", "postfix/smtp")
        log.deliver("ABCDEF1234", "u@example.org", "sent", "postfix/smtp")
        log.add("postfix/qmgr", "ABCDEF1234: removed")
    path = log.write(tmp_path / "reuse.log")
    totals = ours(path).totals()
    assert (totals["bytes_received"], totals["bytes_delivered"]) == (251000, 251000)
    assert totals["deferred"] == 2
    theirs = pflogsumm_totals(path)
    assert (theirs["bytes_received"], theirs["bytes_delivered"]) == ((1000, " "), (2000, " "))
    assert theirs["deferred"] == (1, " ")
    same = {k: v for k, v in theirs.items()
            if k not in ("bytes_received", "bytes_delivered", "deferred")}
    assert same == {k: units(totals[k]) for k in same}


def test_compat_skips_what_pflogsumm_cannot_read(tmp_path: Path) -> None:
    lines = [
        "2025-03-05T01:00:01+0100 mx1 postfix/smtpd[1]: AAAA1: client=unknown[192.0.2.1]\n",
        "Mar 05 01:00:01.5 mx1 postfix/smtpd[1]: AAAA2: client=unknown[192.0.2.1]\n",
        "2025-03-05T01:00:01+01:00 mx1 postfix/smtpd[1]: AAAA3: client=unknown[192.0.2.1]\n",
        "Mar  5 01:00:01 mx1 postfix/submission/smtpd[1]: AAAA4: client=unknown[192.0.2.1]\n",
        "Mar  5 01:00:01 mx1 postfix/amavis/smtp[1]: AAAA4: to=<a@example.org>, relay=x, "
        "delay=1, delays=1/0/0/0, dsn=2.0.0, status=sent (ok)\n",
    ]
    path = tmp_path / "mixed.log"
    path.write_text("".join(lines))
    assert ours(path).totals()["received"] == 4
    assert_same_totals(path, pflogsumm_compat=True)   # 2 received, 1 delivered


def test_cli_reads_a_rotated_compressed_set_in_order(tmp_path: Path) -> None:
    import gzip
    import os

    whole = golden("bsd").lines
    half = len(whole) // 2
    old, new = tmp_path / "mail.log.1.gz", tmp_path / "mail.log"
    old.write_bytes(gzip.compress("".join(whole[:half]).encode()))
    new.write_text("".join(whole[half:]))
    os.utime(old, (1000, 1000))
    result = run_cli("summary", "--format", "json", "--year", "2025", str(new), str(old))
    assert result.returncode == 0, result.stderr
    single = golden("bsd").write(tmp_path / "single.log")
    assert json.loads(result.stdout)["totals"] == ours(single).totals()


def test_cli_year_from_mtime_and_new_year(tmp_path: Path) -> None:
    import os
    import time

    path = tmp_path / "ny.log"
    path.write_text(
        "Dec 31 23:59:58 mx1 postfix/smtpd[1]: AAA1: client=unknown[192.0.2.1]\n"
        "Jan  1 00:00:03 mx1 postfix/smtpd[1]: AAA2: client=unknown[192.0.2.1]\n")
    stamp = time.mktime((2026, 1, 2, 12, 0, 0, 0, 0, -1))
    os.utime(path, (stamp, stamp))
    data = json.loads(run_cli("summary", "--format", "json", str(path)).stdout)
    assert [d["date"] for d in data["per_day"]] == ["2025-12-31", "2026-01-01"]
    forced = json.loads(run_cli("summary", "--format", "json", "--year", "2019",
                                str(path)).stdout)
    assert [d["date"] for d in forced["per_day"]] == ["2019-12-31", "2020-01-01"]
