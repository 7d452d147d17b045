"""One log line to one typed event: the parser every log job shares.

Security: lines are outside data. Bytes that are not UTF-8 are decoded with replacement
characters, never rejected; a line that fits no format or no pattern gives ``None``, never an
exception; journald JSON is read with ``json.loads`` (no object hooks) and a MESSAGE given as
a byte array is decoded the same way. Every regular expression is linear-time (see
patterns.py); free text is split with ``str`` methods.
Standards: RFC 3164 (BSD syslog timestamps, no year, local time), RFC 3339 (also with
journalctl's ``+0100`` offset without colon), journald JSON export (``journalctl -o json``),
Postfix ``maillog_file`` (postlogd: zero-padded day); patterns.py for the message wording.

Theory of operation:
1. The header is split with ``str.find`` only (``split_header``): the program ends at the
   first ": " after the stamp and starts after the last space before it; the stamp's shape
   is checked by two characters (a BSD ``hh:mm`` colon or the RFC 3339 ``T``); a line that
   starts with ``{`` is journald JSON. The timestamp, host and pid are read with the BSD/ISO
   expressions only when an event is built: most lines a summary reads never need them.
2. Each pattern has a literal guard (patterns.py). The first two characters of the message
   and the first three after its first ": " (the text after a queue id) form a key; per key
   the parser knows, once, whether any pattern can pass its guard (if not, the line is done
   before its syslog name is even looked at) and which patterns of a daemon can (``_Chain``).
3. The patterns are dispatched on the process name (the last component of the syslog name:
   ``postfix/submissions/smtpd`` and ``postfix-out/smtp`` both dispatch as ``smtpd`` and
   ``smtp``), then the candidates are tried in order with ``match`` at the start of the
   message: most lines meet one expression or none.
4. ``Parser.match`` returns the pattern, the match and the header; ``Parser.scan`` does the
   same over many lines and calls a handler per pattern name (the summary counts from the
   match groups without building events for its hot lines). ``Parser.parse`` builds the event
   (``BUILDERS``), which may be ``None`` for a line a pattern recognises but that reports
   nothing (a Dovecot ``no auth attempts`` disconnect, anvil statistics).
5. Years: BSD lines carry none. ``Parser`` starts from ``year`` (``--year``) or from a
   reference time (a file's mtime; now for stdin): the reference year, or the one before
   when the first line's month is later than the reference month. When the month then goes
   back by more than six (December to January), the year goes up by one.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postwarden.logs import events as ev
from postwarden.logs.parse_builders import (
    BUILDERS,
    REJECT_FROM,
    Origin,
    restriction_of,
    split_reply,
)
from postwarden.logs.patterns import PATTERNS, POSTFIX_ANY, Pattern

__all__ = ["REJECT_FROM", "Origin", "Parser", "parse", "restriction_of", "split_header",
           "split_reply"]

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# group numbers are used directly on the hot path
BSD = re.compile(r"([A-Z][a-z]{2}) {1,2}(\d{1,2}) (\d\d):(\d\d):(\d\d)(\.\d{1,9})? "
                 r"(\S+) ([^\s\[:]+)(?:\[(\d+)\])?: ")
ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?"
                 r"(Z|[+-]\d\d:?\d\d) (\S+) ([^\s\[:]+)(?:\[(\d+)\])?: ")
MAX_LINE = 65536  # longer lines are cut: Postfix itself cuts records near 2000 bytes
MAX_EPOCH = 253402300800.0  # 10000-01-01 UTC: a journald timestamp past it is damaged


@dataclass(frozen=True)
class Compiled:
    name: str
    regex: re.Pattern[str]
    pattern: Pattern
    guard: tuple[str, ...]
    after_qid: bool
    match: Callable[[str, int], re.Match[str] | None]


class JsonHead:
    """The header of a journald JSON entry (its MESSAGE is matched separately)."""

    __slots__ = ("host", "message", "pid", "service", "time")

    def __init__(self, time_: float, host: str, service: str, pid: int | None,
                 message: str) -> None:
        self.time = time_
        self.host = host
        self.service = service
        self.pid = pid
        self.message = message


# A syslog line's header is the line itself (str): its fields are taken again, with the
# BSD/ISO expressions, only when an event is built.
Head = str | JsonHead
Found = tuple["Compiled", re.Match[str], Head]
Handler = Callable[[re.Match[str], Head, Found], None]


class _Chain:
    """The patterns of one syslog name, in order, with a cache from the first two characters
    of the message and the first of the text after the queue id to the patterns whose guard
    can pass: most lines then meet one candidate or none instead of the whole list."""

    __slots__ = ("by_key", "patterns", "process")

    def __init__(self, process: str, patterns: tuple[Compiled, ...]) -> None:
        self.process = process
        self.patterns = patterns
        self.by_key: dict[str, tuple[Compiled, ...]] = {}

    def select(self, key: str) -> tuple[Compiled, ...]:
        chosen = tuple(c for c in self.patterns if can_pass(c, key))
        if len(self.by_key) < 16384:
            self.by_key[key] = chosen
        return chosen


def can_pass(c: Compiled, key: str) -> bool:
    """Whether a pattern's guard can pass for a line whose message starts with ``key[:2]``
    and whose text after the first ": " in it starts with ``key[2:]`` (up to 3 characters)."""
    if not c.guard:
        return True
    at = key[2:] if c.after_qid else key[:2]
    return any(g.startswith(at) or at.startswith(g) for g in c.guard)


def _compile(patterns: Sequence[Pattern]) -> dict[str, list[Compiled]]:
    table: dict[str, list[Compiled]] = {}
    for p in patterns:
        regex = re.compile(p.regex)
        c = Compiled(p.name, regex, p, p.guard, p.after_qid, regex.match)
        for program in p.programs:
            table.setdefault(program, []).append(c)
    return table


_DEFAULT_TABLE = _compile(PATTERNS)


def _is_postfix(service: str) -> bool:
    # "postfix", "postfix-out/smtp", "postfix/10025/smtpd", "mx/smtpd": a syslog_name prefix
    return service.startswith("postfix") or "/" in service


def split_header(line: str) -> tuple[str, int] | None:
    """(service, where the message starts) of a BSD or RFC 3339 syslog line, or None.

    Only ``str.find``: the program ends at the first ": " after the stamp (stamps and host
    names hold no ": "), and starts after the last space before it. The timestamp's shape is
    checked here, its value read only when an event is built (``Parser.origin``)."""
    pe = line.find(": ", 15)
    if pe < 0 or not (line[9:10] == ":" or line[8:9] == ":" or line[10:11] == "T"):
        return None
    ps = line.rfind(" ", 15, pe)
    if ps < 0:
        return None
    b = line.find("[", ps, pe)
    return line[ps + 1:pe if b < 0 else b], pe + 2


class Parser:
    """Parses a stream of lines: keeps the year of BSD timestamps across New Year.

    ``only``: the names of the patterns to try (the others are skipped as if absent)."""

    def __init__(self, *, year: int | None = None, now: float | None = None,
                 patterns: Sequence[Pattern] = PATTERNS,
                 only: Collection[str] | None = None) -> None:
        table = _DEFAULT_TABLE if patterns is PATTERNS else _compile(patterns)
        if only is not None:
            table = {k: [c for c in v if c.name in only] for k, v in table.items()}
        self._table = table
        self._by_service: dict[str, _Chain] = {}
        self._anywhere: dict[str, bool] = {}
        ref = time.localtime(time.time() if now is None else now)
        self._ref_month = ref.tm_mon
        self._year = year if year is not None else ref.tm_year
        self._year_fixed_start = year is not None
        self._last_month = 0
        self.first_bsd: tuple[int, int] | None = None   # (month, year) of the first BSD line
        self._hour_base: dict[tuple[int, int, int, int], float] = {}
        self._iso_base: dict[str, float] = {}

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, service: str) -> _Chain:
        found = self._by_service.get(service)
        if found is None:
            process = service.rpartition("/")[2]
            chain: list[Compiled] = []
            if service and not any(c.isspace() for c in service):
                if process.startswith(("postwarden", "python")) or service.startswith("postwarden"):
                    key = "postwarden"
                elif process.startswith("dovecot"):
                    key = "dovecot"
                else:
                    key = process
                chain = list(self._table.get(key, ()))
                if _is_postfix(service):
                    chain += [c for c in self._table.get(POSTFIX_ANY, ()) if c not in chain]
            found = _Chain(process, tuple(chain))
            if len(self._by_service) < 4096:  # bounded: syslog names are few
                self._by_service[service] = found
        return found

    def match(self, line: str) -> Found | None:
        """The first pattern matching the line's message, or None."""
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE]
        pos = line.find(": ", 15)
        text: str
        head: Head
        if pos > 0 and (line[9:10] == ":" or line[8:9] == ":" or line[10:11] == "T"):
            ps = line.rfind(" ", 15, pos)
            if ps < 0:
                return None
            b = line.find("[", ps, pos)
            service = line[ps + 1:pos if b < 0 else b]
            pos += 2
            text = head = line
        elif line[:1] == "{":
            jh = _json_head(line)
            if jh is None:
                return None
            service, text, pos, head = jh.service, jh.message, 0, jh
        else:
            return None
        chain = self._by_service.get(service)
        if chain is None:
            chain = self._dispatch(service)
        q = text.find(": ", pos) + 2
        key = text[pos:pos + 2] + text[q:q + 3]
        candidates = chain.by_key.get(key)
        if candidates is None:
            candidates = chain.select(key)
        for c in candidates:
            guard = c.guard
            if guard and not text.startswith(guard, q if c.after_qid else pos):
                continue
            m = c.regex.match(text, pos)
            if m is not None:
                return c, m, head
        return None

    def scan(self, lines: Iterable[str], handlers: Mapping[str, Handler]) -> tuple[int, int]:
        """``match`` over many lines, calling ``handlers[pattern name](match, head, found)``
        for each matching line: the same steps as ``match``, written out in one loop because
        this is where a summary spends its time. Returns (lines, matching lines)."""
        by_service = self._by_service
        anywhere = self._anywhere
        n = hit = 0
        for line in lines:
            n += 1
            pos = line.find(": ", 15)
            # a ": " from column 15 on: the line is long enough to index 8 to 10
            if pos < 0 or not (line[9] == ":" or line[8] == ":" or line[10] == "T"):
                if line[:1] == "{":
                    found = self.match(line)
                    if found is not None:
                        hit += 1
                        handlers[found[0].name](found[1], found[2], found)
                continue
            # before the syslog name is even looked at: can any pattern pass its guard?
            q = line.find(": ", pos + 2) + 2
            key = line[pos + 2:pos + 4] + line[q:q + 3]
            possible = anywhere.get(key)
            if possible is None:
                possible = self._possible(key)
            if not possible:
                continue
            # the syslog name: after the last space before the ": " (which must be at
            # column 15 or later), up to a "["
            ps = line.rfind(" ", 0, pos) + 1
            if ps <= 15:
                continue
            b = line.find("[", ps, pos)
            service = line[ps:pos if b < 0 else b]
            chain = by_service.get(service)
            if chain is None:
                chain = self._dispatch(service)
            candidates = chain.by_key.get(key)
            if candidates is None:
                candidates = chain.select(key)
            pos += 2
            for c in candidates:
                guard = c.guard
                if guard and not line.startswith(guard, q if c.after_qid else pos):
                    continue
                m = c.match(line, pos)
                if m is not None:
                    hit += 1
                    handlers[c.name](m, line, (c, m, line))
                    break
        return n, hit

    def _possible(self, key: str) -> bool:
        possible = any(can_pass(c, key) for chain in self._table.values() for c in chain)
        if len(self._anywhere) < 65536:
            self._anywhere[key] = possible
        return possible

    def parse(self, line: str | bytes) -> ev.Event | None:
        if isinstance(line, bytes):
            line = line.decode("utf-8", "replace")
        found = self.match(line)
        if found is None:
            return None
        return self.build(found)

    def build(self, found: Found) -> ev.Event | None:
        compiled, m, head = found
        origin = self.origin(head)
        if origin is None:
            return None
        return BUILDERS[compiled.name](origin, m)

    def build_untimed(self, found: Found) -> ev.Event | None:
        """``build`` without reading the time (the event's time is 0.0, its host "", its
        pid None): for counting, where they are not used. None where ``build`` gives None."""
        compiled, m, head = found
        if isinstance(head, JsonHead):
            return self.build(found)
        hm = BSD.match(head)
        if hm is not None:
            service = hm.group(8)
        else:
            hm = ISO.match(head)
            if hm is None:
                return None
            service = hm.group(10)
        origin = Origin(0.0, "", service, self._dispatch(service).process, None, (0, 0, 0), 0)
        return BUILDERS[compiled.name](origin, m)

    # -- time --------------------------------------------------------------------------------

    def origin(self, head: Head) -> Origin | None:
        if isinstance(head, JsonHead):
            lt = time.localtime(head.time)
            return Origin(head.time, head.host, head.service,
                          self._dispatch(head.service).process, head.pid,
                          (lt.tm_year, lt.tm_mon, lt.tm_mday), lt.tm_hour)
        hm = BSD.match(head)
        if hm is not None:
            g = hm.groups()
            mon, day, hour = MONTHS.get(g[0], 1), int(g[1]), int(g[2])
            year = self._bsd_year(mon)
            base = self._local_hour(year, mon, day, hour)
            t = base + int(g[3]) * 60 + int(g[4]) + (float(g[5]) if g[5] else 0.0)
            service, host, pid = g[7], g[6], g[8]
        else:
            hm = ISO.match(head)
            if hm is None:
                return None
            g = hm.groups()
            year, mon, day, hour = int(g[0]), int(g[1]), int(g[2]), int(g[3])
            t = self._iso_time(g) + (float(g[6]) if g[6] else 0.0)
            service, host, pid = g[9], g[8], g[10]
        return Origin(t, host, service, self._dispatch(service).process,
                      int(pid) if pid else None, (year, mon, day), hour)

    def day_hour(self, head: Head) -> tuple[tuple[int, int, int], int]:
        """The local date and hour as the line writes them (cheap: slices, no epoch)."""
        if isinstance(head, JsonHead):
            lt = time.localtime(head.time)
            return (lt.tm_year, lt.tm_mon, lt.tm_mday), lt.tm_hour
        try:
            if head[:1].isdigit():
                return (int(head[0:4]), int(head[5:7]), int(head[8:10])), int(head[11:13])
            t = head.find(":", 5)
            mon = MONTHS.get(head[:3], 1)
            return (self._bsd_year(mon), mon, int(head[4:t - 3])), int(head[t - 2:t])
        except ValueError:
            return (0, 0, 0), 0

    def _bsd_year(self, month: int) -> int:
        last = self._last_month
        if last == 0:
            if not self._year_fixed_start and month > self._ref_month:
                self._year -= 1
            self.first_bsd = (month, self._year)
        elif month < last - 6:
            self._year += 1      # December -> January
        self._last_month = month
        return self._year

    def bsd_year(self, month: int) -> int:
        """The year of a BSD line of this month, the next line in the stream."""
        return self._bsd_year(month)

    @property
    def year_state(self) -> tuple[int, int]:
        """(year, month) of the last BSD line seen (month 0: none yet)."""
        return self._year, self._last_month

    @year_state.setter
    def year_state(self, state: tuple[int, int]) -> None:
        self._year, self._last_month = state

    def _local_hour(self, year: int, mon: int, day: int, hour: int) -> float:
        key = (year, mon, day, hour)
        base = self._hour_base.get(key)
        if base is None:
            if len(self._hour_base) > 10000:
                self._hour_base.clear()
            try:
                base = time.mktime((year, mon, day, hour, 0, 0, 0, 0, -1))
            except (OverflowError, ValueError):
                base = 0.0
            self._hour_base[key] = base
        return base

    def _iso_time(self, g: Sequence[str | Any]) -> float:
        # seconds since the epoch of the whole-second stamp; cached per hour and offset
        key = f"{g[0]}{g[1]}{g[2]}{g[3]}{g[7]}"
        base = self._iso_base.get(key)
        if base is None:
            if len(self._iso_base) > 10000:
                self._iso_base.clear()
            base = _iso_hour_epoch(g)
            self._iso_base[key] = base
        return base + int(g[4]) * 60 + int(g[5])


