"""parse: every line format, syslog name, queue id and address form a Postfix server writes,
BSD years across New Year, and no crash whatever the bytes."""

from __future__ import annotations

import calendar
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwarden.logs import events as ev
from postwarden.logs.parse import Parser, parse

MSG = "3F1A2B4C5D: client=mail.example.org[192.0.2.25]"


def local(y: int, mo: int, d: int, h: int, mi: int, s: int) -> float:
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1))


def test_bsd_year_from_the_reference_time() -> None:
    now = local(2025, 3, 10, 12, 0, 0)
    march = parse(f"Mar  4 09:10:11 mx1 postfix/smtpd[1]: {MSG}", now=now)
    december = parse(f"Dec 31 23:00:00 mx1 postfix/smtpd[1]: {MSG}", now=now)
    assert march is not None and december is not None
    assert march.time == local(2025, 3, 4, 9, 10, 11)
    assert december.time == local(2024, 12, 31, 23, 0, 0)  # a later month is last year


def test_bsd_new_year_rollover_in_a_stream() -> None:
    parser = Parser(now=local(2026, 1, 2, 0, 0, 0))
    a = parser.parse(f"Dec 31 23:59:58 mx1 postfix/smtpd[1]: {MSG}")
    b = parser.parse(f"Jan  1 00:00:01 mx1 postfix/smtpd[1]: {MSG}")
    assert a is not None and b is not None
    assert a.time == local(2025, 12, 31, 23, 59, 58)
    assert b.time == local(2026, 1, 1, 0, 0, 1)
    assert b.time - a.time == 3


def test_forced_year_is_the_first_lines_year() -> None:
    parser = Parser(year=2019)
    a = parser.parse(f"Dec 31 23:59:58 mx1 postfix/smtpd[1]: {MSG}")
    b = parser.parse(f"Jan  1 00:00:01 mx1 postfix/smtpd[1]: {MSG}")
    assert a is not None and b is not None
    assert time.localtime(a.time).tm_year == 2019
    assert time.localtime(b.time).tm_year == 2020


@pytest.mark.parametrize("stamp", [
    "2025-03-05T01:00:01+01:00",          # rsyslog RSYSLOG_FileFormat
    "2025-03-05T01:00:01+0100",           # journalctl -o short-iso: no colon
    "2025-03-05T01:00:01.000000+0100",    # short-iso-precise
    "2025-03-05T00:00:01Z",
    "2025-03-05T00:00:01.000+00:00",
    "2025-03-04T19:00:01-05:00",
])
def test_rfc3339_stamps_with_and_without_colon(stamp: str) -> None:
    event = parse(f"{stamp} mx1 postfix/smtpd[7]: {MSG}")
    assert isinstance(event, ev.Received)
    assert event.time == calendar.timegm((2025, 3, 5, 0, 0, 1, 0, 0, 0))
    assert (event.host, event.pid, event.client) == ("mx1", 7, "192.0.2.25")


@pytest.mark.parametrize("line", [
    f"Mar 05 01:00:01 mx1 postfix/smtpd[9]: {MSG}",          # postlogd maillog_file, -o short
    f"Mar 05 01:00:01.185246 mx1 postfix/smtpd[9]: {MSG}",   # -o short-precise
    f"Mar  5 01:00:01 mx1 postfix/smtpd[9]: {MSG}",          # syslog
    f"Mar 5 01:00:01 mx1 postfix/smtpd[9]: {MSG}",           # unpadded
])
def test_bsd_day_forms(line: str) -> None:
    event = parse(line, year=2025)
    assert isinstance(event, ev.Received)
    assert int(event.time) == int(local(2025, 3, 5, 1, 0, 1))


def journal(message: object, identifier: str = "postfix/submission/smtpd") -> str:
    return json.dumps({"__REALTIME_TIMESTAMP": "1741132904395078", "_HOSTNAME": "mx1",
                       "SYSLOG_IDENTIFIER": identifier, "_PID": "303987",
                       "MESSAGE": message, "_SYSTEMD_UNIT": "postfix@-.service"})


def test_journald_json() -> None:
    event = parse(journal("connect from unknown[2001:db8::7]"))
    assert isinstance(event, ev.Connect)
    assert event.client == "2001:db8::7"
    assert event.time == pytest.approx(1741132904.395078)
    assert (event.service, event.process, event.pid, event.host) == (
        "postfix/submission/smtpd", "smtpd", 303987, "mx1")


def test_journald_json_message_as_bytes() -> None:
    raw = list(b"warning: non-SMTP command from unknown[198.51.100.9]: \xff\xfeGET /")
    event = parse(journal(raw, "postfix/smtpd"))
    assert isinstance(event, ev.ProtocolAbuse)
    assert event.client == "198.51.100.9"
    assert "\ufffd" in event.detail


