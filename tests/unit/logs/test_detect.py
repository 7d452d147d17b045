"""Detectors: thresholds within windows, no double counting, bounded memory."""

from __future__ import annotations

import dataclasses

from postwarden.logs.detect import Detectors, Distinct, Finding, Window
from postwarden.logs.events import Event
from postwarden.logs.parse import Parser
from postwarden.logs.watch_settings import DETECTORS, Rule, WatchSettings

T0 = "Nov 30 06:00:{s:02d} mx1 "


def settings(**rules: Rule) -> WatchSettings:
    return WatchSettings(detectors={**DETECTORS, **rules})


def events(lines: list[str]) -> list[Event]:
    parser = Parser(year=2026)
    out = []
    for line in lines:
        event = parser.parse(line)
        assert event is not None, line
        out.append(event)
    return out


def feed(detectors: Detectors, lines: list[str]) -> list[Finding]:
    return [f for e in events(lines) for f in detectors.feed(e)]


def sasl(second: int, ip: str, reason: str = "UGFzc3dvcmQ6", user: str = "") -> str:
    tail = f", sasl_username={user}" if user else ""
    return (T0.format(s=second) + f"postfix/submission/smtpd[100]: warning: unknown[{ip}]: "
            f"SASL LOGIN authentication failed: {reason}{tail}")


def test_window_threshold_inside_window_only() -> None:
    w = Window(3, 10, 100)
    assert not w.hit("a", 0) and not w.hit("a", 5)
    assert not w.hit("a", 11)       # the first hit left the window: 5, 11 remain
    assert w.hit("a", 12)           # 5, 11, 12 within 10 s
    assert not w.hit("a", 13)       # reset after a finding: a full threshold again


def test_window_memory_is_bounded() -> None:
    w = Window(5, 600, 1000)
    for i in range(50_000):
        w.hit(f"198.51.{i // 256 % 256}.{i % 256}", float(i))
    assert len(w) == 1000


def test_distinct_bounded_and_windowed() -> None:
    d = Distinct(3, 10, 10)
    assert d.hit("u", "a", 0) is None and d.hit("u", "b", 1) is None
    assert d.hit("u", "b", 2) is None                  # the same value again
    assert d.hit("u", "c", 20) is None                 # a and b left the window
    for i in range(100):
        d.hit(f"user{i}", "x", 30)
    assert len(d) == 10


def test_sasl_brute_force_per_client() -> None:
    det = Detectors(settings())
    found = feed(det, [sasl(i, "198.51.100.7") for i in range(5)])
    assert [(f.detector, f.client, f.action) for f in found] == [
        ("sasl_client", "198.51.100.7", "ban")]


def test_server_side_failures_count_only_after_a_real_one() -> None:
    """An auth server outage alone bans nobody; but Dovecot's auth penalty makes Postfix
    log a throttled brute forcer's attempts as 'Connection lost', and those count."""
    det = Detectors(settings())
    lost = "Connection lost to authentication server"
    assert feed(det, [sasl(i, "198.51.100.7", lost) for i in range(10)]) == []
    found = feed(det, [sasl(20, "198.51.100.8")] + [sasl(21 + i, "198.51.100.8", lost)
                                                    for i in range(4)])
    assert [f.client for f in found] == ["198.51.100.8"]


def test_dovecot_session_counts_its_attempts_once() -> None:
    """One login line with 'auth failed, 5 attempts' is five attempts; the auth-worker
    lines for the same attempts add nothing (fail2ban counts both)."""
    det = Detectors(settings())
    worker = [T0.format(s=i) + "dovecot: auth-worker(4242): pam(bob,203.0.113.9,<x>): "
              "pam_authenticate() failed: Authentication failure (password mismatch?)"
              for i in range(4)]
    login = (T0.format(s=5) + "dovecot: imap-login: Disconnected (auth failed, 4 attempts "
             "in 12 secs): user=<bob>, method=PLAIN, rip=203.0.113.9, lip=192.0.2.1, TLS")
    assert feed(det, worker) == []
    assert feed(det, [login]) == []          # 4 attempts < 5
    det2 = Detectors(settings())
    five = login.replace("4 attempts", "5 attempts")
    assert [f.client for f in feed(det2, [five])] == ["203.0.113.9"]


