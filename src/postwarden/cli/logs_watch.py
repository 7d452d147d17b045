"""``logs watch`` and ``logs metrics``: detectors, bans, alerts and the Prometheus exporter.

Security: the log is outside data and goes through ``postwarden.logs.parse`` only; bans
go through ``postwarden.logs.bans`` (never loopback, the ignore list or mynetworks);
journalctl, nft, postmap and sendmail run with argument lists, never a shell.
Standards: see postwarden.logs.watch; Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from postwarden.cli.common import EXIT_OK, Subparsers, daemon_logging
from postwarden.errors import UsageError

if TYPE_CHECKING:  # imported when run, to keep the command line quick to start
    from postwarden.logs.follow import Follower
    from postwarden.logs.metrics import Metrics
    from postwarden.logs.watch import Watcher
    from postwarden.logs.watch_settings import WatchSettings

def _source(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", nargs="?", metavar="FILE",
                     help="the log file to follow (default [watch] file, /var/log/mail.log)")
    sub.add_argument("--journal", action="store_true",
                     help="follow the systemd journal (journalctl --follow --output=json)")
    sub.add_argument("--journal-directory", metavar="DIR",
                     help="follow the journal files in DIR (journalctl --directory), e.g. "
                          "a journal collected from another host; implies --journal")
    sub.add_argument("--config", metavar="FILE",
                     help="settings file with a [watch] table (default "
                          "/etc/postwarden/postwarden.toml when it exists)")
    sub.add_argument("--from-start", action="store_true",
                     help="read the file (or the journal) from its start, not its end")
    sub.add_argument("--once", action="store_true",
                     help="read what is there now and exit (a replay), instead of following")
    sub.add_argument("--year", type=int, metavar="YYYY",
                     help="the year of BSD syslog timestamps (default: inferred)")


def add(actions: Subparsers) -> None:
    watch = actions.add_parser(
        "watch", help="follow the log: detect attacks, ban, alert",
        description="Follow a mail log or the journal, detect SASL brute force, relay "
                    "probing, postscreen offenders, rate-limit hits, bulk sending by one "
                    "account and TLS failures, and ban (nftables set or Postfix access "
                    "map), alert and count. See docs/watch.md.")
    _source(watch)
    watch.add_argument("--dry-run", action="store_true",
                       help="detect and log what would be banned; ban nothing")
    watch.add_argument("--metrics", metavar="HOST:PORT",
                       help="also serve Prometheus metrics over HTTP here")
    watch.add_argument("--check-config", action="store_true",
                       help="validate the settings, print a one-line summary and exit")
    watch.set_defaults(handler=_watch)
    metrics = actions.add_parser(
        "metrics", help="serve Prometheus metrics from the log",
        description="Follow a mail log or the journal and serve postfix_exporter-compatible "
                    "and security metrics on HOST:PORT/metrics.")
    metrics.add_argument("--listen", required=True, metavar="HOST:PORT",
                         help="where to serve /metrics (e.g. 127.0.0.1:9154)")
    _source(metrics)
    metrics.set_defaults(handler=_metrics)


def _settings(args: argparse.Namespace) -> WatchSettings:
    from postwarden import settings

    return settings.load(Path(args.config) if args.config else None).watch


def _follower(args: argparse.Namespace, settings: WatchSettings, *,
              keep_position: bool = True) -> Follower:
    """The file or journal follower; with ``[watch] position_file`` (and
    ``keep_position``: ``logs watch``, whose position it is) for the configured source."""
    from postwarden.logs.follow import FileFollower, JournalFollower

    journal = args.journal or bool(args.journal_directory)
    if journal and args.file:
        raise UsageError("give FILE or --journal, not both")
    if not (keep_position and settings.position_file) or args.once or args.from_start:
        settings = dataclasses.replace(settings, position_file="")
    if journal or (settings.journal and not args.file):
        # the position file belongs to the configured source, as for a FILE (below)
        resume = settings.position_file and settings.journal and not args.journal_directory
        return JournalFollower(
            settings.journalctl, settings.journal_matches,
            from_start=args.from_start or args.once, follow=not args.once,
            directory=str(Path(args.journal_directory).absolute()) if args.journal_directory
            else settings.journal_directory,
            bookmark=Path(settings.position_file) if resume else None,
            catchup=settings.journal_catchup)
    path = Path(args.file or settings.file)
    if args.once and not path.is_file():
        raise UsageError(f"{path}: no such file")
    resume = settings.position_file and not args.file
    return FileFollower(path, from_start=args.from_start or args.once,
                        bookmark=Path(settings.position_file) if resume else None)


def _hostport(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{text!r}: expected HOST:PORT (e.g. 127.0.0.1:9154)")
    return host, int(port)


def _serve(metrics: Metrics, where: str) -> None:
    from postwarden.logs.metrics import serve

    host, port = _hostport(where)
    try:
        server = serve(metrics, host, port)
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    bound = server.server_address
    print(f"postwarden: metrics on http://{where.rpartition(':')[0]}:{bound[1]}/metrics",
          file=sys.stderr)


def _watch(args: argparse.Namespace) -> int:
    """``logs watch``: the detector loop until SIGTERM (or the end of the log with --once)."""
    import threading

    from postwarden.logs.bans import make_backend
    from postwarden.logs.privsep import separated
    from postwarden.logs.watch import Watcher, protected_networks, stop_on_signals

    def load() -> WatchSettings:   # at start, and again at each SIGHUP
        settings = _settings(args)
        return dataclasses.replace(settings, dry_run=True) if args.dry_run else settings

    settings = load()
    if args.check_config:
        print(settings.summary())
        return EXIT_OK
    daemon_logging()
    stop, hangup = threading.Event(), threading.Event()
    # As root: the helper that applies bans is forked (before any thread starts), then
    # this process becomes [watch] user; the log, the store and the metrics socket are
    # opened after that, as that user.
    with separated(settings, make_backend(settings, dry_run=settings.dry_run),
                   user=settings.user, groups=settings.groups,
                   protected=protected_networks(settings), on_death=stop.set) as backend:
        follower = _follower(args, settings)
        watcher = Watcher(settings, year=args.year, backend=backend)
        if args.metrics:
            _serve(watcher.metrics, args.metrics)
        if args.once:
            return _replay(watcher, follower)
        stop_on_signals(stop, hangup)
        try:
            return watcher.run(follower, stop, hangup=hangup, load=load)
        finally:
            watcher.close()


def _replay(watcher: Watcher, follower: Follower) -> int:
    """``--once``: every line there is, then a one-line account."""
    import time

    started = time.monotonic()
    watcher.start()
    try:
        while lines := follower.poll():
            for line in lines:
                watcher.feed(line)
        watcher.tick()
    finally:
        follower.close()
        watcher.close()
    seconds = max(time.monotonic() - started, 1e-9)
    counts = watcher.metrics.counters["postwarden_watch_findings_total"]
    print(f"{watcher.lines} lines in {seconds:.2f} s ({watcher.lines / seconds:,.0f} lines/s); "
          f"{int(sum(counts.values()))} findings; {watcher.bans.counts['bans']} "
          f"{'would-be ' if watcher.dry_run else ''}bans; "
          f"{len(watcher.bans.applied)} active", file=sys.stderr)
    return EXIT_OK


def _metrics(args: argparse.Namespace) -> int:
    """``logs metrics``: parse and count; no detectors, no bans."""
    import threading

    from postwarden.logs.metrics import Metrics
    from postwarden.logs.parse import Parser
    from postwarden.logs.watch import IDLE_SLEEP, stop_on_signals

    settings = _settings(args)
    # not the position file: that is the watcher's, which may run beside this exporter
    follower = _follower(args, settings, keep_position=False)
    metrics = Metrics()
    parser = Parser(year=args.year)
    _serve(metrics, args.listen)
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        while not stop.is_set():
            lines = follower.poll()
            for line in lines:
                metrics.line(parser.parse(line))
            if not lines:
                if args.once:
                    break
                stop.wait(IDLE_SLEEP)
    finally:
        follower.close()
    return EXIT_OK
