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

SIGHUP (``reload``) reads postwarden.toml again between two polls. A file that does not
load changes nothing: one error line, and the running configuration goes on. Otherwise
the new thresholds, detectors, ignore lists, ban durations and alert settings apply at
once; detector counts are kept when no threshold, window or the set of enabled detectors
changed (only actions or factors), else counting starts again; bans are kept, and those
inside a network that is now protected are lifted. What only a restart can change
(``RESTART_ONLY``: the source and its position file, the store, the ban backend and its
commands, dry-run, the account and groups the parser runs as, ban aggregation) keeps
its running value, said in one warning line. SIGTERM and SIGINT end ``run`` after a last
checkpoint of the follower.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

from postwarden.errors import PostwardenError
from postwarden.logs.alerts import Alert, Alerter, Sink, make_sinks
from postwarden.logs.bans import Backend, BanManager, Protection, make_backend, shown
from postwarden.logs.bans_store import BanStore, MemoryBanStore, open_ban_store
from postwarden.logs.detect import Detectors, Finding
from postwarden.logs.follow import Follower
from postwarden.logs.metrics import Metrics
from postwarden.logs.parse import Parser
from postwarden.logs.watch_settings import IPNetwork, WatchSettings, postfix_mynetworks

log = logging.getLogger(__name__)
IDLE_SLEEP = 0.25
TICK_EVERY = 0.5
# [watch] keys a reload leaves as they are (theory of operation), and [watch.ban] keys.
RESTART_ONLY = ("file", "position_file", "journal", "journalctl", "journal_matches",
                "journal_directory", "journal_catchup", "store", "dry_run", "user", "groups",
                "nftables", "access_map")
RESTART_ONLY_BAN = ("backend", "aggregate", "aggregate_window")


def protected_networks(settings: WatchSettings) -> tuple[IPNetwork, ...]:
    """Loopback, the ignore list, mynetworks, and the Postfix mynetworks when asked for."""
    found = list(settings.protected())
    if settings.ban.postfix_config_directory:
        found += [ipaddress.ip_network(t)
                  for t in postfix_mynetworks(settings.ban.postfix_config_directory)]
    return tuple(found)


def restart_only(running: WatchSettings, loaded: WatchSettings) -> WatchSettings:
    """``loaded`` with the running values of what only a restart changes (said once)."""
    changed = [key for key in RESTART_ONLY if getattr(running, key) != getattr(loaded, key)]
    changed += [f"ban.{key}" for key in RESTART_ONLY_BAN
                if getattr(running.ban, key) != getattr(loaded.ban, key)]
    if changed:
        log.warning("watch: reload: %s changed: applied at the next start, not now",
                    ", ".join(changed))
    ban = dataclasses.replace(loaded.ban,
                              **{key: getattr(running.ban, key) for key in RESTART_ONLY_BAN})
    return dataclasses.replace(loaded, ban=ban,
                               **{key: getattr(running, key) for key in RESTART_ONLY})


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
        self.fixed_protection = protected is not None   # given: not from the settings
        self.fixed_sinks = sinks is not None
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

    # -- reload (theory of operation) ----------------------------------------------------

    def reload(self, load: Callable[[], WatchSettings]) -> bool:
        """Settings from ``load`` applied; False (one error line) when they do not load."""
        try:
            settings = restart_only(self.settings, load())
            protected = None if self.fixed_protection else protected_networks(settings)
        except PostwardenError as exc:
            log.error("watch: reload refused, the running configuration is kept: %s", exc)
            return False
        self._retune(settings)
        self.bans.ban, self.bans.sync_interval = settings.ban, settings.sync_interval
        if protected is not None:
            self.bans.protection = Protection(protected)
            self._lift_protected()
        self._realert(settings)
        self.settings = settings
        log.info("watch: reloaded %s", settings.summary())
        return True

    def _retune(self, settings: WatchSettings) -> None:
        """Detectors whose threshold and window stay keep their counts (``retune``)."""
        fresh = self.detectors.retune(settings)
        if fresh:
            log.info("watch: reload: counting starts again for %s", ", ".join(fresh))

    def _lift_protected(self) -> None:
        """Bans inside networks now protected (ignore, mynetworks) are lifted at once."""
        now = self.clock()
        for network, ban in list(self.bans.applied.items()):
            if not self.bans.protection.overlaps(ipaddress.ip_network(network)):
                continue
            del self.bans.applied[network]
            log.warning("watch: client=%s action=unban check=%s reason=protected (reload)",
                        shown(network), ban.detector)
            try:
                self.bans.store.lift(network, now)
                self.bans.backend.lift(ban, now)
            except PostwardenError as exc:   # the store's or the backend's
                log.error("watch: lifting %s: %s", network, exc)

    def _realert(self, settings: WatchSettings) -> None:
        alerts = settings.alerts
        self.alerter.interval, self.alerter.per_hour = alerts.interval, alerts.max_per_hour
        if not self.fixed_sinks and alerts != self.settings.alerts:
            # XXX: the old sinks are left to the garbage collector: closing them here
            # could race the alert thread sending through them.
            self.alerter.sinks = tuple(make_sinks(alerts))

    def run(self, follower: Follower, stop: threading.Event, *,
            hangup: threading.Event | None = None,
            load: Callable[[], WatchSettings] | None = None) -> int:
        """Follow until ``stop`` is set; 0 on a clean stop. When ``hangup`` is set, the
        settings from ``load`` are applied (``reload``)."""
        self.start()
        next_tick = 0.0
        try:
            while not stop.is_set():
                if hangup is not None and hangup.is_set() and load is not None:
                    hangup.clear()
                    try:
                        self.reload(load)
                    except Exception:  # a bug in a reload must not stop the watcher
                        log.exception("watch: reload failed")
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


def stop_on_signals(stop: threading.Event, hangup: threading.Event | None = None) -> None:
    """SIGTERM and SIGINT end ``run`` cleanly; SIGHUP sets ``hangup`` (a reload)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        del frame
        if signum == signal.SIGHUP and hangup is not None:
            hangup.set()
        else:
            stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hangup is not None:
        signal.signal(signal.SIGHUP, handler)
