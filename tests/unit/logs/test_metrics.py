"""Metrics: postfix_exporter's names from parsed lines, bounded labels, the HTTP endpoint."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from postwarden.logs.metrics import MAX_SERIES, Metrics, serve
from postwarden.logs.parse import Parser

LINES = [
    "Nov 30 06:00:01 mx1 postfix/smtpd[1]: connect from unknown[192.0.2.1]",
    "Nov 30 06:00:01 mx1 postfix/submissions/smtpd[2]: connect from unknown[192.0.2.2]",
    "Nov 30 06:00:02 mx1 postfix/submission/smtpd[3]: warning: unknown[192.0.2.3]: SASL "
    "LOGIN authentication failed: UGFzc3dvcmQ6",
    "Nov 30 06:00:03 mx1 postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: "
    "554 5.7.1 <x@example.com>: Relay access denied; from=<a@b.example> to=<x@example.com> "
    "proto=ESMTP helo=<x>",
    "Nov 30 06:00:04 mx1 postfix/submission/smtpd[3]: 4A1B2C3D4E: client=unknown[192.0.2.3], "
    "sasl_method=PLAIN, sasl_username=carol",
    "Nov 30 06:00:05 mx1 postfix/smtpd[1]: disconnect from unknown[192.0.2.1] ehlo=1 "
    "mail=1 rcpt=0/1 quit=1 commands=3/4",
    "this is not a log line",
]


def metrics_of(lines: list[str]) -> tuple[Metrics, str]:
    m = Metrics()
    parser = Parser(year=2026)
    for line in lines:
        m.line(parser.parse(line))
    return m, m.render()


def value(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found, series
    return float(found[1])


def test_exporter_names_count_every_syslog_name() -> None:
    _, text = metrics_of(LINES)
    assert value(text, "postfix_smtpd_connects_total") == 2      # submissions/ counted too
    assert value(text, "postfix_smtpd_disconnects_total") == 1
    assert value(text, "postfix_smtpd_sasl_authentication_failures_total") == 1
    assert value(text, 'postfix_smtpd_messages_rejected_total{code="554"}') == 1
    assert value(text, 'postfix_smtpd_messages_processed_total{sasl_method="PLAIN"}') == 1
    assert value(text, "postwarden_relay_denied_total") == 1
    assert value(text, "postwarden_watch_lines_total") == 7
    assert value(text, "postwarden_watch_lines_unparsed_total") == 1
    assert "# TYPE postfix_qmgr_messages_inserted_size_bytes histogram" in text


def test_label_sets_are_bounded_and_escaped() -> None:
    m = Metrics()
    for i in range(MAX_SERIES + 50):
        m.inc("postwarden_rejects_total", ("RCPT", f'restriction "{i}"\n'))
    family = m.counters["postwarden_rejects_total"]
    assert len(family) == MAX_SERIES + 1
    assert family[("other", "other")] == 50
    text = m.render()
    assert 'restriction="restriction \\"0\\"\\n"' in text


def test_histogram_rendering() -> None:
    m = Metrics()
    m.observe("postfix_qmgr_messages_inserted_recipients", 3)
    text = m.render()
    assert 'postfix_qmgr_messages_inserted_recipients_bucket{le="2"} 0' in text
    assert 'postfix_qmgr_messages_inserted_recipients_bucket{le="4"} 1' in text
    assert 'postfix_qmgr_messages_inserted_recipients_bucket{le="+Inf"} 1' in text
    assert "postfix_qmgr_messages_inserted_recipients_count 1" in text


def test_http_endpoint() -> None:
    m, _ = metrics_of(LINES)
    server = serve(m, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = answer.read().decode()
            assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "postfix_smtpd_connects_total 2" in body
    finally:
        server.shutdown()
        server.server_close()


def test_logs_metrics_command(tmp_path: Path) -> None:
    """``postwarden logs metrics --listen 127.0.0.1:0 FILE`` follows the file and serves."""
    log = tmp_path / "mail.log"
    log.write_text("\n".join(LINES[:2]) + "\n")
    process = subprocess.Popen([sys.executable, "-m", "postwarden", "logs", "metrics",
                                "--listen", "127.0.0.1:0", str(log), "--from-start",
                                "--year", "2026"], stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        announced = process.stderr.readline()
        port = re.search(r":(\d+)/metrics", announced)
        assert port, announced
        url = f"http://127.0.0.1:{port[1]}/metrics"
        with open(log, "a") as handle:
            handle.write(LINES[5] + "\n")      # followed: written after the start
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(url, timeout=5) as answer:
                body = answer.read().decode()
            if "postfix_smtpd_disconnects_total 1" in body or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert "postfix_smtpd_connects_total 2" in body
        assert "postfix_smtpd_disconnects_total 1" in body
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert process.returncode == 0
