"""Alerts: a finding (and the ban it caused) sent by webhook, mail and syslog, rate-limited.

Security: alerts quote log text (user names, reasons) an attacker chose. The webhook gets
it inside JSON, and only the configured URL is ever contacted; mail headers carry only
clipped, escaped, single-line text (``EmailMessage`` refuses line breaks in headers), and
the recipients come from the settings alone (``sendmail -t -i``, an argument list, never
a shell); syslog gets one escaped line. Sending happens on one worker thread behind a
bounded queue, so a slow webhook or mail system can neither stall the watcher nor make
memory grow; what does not fit is dropped and counted. Rate limits: one alert per
detector and subject per ``interval``, and at most ``max_per_hour`` alerts in all.
Standards: RFC 8259 (JSON), RFC 5322 (the message), sendmail(1) ``-t -i`` as Postfix
implements it; RFC 5424 severities through the local syslog socket.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

from postwarden.errors import PostwardenError, clip
from postwarden.logs.bans_store import Ban
from postwarden.logs.detect import Finding
from postwarden.logs.watch_settings import AlertSettings

log = logging.getLogger(__name__)
QUEUE_SIZE = 100
HOUR = 3600.0


class AlertError(PostwardenError):
    """One sink could not deliver one alert."""


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class Alert:
    finding: Finding
    host: str
    ban: Ban | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        f = self.finding
        ban = None if self.ban is None else {
            "network": self.ban.network, "until": _iso(self.ban.expires),
            "seconds": int(self.ban.expires - self.ban.since), "count": self.ban.count}
        return {"source": "postwarden", "host": self.host, "detector": f.detector,
                "subject": f.subject, "client": f.client, "username": f.username,
                "action": f.action, "count": f.count, "window": f.window, "detail": f.detail,
                "time": _iso(f.time), "ban": ban, "dry_run": self.dry_run}

    def summary(self) -> str:
        f = self.finding
        what = f"banned {self.ban.network} for {int(self.ban.expires - self.ban.since)}s" \
            if self.ban is not None else f.action
        dry = " (dry run)" if self.dry_run else ""
        return clip(f"{f.detector}: {f.subject}: {what}{dry}", 200)

    def body(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.to_json().items() if v not in (None, "")]
        return "\n".join(clip(line, 500) for line in lines) + "\n"


class Sink(Protocol):
    name: str

    def send(self, alert: Alert) -> None:
        """Deliver one alert or raise ``AlertError``."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the alert goes to the configured URL or nowhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxy from the environment and no redirects: only the configured URL is contacted.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


class WebhookSink:
    """POST the alert as JSON to one configured URL."""

    name = "webhook"

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def send(self, alert: Alert) -> None:
        data = json.dumps(alert.to_json()).encode()
        request = urllib.request.Request(  # noqa: S310 - the configured http(s) URL only
            self.url, data=data, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "postwarden"})
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                status = answer.status
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise AlertError(f"webhook: {exc}") from None
        if not 200 <= status < 300:
            raise AlertError(f"webhook: HTTP {status}")


class MailSink:
    """A message through the local ``sendmail -t -i``."""

    name = "mail"

    def __init__(self, sendmail: str, recipients: Sequence[str], sender: str,
                 timeout: float) -> None:
        self.sendmail, self.recipients, self.sender = sendmail, tuple(recipients), sender
        self.timeout = timeout

    def message(self, alert: Alert) -> bytes:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = f"[postwarden {clip(alert.host, 60)}] {alert.summary()}"
        msg["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
        msg.set_content(alert.body())
        return msg.as_bytes()

    def send(self, alert: Alert) -> None:
        try:
            result = subprocess.run([self.sendmail, "-t", "-i"], input=self.message(alert),
                                    capture_output=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AlertError(f"mail: {self.sendmail}: {exc}") from None
        if result.returncode != 0:
            raise AlertError(f"mail: {self.sendmail} exit {result.returncode}: "
                             f"{clip(result.stderr.decode('utf-8', 'replace').strip(), 200)}")


class SyslogSink:
    """One line to syslog (facility auth, severity warning)."""

    name = "syslog"

    def __init__(self, address: str | tuple[str, int] = "/dev/log") -> None:
        if isinstance(address, str) and not os.path.exists(address):
            address = ("localhost", logging.handlers.SYSLOG_UDP_PORT)
        self.handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_AUTH)
        self.handler.ident = "postwarden-watch: "

    def send(self, alert: Alert) -> None:
        f = alert.finding
        text = (f"alert: detector={f.detector} subject={clip(f.subject, 100)} "
                f"action={f.action} count={f.count} "
                + (f"ban={alert.ban.network} until={_iso(alert.ban.expires)} "
                   if alert.ban else "") + f"detail={clip(f.detail, 200)}")
        record = logging.LogRecord("postwarden.watch", logging.WARNING, __file__, 0, text,
                                   None, None)
        try:
            self.handler.emit(record)
        except OSError as exc:
            raise AlertError(f"syslog: {exc}") from None

    def close(self) -> None:
        self.handler.close()


class Alerter:
    """Rate-limits alerts and hands them to the sinks on a worker thread."""

    def __init__(self, sinks: Sequence[Sink], settings: AlertSettings, *,
                 on_result: Callable[[str, str], None] | None = None,
                 max_keys: int = 10_000) -> None:
        self.sinks = tuple(sinks)
        self.interval, self.per_hour = settings.interval, settings.max_per_hour
        self.on_result = on_result or (lambda sink, result: None)
        self.max_keys = max_keys
        self._last: dict[tuple[str, str], float] = {}
        self._sent: list[float] = []       # times of the alerts of the last hour
        self._queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    def allow(self, finding: Finding, now: float) -> bool:
        """The rate limits (module docstring); true when this alert may go out."""
        key = (finding.detector, finding.subject)
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._sent = [t for t in self._sent if t > now - HOUR]
        if len(self._sent) >= self.per_hour:
            return False
        self._last.pop(key, None)
        if len(self._last) >= self.max_keys:
            del self._last[next(iter(self._last))]
        self._last[key] = now
        self._sent.append(now)
        return True

    def submit(self, alert: Alert, now: float) -> bool:
        """Queue an alert if the limits allow it; false when limited or the queue is full."""
        if not self.sinks:
            return False
        if not self.allow(alert.finding, now):
            self.on_result("all", "limited")
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="alerts", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.on_result("all", "dropped")
            return False
        return True

    def _work(self) -> None:
        while (alert := self._queue.get()) is not None:
            for sink in self.sinks:
                try:
                    sink.send(alert)
                    self.on_result(sink.name, "sent")
                except AlertError as exc:
                    self.on_result(sink.name, "failed")
                    log.warning("watch: alert not sent: %s", exc)
                except Exception:
                    self.on_result(sink.name, "failed")
                    log.exception("watch: alert sink %s failed", sink.name)
            self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) until the queued alerts have been handled."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self.flush(timeout)
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                return
            self._thread.join(timeout)


def make_sinks(settings: AlertSettings) -> list[Sink]:
    sinks: list[Sink] = []
    if settings.webhook:
        sinks.append(WebhookSink(settings.webhook, settings.timeout))
    if settings.mail_to:
        sinks.append(MailSink(settings.sendmail, settings.mail_to, settings.mail_from,
                              settings.timeout))
    if settings.syslog:
        sinks.append(SyslogSink())
    return sinks
