"""Alerts: webhook JSON to a loopback server, mail through a sendmail stand-in, syslog
over UDP on loopback, and the rate limits."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from postwarden.logs.alerts import (
    Alert,
    Alerter,
    AlertError,
    MailSink,
    SyslogSink,
    WebhookSink,
)
from postwarden.logs.bans_store import Ban
from postwarden.logs.detect import Finding
from postwarden.logs.watch_settings import AlertSettings

FINDING = Finding("sasl_client", "198.51.100.7", "198.51.100.7", "", 5, 600, "ban",
                  "5 failed logins in 600s", 1_764_482_400.0)
BAN = Ban("198.51.100.7/32", 1_764_482_400.0, 1_764_486_000.0, 1, "sasl_client")


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            assert self.headers["Content-Type"] == "application/json"
            received.append(json.loads(self.rfile.read(length)))
            if self.path == "/redirect":
                self.send_response(307)
                self.send_header("Location", "/ok")
            else:
                self.send_response(204 if self.path == "/ok" else 500)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def test_webhook_posts_json(webhook: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = webhook
    WebhookSink(url + "/ok", 5).send(Alert(FINDING, "mx1", BAN))
    assert received[0]["detector"] == "sasl_client"
    assert received[0]["ban"] == {"network": "198.51.100.7/32", "until":
                                  "2025-11-30T07:00:00Z", "seconds": 3600, "count": 1}
    with pytest.raises(AlertError):
        WebhookSink(url + "/fail", 5).send(Alert(FINDING, "mx1"))
    with pytest.raises(AlertError):                     # only the configured URL
        WebhookSink(url + "/redirect", 5).send(Alert(FINDING, "mx1"))
    assert len(received) == 3


def test_mail_through_sendmail_t_i(tmp_path: Path) -> None:
    out = tmp_path / "sent"
    script = tmp_path / "sendmail"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"open({str(out)!r}, 'wb').write(' '.join(sys.argv[1:]).encode() + "
                      "b'\\n' + sys.stdin.buffer.read())\n")
    script.chmod(0o755)
    hostile = Finding("sasl_account", "evil\r\nBcc: victim@example.net", "", "x", 30, 600,
                      "alert", "30 failures", 0.0)
    MailSink(str(script), ["postmaster@example.org"], "watch@example.org", 5).send(
        Alert(hostile, "mx1"))
    text = out.read_text()
    assert text.startswith("-t -i\n")
    assert "To: postmaster@example.org" in text
    assert "\nBcc:" not in text                   # log text cannot add headers


def test_syslog_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sink = SyslogSink(("127.0.0.1", sock.getsockname()[1]))
        sink.send(Alert(FINDING, "mx1", BAN))
        data = sock.recv(4096).decode()
        sink.close()
    assert data.startswith("<36>postwarden-watch: alert: detector=sasl_client")  # auth.warning
    assert "ban=198.51.100.7/32" in data


def test_rate_limits() -> None:
    class Count:
        name = "count"
        sent = 0

        def send(self, alert: Alert) -> None:
            Count.sent += 1

    results: list[tuple[str, str]] = []
    alerter = Alerter([Count()], AlertSettings(interval=600, max_per_hour=3),
                      on_result=lambda s, r: results.append((s, r)))
    assert alerter.submit(Alert(FINDING, "mx1"), 0.0)
    assert not alerter.submit(Alert(FINDING, "mx1"), 10.0)     # same subject, too soon
    assert alerter.submit(Alert(FINDING, "mx1"), 700.0)        # after the interval
    other = [Finding("relay_probe", f"192.0.2.{i}", f"192.0.2.{i}", "", 3, 600, "ban", "",
                     0.0) for i in range(3)]
    assert alerter.submit(Alert(other[0], "mx1"), 800.0)
    assert not alerter.submit(Alert(other[1], "mx1"), 900.0)  # 3 in the last hour
    assert alerter.submit(Alert(other[2], "mx1"), 3700.0)     # the first has aged out
    alerter.close()
    assert Count.sent == 4
    assert results.count(("count", "sent")) == 4 and results.count(("all", "limited")) == 2