def test_window_expiry_means_no_finding() -> None:
    det = Detectors(settings(sasl_client=Rule(threshold=3, window=2)))
    assert feed(det, [sasl(0, "198.51.100.7"), sasl(3, "198.51.100.7"),
                      sasl(6, "198.51.100.7")]) == []


def test_account_detectors() -> None:
    det = Detectors(settings(sasl_account=Rule(threshold=4, window=600, action="alert"),
                             account_clients=Rule(threshold=3, window=600, action="alert")))
    lines = [sasl(i, f"198.51.100.{i}", "authentication failure", user="Admin")
             for i in range(4)]
    found = {f.detector: f for f in feed(det, lines)}
    assert found["account_clients"].username == "admin"
    assert found["account_clients"].count == 3
    assert found["sasl_account"].subject == "admin"
    assert found["sasl_account"].client == ""        # about an account: nobody to ban


def test_relay_probe_and_warnings() -> None:
    det = Detectors(settings())
    reject = (T0 + "postfix/smtpd[101]: NOQUEUE: {w}: RCPT from unknown[192.0.2.99]: 554 "
              "5.7.1 <x@example.com>: Relay access denied; from=<a@b.example> "
              "to=<x@example.com> proto=ESMTP helo=<x>")
    warnings = [reject.format(s=i, w="reject_warning") for i in range(5)]
    assert feed(det, warnings) == []
    found = feed(det, [reject.format(s=i, w="reject") for i in range(3)])
    assert [(f.detector, f.client) for f in found] == [("relay_probe", "192.0.2.99")]


def test_postscreen_offenders() -> None:
    det = Detectors(settings())
    pregreet = (T0 + "postfix/postscreen[7]: PREGREET 11 after 0.08 from [192.0.2.50]:4711: "
                "EHLO x\\r\\n")
    passed = T0 + "postfix/postscreen[7]: PASS NEW [192.0.2.51]:4712"
    assert feed(det, [passed.format(s=i) for i in range(5)]) == []
    found = feed(det, [pregreet.format(s=i) for i in range(3)])
    assert [(f.detector, f.client) for f in found] == [("postscreen", "192.0.2.50")]


def test_ratelimit_from_anvil_and_policyd() -> None:
    det = Detectors(settings(ratelimit=Rule(threshold=2, window=600, action="alert")))
    anvil = (T0 + "postfix/smtpd[9]: warning: Connection rate limit exceeded: 31 from "
             "unknown[192.0.2.60] for service smtp")
    found = feed(det, [anvil.format(s=1), anvil.format(s=2)])
    assert [(f.detector, f.client) for f in found] == [("ratelimit", "192.0.2.60")]


def test_bulk_sender_against_its_baseline() -> None:
    rule = Rule(threshold=20, window=3600, action="alert", factor=5.0)
    det = Detectors(settings(bulk_sender=rule))
    parser = Parser(year=2026)

    def sent(hour: int, n: int) -> list[Finding]:
        found = []
        for i in range(n):
            line = (f"Nov 29 {hour:02d}:{i // 60 % 60:02d}:{i % 60:02d} mx1 "
                    f"postfix/submission/smtpd[5]: 4A{hour:02d}{i:05X}: "
                    "client=unknown[192.0.2.5], sasl_method=PLAIN, sasl_username=carol")
            event = parser.parse(line)
            assert event is not None
            found += det.feed(event)
        return found

    for hour in range(0, 10):        # a steady 10 messages an hour: the baseline
        assert sent(hour, 10) == []
    assert sent(10, 40) == []        # 40 < 5 x baseline (10)
    # The baseline is now 0.3 x 40 + 0.7 x 10 = 19: 120 >= 5 x 19, once per window.
    found = sent(11, 120)
    assert [(f.detector, f.username) for f in found] == [("bulk_sender", "carol")]


def test_disabled_detector_sees_nothing() -> None:
    det = Detectors(settings(sasl_client=dataclasses.replace(DETECTORS["sasl_client"],
                                                             enabled=False)))
    assert feed(det, [sasl(i, "198.51.100.7") for i in range(10)]) == []