@pytest.mark.parametrize("stamp", ["9" * 30, "9" * 400, "-5", "1.5", "x", None, [1]])
def test_journald_damaged_timestamp_is_the_epoch(stamp: object) -> None:
    # past what time.localtime() takes, or no number at all: read, never an exception
    line = json.dumps({"MESSAGE": "connect from unknown[192.0.2.7]", "_HOSTNAME": "mx1",
                       "SYSLOG_IDENTIFIER": "postfix/smtpd", "__REALTIME_TIMESTAMP": stamp})
    event = parse(line)
    assert isinstance(event, ev.Connect)
    assert event.time == 0.0


@pytest.mark.parametrize("line", ["{", "{}", "[1, 2]", '{"MESSAGE": 3}', journal(None),
                                  journal(["x"])])
def test_bad_journald_json_is_no_event(line: str) -> None:
    assert parse(line) is None


@pytest.mark.parametrize("service", [
    "postfix/smtpd", "postfix/submission/smtpd", "postfix/submissions/smtpd",
    "postfix/smtps/smtpd", "postfix-out/smtpd", "postfix/10025/smtpd",
    "postfix-mx/content-filter/smtpd", "postfix-incoming/smtpd",
])
def test_every_syslog_name_form(service: str) -> None:
    event = parse(f"Mar  4 09:10:11 mx1 {service}[5]: {MSG}", year=2024)
    assert isinstance(event, ev.Received)
    assert (event.service, event.process) == (service, "smtpd")


@pytest.mark.parametrize("qid", ["0D9633D", "AAB4D259B1", "B4C5A1100935", "4HnkK60lBRz6tl1",
                                 "4Z6t341KM9z3c1mw", "48rT2v1hQrz1J0N"])
def test_short_and_long_queue_ids(qid: str) -> None:
    line = (f"Mar  4 09:10:13 mx1 postfix/smtp[3]: {qid}: to=<a@example.net>, relay=none, "
            f"delay=1, delays=0/0/1/0, dsn=4.4.1, status=deferred (connect to x: timed out)")
    event = parse(line, year=2024)
    assert isinstance(event, ev.Delivery)
    assert (event.queue_id, event.status) == (qid, "deferred")


@pytest.mark.parametrize(("text", "client"), [
    ("connect from unknown[2001:db8::25]", "2001:db8::25"),
    ("connect from mx.example.net[2001:db8:1:2::3]:587", "2001:db8:1:2::3"),
    ("connect from unknown[::ffff:192.0.2.1]", "::ffff:192.0.2.1"),
    ("connect from unknown[unknown]", "unknown"),
])
def test_ipv6_clients(text: str, client: str) -> None:
    event = parse(f"Mar  4 09:10:11 mx1 postfix/smtpd[1]: {text}", year=2024)
    assert isinstance(event, ev.Connect)
    assert event.client == client


def test_non_utf8_bytes_never_crash() -> None:
    line = (b"Mar  4 09:10:11 mx1 postfix/postscreen[1]: COMMAND PIPELINING from "
            b"[192.0.2.7]:4000 after \xe4\xff\xc3: \x00\x1b[31m")
    event = parse(line, year=2024)
    assert isinstance(event, ev.Postscreen)
    assert event.client == "192.0.2.7"


def test_dovecot_one_failure_is_counted_once() -> None:
    """Dovecot logs an auth-worker line and a login line for the same attempt: only the
    login line is a SaslFailure."""
    lines = [
        "Mar  4 09:17:04 mx1 dovecot: auth-worker(4100): Info: pam(bob,203.0.113.40,<Ab>): "
        "pam_authenticate() failed: Authentication failure (Password mismatch?)",
        "Mar  4 09:17:06 mx1 dovecot: imap-login: Disconnected (auth failed, 1 attempts in "
        "2 secs): user=<bob>, method=PLAIN, rip=203.0.113.40, lip=192.0.2.1, session=<Ab>",
    ]
    events = [parse(line, year=2024) for line in lines]
    assert [type(e).__name__ for e in events] == ["AuthBackendFailure", "SaslFailure"]


@pytest.mark.parametrize("text", [
    # 2.3
    "imap-login: Aborted login (auth failed, 4 attempts in 20 secs): user=<x@example.org>, "
    "method=PLAIN, rip=198.51.100.3, lip=192.0.2.1, TLS",
    # 2.4
    "imap-login: Info: Login aborted: Connection closed (auth failed, 4 attempts in 20 secs) "
    "(auth_failed): user=<x@example.org>, method=PLAIN, rip=198.51.100.3, lip=192.0.2.1",
])
def test_dovecot_23_and_24_wording(text: str) -> None:
    event = parse(f"Mar  4 09:17:04 mx1 dovecot: {text}", year=2024)
    assert isinstance(event, ev.SaslFailure)
    assert (event.client, event.username, event.attempts) == ("198.51.100.3", "x@example.org", 4)


