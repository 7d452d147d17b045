"""A synthetic Postfix (and Dovecot) mail log of any size, with its exact expected totals.

Security: everything written comes from a seeded ``random.Random``; nothing is read from
outside (see ``maillog_world`` for the address ranges and names used). The output file is
replaced atomically (temp file, fsync, rename), as is the truth file.
Standards: RFC 3164 (BSD syslog timestamp), Postfix postlogd(8) ``maillog_file`` lines, RFC
3339 and journalctl(1) ``short``, ``short-iso`` and ``json`` output; pflogsumm 1.1.5 (Debian
1.1.5-8) for what each total means (``maillog_truth``).

Theory of operation
-------------------
1. ``maillog_sessions`` renders whole sessions into a heap; ``lines`` starts sessions at
   random times and pops a line once no session that starts earlier is left to render, so
   lines leave in time order. Memory is the heap, not the log.
2. ``lines`` is exact: the writer stops after that many lines, and since each line's
   ``Fact`` is fed to the two ``maillog_truth.Counter``s as it is written, the ``Truth``
   covers exactly the file.
3. ``Renderer`` alone knows the timestamp formats; the sessions never see them, so every
   format carries the same lines.

Modules: ``maillog_world`` (options, names, addresses, queue ids), ``maillog_sessions``
(what happens), ``maillog_truth`` (what it must count to), ``pflogsumm`` (the reference).
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from postwarden.lab.maillog_sessions import Pending, Sessions
from postwarden.lab.maillog_truth import Counter, Truth, generic_command, pflogsumm_command
from postwarden.lab.maillog_world import (
    DEFAULT_START,
    FORMATS,
    NAME_SETS,
    QUEUE_ID_STYLES,
    Options,
    World,
)

__all__ = ["DEFAULT_START", "FORMATS", "NAME_SETS", "QUEUE_ID_STYLES", "Options", "Renderer",
           "Sink", "Truth", "generate", "lines", "main", "write_log", "write_truth"]

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
LINES_PER_SECOND = 12.0  # a busy small MX: 1M lines is about a day


class Renderer:
    """One log line in the chosen timestamp format (bytes, newline included)."""

    def __init__(self, options: Options) -> None:
        self._format = options.format
        self._host = options.hostname
        self._offset = options.utc_offset * 60
        sign = "+" if options.utc_offset >= 0 else "-"
        hours, minutes = divmod(abs(options.utc_offset), 60)
        self._zone = f"{sign}{hours:02d}:{minutes:02d}"
        self._second = -1
        self._stamp = ""

    def _prefix(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            tm = time.gmtime(second + self._offset)
            self._second = second
            if self._format in ("bsd", "postlog"):
                # postlogd (maillog_file) and journalctl -o short zero-pad the day.
                day = f"{tm.tm_mday:2d}" if self._format == "bsd" else f"{tm.tm_mday:02d}"
                self._stamp = (f"{MONTHS[tm.tm_mon - 1]} {day} "
                               f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}")
            else:
                self._stamp = (f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d}T"
                               f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}")
        if self._format == "rfc3339":
            return f"{self._stamp}.{int((when - second) * 1e6):06d}{self._zone}"
        if self._format == "short-iso":
            return self._stamp + self._zone.replace(":", "")
        return self._stamp

    def line(self, when: float, name: str, pid: int | None, message: str) -> bytes:
        if self._format == "journal-json":
            return self._journal(when, name, pid, message)
        tag = name if pid is None else f"{name}[{pid}]"
        text = f"{self._prefix(when)} {self._host} {tag}: {message}\n"
        return text.encode("utf-8", "surrogateescape")

    def _journal(self, when: float, name: str, pid: int | None, message: str) -> bytes:
        raw = message.encode("utf-8", "surrogateescape")
        try:
            text: object = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = list(raw)  # journalctl -o json: a field that is not UTF-8 is a byte array
        entry: dict[str, object] = {
            "__REALTIME_TIMESTAMP": str(int(when * 1e6)), "_HOSTNAME": self._host,
            "SYSLOG_IDENTIFIER": name, "PRIORITY": "6", "MESSAGE": text,
            "_SYSTEMD_UNIT": "dovecot.service" if name == "dovecot" else "postfix@-.service"}
        if pid is not None:
            entry["_PID"] = str(pid)
        return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


# -- writing -------------------------------------------------------------------------------

def _session_rate(sessions: Sessions) -> float:
    """Sessions per second for LINES_PER_SECOND, from the mix's mean lines per session."""
    mean_lines = (9, 10, 4, 6, 4, 5, 2)
    total = sum(sessions.weights)
    mean = sum(w * n for w, n in zip(sessions.weights, mean_lines, strict=True)) / total
    return LINES_PER_SECOND / mean