def _iso_hour_epoch(g: Sequence[str | Any]) -> float:
    import calendar
    offset = str(g[7])
    secs = 0
    if offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        secs = sign * (int(digits[:2]) * 3600 + int(digits[2:4]) * 60)
    try:
        utc = calendar.timegm((int(g[0]), int(g[1]), int(g[2]), int(g[3]), 0, 0, 0, 0, 0))
    except (OverflowError, ValueError):
        return 0.0
    return float(utc - secs)


def _json_head(line: str) -> JsonHead | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    message = entry.get("MESSAGE")
    if isinstance(message, list):  # journald gives non-UTF-8 messages as byte arrays
        try:
            message = bytes(b & 0xFF for b in message if isinstance(b, int))
        except ValueError:
            return None
        message = message.decode("utf-8", "replace")
    if not isinstance(message, str):
        return None
    service = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or ""
    try:
        t = int(entry.get("__REALTIME_TIMESTAMP", "0")) / 1e6
    except (TypeError, ValueError, OverflowError):
        t = 0.0
    if not 0.0 <= t < MAX_EPOCH:     # time.localtime() cannot take it: as if absent
        t = 0.0
    pid_text = entry.get("SYSLOG_PID") or entry.get("_PID")
    pid = int(pid_text) if isinstance(pid_text, str) and pid_text.isdigit() else None
    host = entry.get("_HOSTNAME", "")
    return JsonHead(t, host if isinstance(host, str) else "",
                    service if isinstance(service, str) else "", pid, message[:MAX_LINE])


# -- the module-level function --------------------------------------------------------------

def parse(line: bytes | str, *, year: int | None = None,
          now: float | None = None) -> ev.Event | None:
    """The event of one line, or None. Pure: a BSD line's year is ``year``, else the year of
    ``now`` (default: the current time), or the one before when the line's month is later."""
    return Parser(year=year, now=now).parse(line)
