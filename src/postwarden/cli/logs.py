"""``logs summary|watch|metrics|test-pattern``: one log parser for every log job.

Security: log lines are outside data; they go through ``postwarden.logs.parse`` only.
Standards: pflogsumm's totals; Prometheus text exposition format.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from postwarden.cli import logs_bans, logs_watch
from postwarden.cli.common import EXIT_OK, Parser, Subparsers
from postwarden.errors import UsageError

if TYPE_CHECKING:
    from postwarden.logs.reader import Source

PROGRESS_BYTES = 64 << 20   # a progress bar for input larger than this, on a terminal
PARALLEL_BYTES = 16 << 20   # a plain file larger than this is split across processes
MAX_JOBS = 8
# the parent's part is larger by this factor: a worker also writes its state, which the
# parent reads and merges while the other workers may still run
FIRST_SHARE = 1.15


def add(commands: Subparsers) -> None:
    lg = commands.add_parser("logs", help="summarise, watch and export Postfix and Dovecot logs")
    actions = lg.add_subparsers(dest="logs_command", metavar="ACTION", parser_class=Parser,
                                required=True)
    _add_summary(actions)
    _add_test_pattern(actions)
    logs_watch.add(actions)
    logs_bans.add(actions)


def _year(text: str) -> int:
    try:
        year = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a year: {text!r}") from None
    if not 1970 <= year <= 9999:
        raise argparse.ArgumentTypeError(f"year out of range: {year}")
    return year


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _add_summary(actions: Subparsers) -> None:
    p = actions.add_parser(
        "summary", help="pflogsumm's report with the same totals, plus a security section",
        description="Summarise Postfix (and Dovecot) logs: pflogsumm's Grand Totals counted "
                    "the way pflogsumm counts them, traffic tables, and SASL, relay, reject, "
                    "TLS, postscreen and postwarden decision tables. FILEs may be plain, "
                    "gzip, bzip2 or xz, and are read oldest first; '-' is standard input. "
                    "See docs/logs.md.")
    p.add_argument("files", nargs="*", metavar="FILE", help="log files (default: stdin)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--year", type=_year,
                   help="year of the first BSD-syslog line (default: from the file's mtime)")
    p.add_argument("--top", type=_positive, default=10, metavar="N",
                   help="rows in each table (default 10)")
    p.add_argument("--jobs", type=_positive, metavar="N",
                   help="processes for one large plain file (default: one per CPU; 1: no "
                        "workers); compressed files and stdin are read by one process")
    p.add_argument("--pflogsumm-compat", action="store_true",
                   help="count only the lines pflogsumm 1.1.5 sees (its syslog names and "
                        "timestamp formats), for side-by-side comparisons")
    p.set_defaults(handler=_summary)


def _add_test_pattern(actions: Subparsers) -> None:
    p = actions.add_parser(
        "test-pattern", help="show which pattern matches each line, and which lines none does",
        description="Run every log pattern over FILE (like fail2ban-regex): counts per "
                    "pattern and event type, and the lines no pattern matched.")
    p.add_argument("file", metavar="FILE", help="log file ('-' for stdin)")
    p.add_argument("--show", choices=("unmatched", "matched", "all", "none"),
                   default="unmatched", help="which lines to list (default: unmatched)")
    p.add_argument("--max", type=_positive, default=50, metavar="N", dest="limit",
                   help="list at most N lines (default 50, at most 1000)")
    p.add_argument("--year", type=_year, help="year of the first BSD-syslog line")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(handler=_test_pattern)


def _write(text: str) -> None:
    """Print a report; a reader that went away (``| head``) is not an error."""
    import os

    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _blocks_with_progress(reader: object) -> Iterator[list[str]]:
    from postwarden.logs.reader import LineReader

    assert isinstance(reader, LineReader)
    total = reader.total
    if not (sys.stderr.isatty() and total > PROGRESS_BYTES):
        yield from reader.blocks()
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task("reading", total=total)
        for block in reader.blocks():
            yield block
            progress.update(task, completed=reader.position, description=reader.current)


def _parallel_ranges(sources: Sequence[Source], jobs: int | None) -> list[tuple[int, int]]:
    """The byte ranges of one plain file large enough to split (else [])."""
    from postwarden.logs.reader import plain_file, split_points

    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    big = len(sources) == 1 and sources[0].size >= PARALLEL_BYTES
    source = plain_file(sources) if big and jobs >= 2 and hasattr(os, "fork") else None
    if source is None:
        return []
    return split_points(source.name, source.size, min(jobs, MAX_JOBS), first=FIRST_SHARE)


def _progress(blocks: Iterator[list[str]], total: int, name: str) -> Iterator[list[str]]:
    """A progress bar over this process's own part (the workers' run alongside)."""
    if not (sys.stderr.isatty() and total > PROGRESS_BYTES // 2):
        yield from blocks
        return
    from rich.progress import BarColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        task = progress.add_task(name, total=total)
        for block in blocks:
            yield block
            progress.advance(task, sum(len(line) for line in block))


def _summary(args: argparse.Namespace) -> int:
    from postwarden.logs.reader import read_lines, reference_time
    from postwarden.logs.summary import Summary
    from postwarden.logs.summary_report import render

    if args.files.count("-") > 1:
        raise UsageError("logs summary: '-' (standard input) can be given once")
    reader = read_lines(args.files)
    options = {"year": args.year, "now": reference_time(reader.sources),
               "pflogsumm_compat": args.pflogsumm_compat}
    ranges = _parallel_ranges(reader.sources, args.jobs)
    if ranges:
        from postwarden.logs.summary_parallel import summarise

        def progress(blocks: Iterator[list[str]]) -> Iterator[list[str]]:
            return _progress(blocks, ranges[0][1], reader.sources[0].name)

        summary = summarise(reader.sources[0].name, ranges, options, progress)
    else:
        from postwarden.logs.summary_parallel import without_collector

        summary = Summary(**options)
        with without_collector():
            for block in _blocks_with_progress(reader):
                summary.feed(block)
    if args.format == "json":
        _write(json.dumps(summary.to_json(args.top), indent=2, ensure_ascii=True) + "\n")
    else:
        _write(render(summary, args.top))
    return EXIT_OK


def _test_pattern(args: argparse.Namespace) -> int:
    from postwarden.logs.parse import Parser as LogParser
    from postwarden.logs.parse_report import check
    from postwarden.logs.reader import read_lines, reference_time
    from postwarden.logs.summary_report import shown

    reader = read_lines([args.file])
    parser = LogParser(year=args.year, now=reference_time(reader.sources))
    show = "unmatched" if args.show is None else args.show
    report = check(reader, parser, show=show, limit=args.limit)
    if args.format == "json":
        _write(json.dumps(report.to_json(), indent=2, ensure_ascii=True) + "\n")
        return EXIT_OK
    out = [f"Lines: {report.lines}, matched: {report.matched}, no pattern: "
           f"{report.unmatched}", "", "Patterns (lines with an event / recognised, no event):"]
    names = sorted(set(report.events) | set(report.ignored))
    out += [f"  {report.events[n]:8d} {report.ignored[n]:8d}  {n}" for n in names]
    out += ["", "Events:"] + [f"  {c:8d}  {t}" for t, c in sorted(report.types.items())]
    if report.shown:
        out += ["", f"Lines ({show}, at most {args.limit}):"]
        out += [f"  {n}: [{p or 'no pattern'}] {shown(t)}" for n, p, t in report.shown]
    _write("\n".join(out) + "\n")
    return EXIT_OK
