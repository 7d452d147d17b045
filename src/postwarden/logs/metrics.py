"""Prometheus metrics from log events: postfix_exporter's names, plus security metrics.

Security: label values come from log lines an attacker can influence (reply codes, DSNs,
cipher names, restriction classes), so each metric family keeps at most ``MAX_SERIES``
label sets; further ones are counted under the value ``other``. Values are escaped as the
exposition format requires. The HTTP endpoint answers GET /metrics only, read-only, with
a short timeout per request.
Standards: Prometheus text exposition format 0.0.4; the metric names of kumina's and
Hsn723's postfix_exporter where the same thing is counted (see docs/watch.md for where our
counting differs: every smtpd reject stage, not only RCPT; every Postfix syslog name).

Theory of operation
-------------------
``Metrics.feed(event)`` dispatches on the event's class to one small method that bumps
counters in a dict keyed by (family, label values). The watcher calls it for every parsed
event, so one parse feeds detectors and metrics alike; ``render()`` copies the dicts and
formats them, so a scrape from the server thread never sees a half-updated family.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from postwarden.logs.events import (
    Connect,
    Delivery,
    Disconnect,
    Event,
    LostConnection,
    MessageId,
    PolicyDecision,
    Postscreen,
    Problem,
    ProtocolAbuse,
    Queued,
    RateLimit,
    Received,
    Reject,
    Removed,
    SaslFailure,
    SaslSuccess,
    TlsEstablished,
    TlsFailure,
)

MAX_SERIES = 200
SIZE_BUCKETS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
RCPT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DELAY_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

# name -> (type, help, label names)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "postfix_smtpd_connects_total": ("counter", "smtpd connections.", ()),
    "postfix_smtpd_disconnects_total": ("counter", "smtpd disconnections.", ()),
    "postfix_smtpd_connections_lost_total": (
        "counter", "smtpd connections lost, by the command after which.", ("after_stage",)),
    "postfix_smtpd_messages_processed_total": (
        "counter", "Messages received by smtpd, by SASL method.", ("sasl_method",)),
    "postfix_smtpd_messages_rejected_total": (
        "counter", "smtpd rejects (every stage), by reply code.", ("code",)),
    "postfix_smtpd_sasl_authentication_failures_total": (
        "counter", "smtpd SASL authentication failures.", ()),
    "postfix_smtpd_tls_connections_total": (
        "counter", "TLS connections established by smtpd.", ("trust", "protocol", "cipher")),
    "postfix_smtpd_forward_confirmed_reverse_dns_errors_total": (
        "counter", "Clients whose name does not resolve to their address.", ()),
    "postfix_smtp_tls_connections_total": (
        "counter", "TLS connections established by the smtp client.",
        ("trust", "protocol", "cipher")),
    "postfix_smtp_messages_processed_total": (
        "counter", "smtp client delivery attempts, by status.", ("status",)),
    "postfix_smtp_deferred_messages_by_dsn_total": (
        "counter", "Deferred deliveries, by DSN.", ("dsn",)),
    "postfix_smtp_bounced_messages_by_dsn_total": (
        "counter", "Bounced deliveries, by DSN.", ("dsn",)),
    "postfix_qmgr_messages_removed_total": ("counter", "Messages removed from the queue.", ()),
    "postfix_qmgr_messages_expired_total": ("counter", "Messages expired.", ()),
    "postfix_qmgr_messages_inserted_size_bytes": (
        "histogram", "Size of messages queued.", ()),
    "postfix_qmgr_messages_inserted_recipients": (
        "histogram", "Recipients per message queued.", ()),
    "postfix_cleanup_messages_processed_total": ("counter", "Messages cleanup processed.", ()),
    "postfix_cleanup_messages_rejected_total": ("counter", "Messages cleanup rejected.", ()),
    "postfix_postscreen_connects_total": ("counter", "postscreen connections.", ()),
    "postfix_postscreen_passes_total": ("counter", "postscreen passes.", ("type",)),
    "postfix_postscreen_tests_failed_total": (
        "counter", "postscreen tests failed.", ("test",)),
    "postfix_postscreen_hangups_total": ("counter", "postscreen hangups.", ()),
    "postfix_postscreen_messages_rejected_total": (
        "counter", "postscreen rejects, by reply code.", ("code",)),
    "postfix_delivery_delay_seconds": (
        "histogram", "Total delivery delay, by delivering process.", ("process",)),
    "postwarden_watch_lines_total": ("counter", "Log lines read.", ()),
    "postwarden_watch_lines_unparsed_total": (
        "counter", "Log lines no pattern recognised (or not from a mail service).", ()),
    "postwarden_sasl_failures_total": (
        "counter", "Failed logins, by source and protocol.", ("source", "protocol")),
    "postwarden_rejects_total": (
        "counter", "Rejects, by stage and restriction.", ("stage", "restriction")),
    "postwarden_relay_denied_total": ("counter", "Relay access denied rejects.", ()),
    "postwarden_protocol_abuse_total": (
        "counter", "smtpd protocol abuse (pipelining, non-SMTP ...), by kind.", ("kind",)),
    "postwarden_tls_failures_total": (
        "counter", "TLS handshake failures, by direction.", ("direction",)),
    "postwarden_ratelimit_hits_total": (
        "counter", "Rate limits hit (Postfix anvil and postwarden policyd).", ("source",)),
    "postwarden_policy_decisions_total": (
        "counter", "postwarden's own decisions read from the log.", ("check", "action")),
    "postwarden_watch_findings_total": (
        "counter", "Detector findings, by detector and action.", ("detector", "action")),
    "postwarden_watch_bans_total": ("counter", "Bans made here, by detector.", ("detector",)),
    "postwarden_watch_bans_active": ("gauge", "Bans in force (all watchers).", ()),
    "postwarden_watch_ban_errors_total": ("counter", "Ban backend or store failures.", ()),
    "postwarden_watch_alerts_total": (
        "counter", "Alerts, by sink and result (sent, failed, limited).", ("sink", "result")),
    "postwarden_watch_detector_keys": (
        "gauge", "Keys each detector remembers (its memory).", ("detector",)),
}
HISTOGRAMS = {"postfix_qmgr_messages_inserted_size_bytes": SIZE_BUCKETS,
              "postfix_qmgr_messages_inserted_recipients": RCPT_BUCKETS,
              "postfix_delivery_delay_seconds": DELAY_BUCKETS}
POSTSCREEN_TESTS = ("PREGREET", "NON-SMTP COMMAND", "COMMAND PIPELINING", "COMMAND TIME LIMIT",
                    "COMMAND COUNT LIMIT", "COMMAND LENGTH LIMIT", "BARE NEWLINE")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Histogram:
    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.buckets = bounds, [0] * len(bounds)
        self.count, self.sum = 0, 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += 1


class Metrics:
    """Counters fed by events; ``render()`` gives the exposition text."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in FAMILIES}
        self.histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {
            n: {} for n in HISTOGRAMS}
        self._dispatch: dict[type[Event], Callable[[Any], None]] = {
            Connect: self._connect, Disconnect: self._disconnect,
            LostConnection: self._lost, Received: self._received,
            SaslSuccess: self._received, SaslFailure: self._sasl_failure,
            TlsEstablished: self._tls, TlsFailure: self._tls_failure,
            Delivery: self._delivery, Removed: self._removed, Queued: self._queued,
            MessageId: self._message_id, Reject: self._reject, Postscreen: self._postscreen,
            Problem: self._problem, RateLimit: self._ratelimit,
            PolicyDecision: self._policy, ProtocolAbuse: self._abuse,
        }
        for name in ("postfix_smtpd_connects_total", "postfix_smtpd_disconnects_total",
                     "postfix_smtpd_sasl_authentication_failures_total",
                     "postwarden_watch_lines_total", "postwarden_watch_lines_unparsed_total",
                     "postwarden_relay_denied_total", "postwarden_watch_bans_active",
                     "postwarden_watch_ban_errors_total"):
            self.counters[name][()] = 0

    # -- recording --------------------------------------------------------------------

    def inc(self, name: str, labels: tuple[str, ...] = (), amount: float = 1) -> None:
        family = self.counters[name]
        if labels not in family and len(family) >= MAX_SERIES:
            labels = ("other",) * len(labels)
        family[labels] = family.get(labels, 0) + amount

    def set(self, name: str, value: float, labels: tuple[str, ...] = ()) -> None:
        self.counters[name][labels] = value

    def observe(self, name: str, value: float, labels: tuple[str, ...] = ()) -> None:
        family = self.histograms[name]
        if labels not in family and len(family) >= MAX_SERIES:
            labels = ("other",) * len(labels)
        histogram = family.get(labels)
        if histogram is None:
            histogram = family[labels] = _Histogram(HISTOGRAMS[name])
        histogram.observe(value)

    def line(self, event: Event | None) -> None:
        """One log line read, and the event it gave (None: not recognised)."""
        self.inc("postwarden_watch_lines_total")
        if event is None:
            self.inc("postwarden_watch_lines_unparsed_total")
            return
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)

    # -- one method per event class ----------------------------------------------------

    def _connect(self, e: Connect) -> None:
        if e.process == "smtpd":
            self.inc("postfix_smtpd_connects_total")

    def _disconnect(self, e: Disconnect) -> None:
        if e.process == "smtpd":
            self.inc("postfix_smtpd_disconnects_total")

    def _lost(self, e: LostConnection) -> None:
        if e.kind == "lost connection":
            self.inc("postfix_smtpd_connections_lost_total", (e.after,))

    def _received(self, e: Received) -> None:
        if e.via == "smtpd" and e.process == "smtpd":
            method = e.mechanism if isinstance(e, SaslSuccess) else ""
            self.inc("postfix_smtpd_messages_processed_total", (method,))

    def _sasl_failure(self, e: SaslFailure) -> None:
        if e.source == "postfix":
            self.inc("postfix_smtpd_sasl_authentication_failures_total")
        self.inc("postwarden_sasl_failures_total", (e.source, e.protocol), max(1, e.attempts))

    def _tls(self, e: TlsEstablished) -> None:
        side = "smtpd" if e.direction == "in" else "smtp"
        self.inc(f"postfix_{side}_tls_connections_total", (e.trust, e.protocol, e.cipher))

    def _tls_failure(self, e: TlsFailure) -> None:
        self.inc("postwarden_tls_failures_total", (e.direction,))

    def _delivery(self, e: Delivery) -> None:
        if e.process == "smtp":
            self.inc("postfix_smtp_messages_processed_total", (e.status,))
        if e.status == "deferred":
            self.inc("postfix_smtp_deferred_messages_by_dsn_total", (e.dsn,))
        elif e.status == "bounced":
            self.inc("postfix_smtp_bounced_messages_by_dsn_total", (e.dsn,))
        elif e.status == "expired":
            self.inc("postfix_qmgr_messages_expired_total")
        self.observe("postfix_delivery_delay_seconds", e.delay, (e.process,))

    def _removed(self, e: Removed) -> None:
        self.inc("postfix_qmgr_messages_removed_total")

    def _queued(self, e: Queued) -> None:
        self.observe("postfix_qmgr_messages_inserted_size_bytes", e.size)
        self.observe("postfix_qmgr_messages_inserted_recipients", e.nrcpt)

    def _message_id(self, e: MessageId) -> None:
        if e.process == "cleanup":
            self.inc("postfix_cleanup_messages_processed_total")

    def _reject(self, e: Reject) -> None:
        if e.warning:
            return
        if e.process == "cleanup":
            self.inc("postfix_cleanup_messages_rejected_total")
        elif e.process == "postscreen":
            self.inc("postfix_postscreen_messages_rejected_total", (str(e.code),))
        else:
            self.inc("postfix_smtpd_messages_rejected_total", (str(e.code),))
        self.inc("postwarden_rejects_total", (e.stage, e.restriction))
        if e.restriction.lower() == "relay access denied":
            self.inc("postwarden_relay_denied_total")

    def _postscreen(self, e: Postscreen) -> None:
        kind = e.kind.upper()
        if kind == "CONNECT":
            self.inc("postfix_postscreen_connects_total")
        elif kind in ("PASS NEW", "PASS OLD"):
            self.inc("postfix_postscreen_passes_total", (kind[5:].lower(),))
        elif kind == "HANGUP":
            self.inc("postfix_postscreen_hangups_total")
        elif kind in POSTSCREEN_TESTS:
            self.inc("postfix_postscreen_tests_failed_total", (kind.replace(" ", "_")
                                                               .replace("-", "_"),))

    def _problem(self, e: Problem) -> None:
        if e.message.startswith("hostname ") and "does not resolve to address" in e.message:
            self.inc("postfix_smtpd_forward_confirmed_reverse_dns_errors_total")

    def _ratelimit(self, e: RateLimit) -> None:
        self.inc("postwarden_ratelimit_hits_total", ("anvil",))

    def _policy(self, e: PolicyDecision) -> None:
        word = e.action.split(None, 1)[0].upper() if e.action.strip() else "DUNNO"
        self.inc("postwarden_policy_decisions_total", (e.check, word[:24]))
        if e.check == "ratelimit" and word not in ("DUNNO", "OK", "PREPEND"):
            self.inc("postwarden_ratelimit_hits_total", ("policyd",))

    def _abuse(self, e: ProtocolAbuse) -> None:
        self.inc("postwarden_protocol_abuse_total", (e.kind,))

    # -- exposition -------------------------------------------------------------------

    def render(self) -> str:
        # dict(f) copies in one step under the GIL: a scrape sees each family whole.
        counters = {n: dict(f) for n, f in self.counters.items()}
        histograms = {n: {k: (list(h.buckets), h.count, h.sum) for k, h in dict(f).items()}
                      for n, f in self.histograms.items()}
        out: list[str] = []
        for name, (kind, text, labels) in FAMILIES.items():
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "histogram":
                out += _histogram_lines(name, labels, histograms[name])
                continue
            for values, number in sorted(counters[name].items()):
                out.append(f"{name}{_labels(labels, values)} {number:g}")
        return "\n".join(out) + "\n"


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _histogram_lines(name: str, labels: tuple[str, ...],
                     family: Mapping[tuple[str, ...], tuple[list[int], int, float]]) -> list[str]:
    out = []
    bounds = HISTOGRAMS[name]
    for values, (buckets, count, total) in sorted(family.items()):
        for bound, number in zip(bounds, buckets, strict=True):
            le = f'le="{bound:g}"'
            out.append(f"{name}_bucket{_labels(labels, values, le)} {number}")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_labels(labels, values, inf)} {count}")
        out.append(f"{name}_sum{_labels(labels, values)} {total:g}")
        out.append(f"{name}_count{_labels(labels, values)} {count}")
    return out


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    timeout = 5

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "try /metrics")
            return
        body = self.metrics.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args   # scrapes are not worth a log line each


def serve(metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` on HOST:PORT from a daemon thread; returns the server (its
    ``server_address`` has the port when 0 was asked for)."""
    handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family})
    server: ThreadingHTTPServer = server_class((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