def lines(options: Options) -> Iterator[tuple[Pending, bytes]]:
    """The log, line by line in time order, each with what it means (theory point 1)."""
    world = World(random.Random(options.seed), options)  # noqa: S311 (test data, not secrets)
    sessions = Sessions(world, options)
    renderer = Renderer(options)
    rate = _session_rate(sessions)
    heap, rng = sessions.heap, world.rng
    next_start = options.start
    for _ in range(options.lines):
        while not heap or heap[0].time > next_start:
            sessions.start_one(next_start)
            next_start += rng.expovariate(rate)
        item = heapq.heappop(heap)
        yield item, renderer.line(item.time, item.name, item.pid, item.message)


class Sink(Protocol):
    """Where ``generate`` writes: a binary file, a GzipFile, a BytesIO."""

    def write(self, data: bytes, /) -> int: ...


def generate(stream: Sink, options: Options) -> Truth:
    """Write ``options.lines`` lines to ``stream``; return what they must summarise to."""
    generic = Counter(generic_command)
    classic = Counter(pflogsumm_command)
    chunk: list[bytes] = []
    count = 0
    for item, line in lines(options):
        chunk.append(line)
        count += 1
        if item.fact is not None:
            generic.feed(item.name, item.fact)
            classic.feed(item.name, item.fact)
        if len(chunk) >= 4096:
            stream.write(b"".join(chunk))
            chunk.clear()
    stream.write(b"".join(chunk))
    return Truth(lines=count, totals=generic.totals(), deferrals=generic.deferrals,
                 pflogsumm=classic.totals(), pflogsumm_deferrals=classic.deferrals)


def write_log(path: Path, options: Options, *, compress: bool | None = None) -> Truth:
    """Generate into ``path`` atomically; gzip when asked or when the name ends in ``.gz``."""
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            if compress:
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) as zipped:
                    truth = generate(zipped, options)
            else:
                truth = generate(raw, options)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return truth


def write_truth(path: Path, truth: Truth, options: Options) -> None:
    """The ground truth as JSON, atomically, with the options that made the log."""
    document = {**truth.as_json(), "options": asdict(options)}
    path = Path(path)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m postwarden.lab.maillog",
        description="Write a synthetic Postfix/Dovecot log and its expected pflogsumm totals.")
    parser.add_argument("out", type=Path, help="the log to write (.gz: gzip)")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--format", choices=FORMATS, default="bsd")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queue-ids", choices=QUEUE_ID_STYLES, default="short")
    parser.add_argument("--names", choices=NAME_SETS, default="all",
                        help="all: also submissions/ and postfix-out/ names pflogsumm drops")
    parser.add_argument("--utc-offset", type=int, default=60, help="minutes east of UTC")
    parser.add_argument("--population", type=int, default=0, metavar="N",
                        help="draw remote addresses and client IPs from N of each (0: no cap)")
    parser.add_argument("--gzip", action="store_true", help="compress whatever the name")
    parser.add_argument("--truth", type=Path, help="write the expected totals here (JSON)")
    args = parser.parse_args(argv)
    if args.lines < 0 or args.population < 0:
        parser.error("--lines and --population must be >= 0")
    options = Options(lines=args.lines, format=args.format, seed=args.seed,
                      queue_ids=args.queue_ids, names=args.names, utc_offset=args.utc_offset,
                      population=args.population)
    try:
        truth = write_log(args.out, options, compress=args.gzip or None)
        if args.truth:
            write_truth(args.truth, truth, options)
    except OSError as error:
        print(f"maillog: {error.filename or args.out}: {error.strerror}", file=sys.stderr)
        return 2
    print(json.dumps(truth.as_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
