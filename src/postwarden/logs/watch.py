"""The watcher: follow a log, parse each line once, feed detectors and metrics, act.

Security: lines are outside data and reach only the parser; what follows sees typed
events. Findings become bans only through ``BanManager`` (which refuses loopback, the
ignore list and mynetworks) and alerts only through the rate-limited ``Alerter``. One bad
line, or a failing backend, store or sink, is logged and the loop goes on: the watcher
never dies because of what it read.
Standards: see postwarden.logs.follow (rotation, journal), detect (thresholds), bans
(nftables, access(5)), alerts and metrics.

Theory of operation
-------------------
``feed(line)`` is the whole pipeline for one line: parse -> metrics -> detectors ->
actions. ``run`` calls it for every line the follower returns, then ``tick`` (expire bans,
pick up other hosts' bans, refresh gauges) at most twice a second, and sleeps a quarter of
a second when the log had nothing new. Detector windows use the events' own times; ban
start and end use the wall clock, so replaying an old log (``--from-start``) bans for the
configured duration from now.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from postwarden.logs.alerts import Alert, Alerter, Sink, make_sinks
from postwarden.logs.bans import Backend, BanManager, make_backend
from postwarden.logs.bans_store import BanStore, MemoryBanStore, open_ban_store
from postwarden.logs.detect import Detectors, Finding
from postwarden.logs.follow import Follower
from postwarden.logs.metrics import Metrics
from postwarden.logs.parse import Parser
from postwarden.logs.watch_settings import IPNetwork, WatchSettings, postfix_mynetworks

log = logging.getLogger(__name__)
IDLE_SLEEP = 0.25
TICK_EVERY = 0.5


def protected_networks(settings: WatchSettings) -> tuple[IPNetwork, ...]:
    """Loopback, the ignore list, mynetworks, and the Postfix mynetworks when asked for."""
    import ipaddress

    found = list(settings.protected())
    if settings.ban.postfix_config_directory:
        found += [ipaddress.ip_network(t)
                  for t in postfix_mynetworks(settings.ban.postfix_config_directory)]
    return tuple(found)


class Watcher:
    """One pipeline from lines to bans, alerts and metrics."""

    def __init__(self, settings: WatchSettings, *, dry_run: bool | None = None,
                 store: BanStore | None = None, backend: Backend | None = None,
                 sinks: Sequence[Sink] | None = None, metrics: Metrics | None = None,
                 protected: Sequence[IPNetwork] | None = None, year: int | None = None,
                 clock: Callable[[], float] = time.time, host: str | None = None) -> None:
        self.settings = settings
        self.dry_run = settings.dry_run if dry_run is None else dry_run
        self.clock = clock
        self.host = host or socket.gethostname()
        self.parser = Parser(year=year)
        self.metrics = metrics or Metrics()
        self.detectors = Detectors(settings)
        if store is None:
            store = MemoryBanStore() if self.dry_run else open_ban_store(settings.store)
        if backend is None:
            backend = make_backend(settings, dry_run=self.dry_run)
        self.bans = BanManager(settings, store, backend,
                               protected=protected_networks(settings)
                               if protected is None else protected,
                               dry_run=self.dry_run, origin=self.host)
        self.alerter = Alerter(make_sinks(settings.alerts) if sinks is None else sinks,
                               settings.alerts, on_result=self._alert_result)
        self.findings: list[Finding] = []     # the last ones, for tests and --once
        self.lines = 0

    def _alert_result(self, sink: str, result: str) -> None:
        self.metrics.inc("postwarden_watch_alerts_total", (sink, result))

    def start(self) -> None:
        self.bans.start(self.clock())

    def feed(self, line: bytes | str) -> None:
        """One line through the whole pipeline (theory of operation)."""
        self.lines += 1
        try:
            event = self.parser.parse(line)
        except Exception:  # a parser bug must not stop the watcher
            log.exception("watch: could not parse a line; skipped")
            event = None
        self.metrics.line(event)
        if event is None:
            return
        for finding in self.detectors.feed(event):
            try:
                self.act(finding)
            except Exception:  # a bug in one action must not stop the watcher
                log.exception("watch: acting on a %s finding failed", finding.detector)

    def act(self, finding: Finding) -> None:
        self.metrics.inc("postwarden_watch_findings_total", (finding.detector, finding.action))
        if len(self.findings) >= 1000:
            del self.findings[:500]
        self.findings.append(finding)
        ban = None
        if finding.action == "ban" and finding.client:
            errors = self.bans.counts["errors"]
            ban = self.bans.offend(finding, self.clock())
            if self.bans.counts["errors"] != errors:
                self.metrics.inc("postwarden_watch_ban_errors_total")
            if ban is None:
                return   # protected, or already banned: nothing new to tell
            self.metrics.inc("postwarden_watch_bans_total", (finding.detector,))
        else:
            log.warning("watch: subject=%s action=%s check=%s count=%d detail=%s",
                        finding.subject, finding.action, finding.detector, finding.count,
                        finding.detail.replace(" ", "\\x20"))
        if finding.action != "log":
            self.alerter.submit(Alert(finding, self.host, ban, self.dry_run), finding.time)

    def tick(self) -> None:
        self.bans.tick(self.clock())
        self.metrics.set("postwarden_watch_bans_active", len(self.bans.applied))
        for name, size in self.detectors.sizes().items():
            self.metrics.set("postwarden_watch_detector_keys", size, (name,))

    def run(self, follower: Follower, stop: threading.Event) -> int:
        """Follow until ``stop`` is set; 0 on a clean stop."""
        self.start()
        next_tick = 0.0
        try:
            while not stop.is_set():
                lines = follower.poll()
                for line in lines:
                    self.feed(line)
                now = time.monotonic()
                if now >= next_tick:
                    self.tick()
                    follower.checkpoint()
                    next_tick = now + TICK_EVERY
                if not lines:
                    stop.wait(IDLE_SLEEP)
        finally:
            follower.checkpoint()
            follower.close()
            self.alerter.close()
        return 0

    def close(self) -> None:
        self.alerter.close()
        self.bans.store.close()


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end ``run`` cleanly."""
    def handler(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