def test_dovecot_session_without_auth_is_no_failure() -> None:
    line = ("Mar  4 09:17:04 mx1 dovecot: pop3-login: Disconnected (no auth attempts in 0 "
            "secs): user=<>, rip=198.51.100.3, lip=192.0.2.1")
    parser = Parser(year=2024)
    found = parser.match(line)
    assert found is not None and found[0].name == "dovecot.login"
    assert parser.build(found) is None


def test_postwarden_policyd_line() -> None:
    line = ("Mar  4 09:18:00 mx1 postwarden[600]: policyd: client=2001:db8::30 helo=x "
            "sender=<> recipient=<u@example.org> state=RCPT action=DEFER_IF_PERMIT "
            "check=greylist ms=0.3 reason=greylisted, retry in 300 s")
    event = parse(line, year=2024)
    assert isinstance(event, ev.PolicyDecision)
    assert (event.check, event.action, event.client, event.sender) == (
        "greylist", "DEFER_IF_PERMIT", "2001:db8::30", "")
    assert event.detail == "greylisted, retry in 300 s"
    assert not event.dry_run


def test_postwarden_dry_run_lines_say_so() -> None:
    """A decision logged in dry-run mode (policyd, or the watcher's would-be bans) is
    marked, so a summary does not count it as a ban or a rejection that happened."""
    line = ("Mar  4 09:18:00 mx1 postwarden[600]: watch: client=198.51.100.7 action=ban "
            "dry_run=yes check=sasl_client duration=600s count=1 reason=12\x20failures")
    event = parse(line, year=2024)
    assert isinstance(event, ev.PolicyDecision)
    assert (event.component, event.action, event.dry_run) == ("watch", "ban", True)


@pytest.mark.parametrize("line", [
    "", "\n", "hello world", "Mar  4 09:10:11", "Mar  4 09:10:11 mx1",
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]:", "2025-03-05 01:00:01 mx1 postfix/smtpd[1]: x",
    "Mar  4 09:10:11 mx1 kernel: [12.3] eth0: link up",
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]: something new in Postfix 4",
])
def test_lines_without_an_event(line: str) -> None:
    assert parse(line, year=2024) is None


def test_parse_is_pure() -> None:
    line = f"Dec 31 23:00:00 mx1 postfix/smtpd[1]: {MSG}"
    now = local(2025, 3, 10, 12, 0, 0)
    assert parse(line, now=now) == parse(line, now=now)


PREFIXES = st.sampled_from([
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]: ", "Mar  4 09:10:11 mx1 postfix/postscreen[1]: ",
    "Mar  4 09:10:11 mx1 postfix/cleanup[1]: ", "Mar  4 09:10:11 mx1 postfix/qmgr[1]: ",
    "Mar  4 09:10:11 mx1 postfix/smtp[1]: ", "Mar  4 09:10:11 mx1 dovecot: ",
    "2024-03-04T09:10:11+01:00 mx1 postwarden[3]: policyd: client=", "",
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]: ABC: client=", "Mar  4 09:10:11 mx1 dovecot: auth(",
    "Mar  4 09:10:11 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[1.2.3.4]: ",
])


@settings(max_examples=400, deadline=None)
@given(PREFIXES, st.binary(max_size=300))
def test_any_bytes_parse_without_exception(prefix: str, tail: bytes) -> None:
    event = parse(prefix.encode() + tail, year=2024)
    assert event is None or isinstance(event, ev.Event)


@settings(max_examples=300, deadline=None)
@given(PREFIXES, st.text(alphabet="<>[]():;,= @.aAZ09-/\\\"'{}", max_size=200))
def test_any_punctuation_parses_without_exception(prefix: str, tail: str) -> None:
    event = parse(prefix + tail, year=2024)
    assert event is None or isinstance(event, ev.Event)


@pytest.mark.parametrize("program", ["postwarden", "postwarden-policyd", "python3"])
def test_postwarden_lines_under_any_of_its_program_names(program: str) -> None:
    line = (f"Mar  4 09:18:00 mx1 {program}[600]: INFO: policyd: client=192.0.2.30 helo=x "
            "sender=<> recipient=<u@example.org> state=RCPT action=DUNNO check=spf ms=1 "
            "reason=pass")
    event = parse(line, year=2024)
    assert isinstance(event, ev.PolicyDecision)
    assert (event.check, event.action, event.detail) == ("spf", "DUNNO", "pass")
