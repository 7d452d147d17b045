"""``logs summary`` on several cores: a plain log file cut into parts at line starts, each part
after the first counted by a forked worker, the parts merged into exactly the totals of one
pass.

Security: workers are forked children of the same process reading the same file; what they
hand back is written by this module to private temporary files (mode 0600, unlinked from
the start) as JSON and as a journal of NUL-separated fields, never pickled. A field holding NUL,
a worker that fails or exits, or a merge that cannot be exact makes the parent count that
part again itself: a worker can make a run slower, never different. Each worker's memory is
bounded as one pass's is (queue-id state capped by ``max_queue_ids``, tables by their caps);
the journal grows on disk, not in memory.
Standards: the counting rules are summary.py's (pflogsumm 1.1.5).

Theory of operation (why the merged totals equal one pass's):
1. Almost everything the summary counts depends on the line alone (received, rejected, the
   per-day rows, the security tables, recipients and their counts): those are added up.
2. What depends on earlier lines is the per-queue-id state: the client domain kept from
   ``client=`` until qmgr's ``size=`` line, the message size (for bytes delivered), and
   whether the message was already counted as deferred. A worker starts with no state, so
   it sorts the queue ids it meets: a queue id whose first line in its part is
   ``client=``/pickup is *new* (its state starts here, as in one pass, unless an earlier
   part left state for the same id: the merge checks that); a queue id first met on any
   other line is *carried*: its state-dependent steps (``size=``, the bytes of a delivery,
   the deferred-once test, the client domain) are written to the journal in order, not
   applied, until qmgr's ``removed``. Every ``removed`` is journalled too.
3. The parent counts the first part as one pass does, then merges each worker's part in
   order: tables and counters are added, the journal is replayed against the state the
   earlier parts left (a *new* id that finds state there means one pass would have counted
   differently: that part is counted again by the parent), and the worker's own queue-id
   state is added on top.
4. BSD stamps have no year: a worker guesses its first line's year as one pass guesses the
   first line's; the merge replays the year rule on that month with the state the earlier
   parts left and shifts the part's per-day rows by the difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from postwarden.logs.parse import Found, Head
from postwarden.logs.reader import range_blocks
from postwarden.logs.summary import MAX_QUEUE_IDS, Bounded, Security, Summary

MAX_CARRIED = 100_000    # queue ids a worker holds as carried at once (else it gives up)
NEW, RCVD, QUEUED, SENT, DEFERRED, REMOVED = "N", "C", "Q", "S", "D", "R"


class GiveUp(Exception):
    """A worker cannot make its part exactly mergeable (the parent counts it itself)."""


class PartSummary(Summary):
    """A summary of a part after the first: steps that need an earlier part's queue-id
    state go to ``journal`` (theory, step 2)."""

    def __init__(self, journal: IO[str], *, year: int | None = None, now: float | None = None,
                 pflogsumm_compat: bool = False, max_queue_ids: int = MAX_QUEUE_IDS) -> None:
        # the options spelled out: compiled (mypyc), super().__init__(**options) fails
        super().__init__(year=year, now=now, pflogsumm_compat=pflogsumm_compat,
                         max_queue_ids=max_queue_ids)
        self.journal = journal
        self._carried: set[str] = set()

    def _note(self, *fields: str) -> None:
        for field in fields:
            if "\0" in field:
                raise GiveUp("a NUL in a journalled field")
        self.journal.write("\0".join(fields) + "\n")

    def _is_carried(self, qid: str) -> bool:
        if qid in self._carried:
            return True
        if qid in self._rcvd or qid in self._sizes or qid in self._deferred:
            return False
        if len(self._carried) >= MAX_CARRIED:
            raise GiveUp("too many queue ids carried from earlier parts")
        self._carried.add(qid)
        return True

    def _received(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid = m.group("qid")
        self._start(qid)
        super()._received(m, head, found)
        if qid in self._carried:
            self._note(RCVD, qid, self._rcvd.pop(qid))

    def _pickup(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid = m.group("qid")
        self._start(qid)
        super()._pickup(m, head, found)
        if qid in self._carried:
            self._note(RCVD, qid, self._rcvd.pop(qid))

    def _start(self, qid: str) -> None:
        """``client=``/pickup: a queue id met here first is new (theory, step 2)."""
        if qid not in self._carried and qid not in self._rcvd and qid not in self._sizes \
                and qid not in self._deferred:
            self._note(NEW, qid)

    def queued(self, qid: str, sender: str, size_text: str) -> None:
        if self._is_carried(qid):
            self._note(QUEUED, qid, sender, size_text)
        else:
            super().queued(qid, sender, size_text)

    def _delivery(self, m: re.Match[str], head: Head, found: Found) -> None:
        qid, rcpt, status, rest = m.group("qid", "rcpt", "status", "rest")
        carried = status == "sent" and "forwarded as " not in rest and self._is_carried(qid)
        super()._delivery(m, head, found)
        if carried:
            # counted without its size (0 here): the merge adds the size it finds
            addr, dom = self._address(rcpt)
            self._note(SENT, qid, addr, dom)

    def deferred_once(self, qid: str) -> None:
        if self._is_carried(qid):
            self._note(DEFERRED, qid)
        else:
            super().deferred_once(qid)

    def removed(self, qid: str) -> None:
        # a queue id that started here (NEW, checked at the merge) has no earlier state to
        # clear; any other may have
        if qid in self._carried or not (qid in self._rcvd or qid in self._sizes
                                        or qid in self._deferred):
            self._note(REMOVED, qid)
        self._carried.discard(qid)
        super().removed(qid)

    # -- what the parent merges -----------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        s = self.sec
        return {
            "t": self.t, "deferrals": self.deferrals, "lines": self.lines,
            "matched": self.matched, "senders": self.senders,
            "sending_domains": self.sending_domains, "recipients": self.recipients,
            "recipient_domains": self.recipient_domains,
            "per_day": [[*day, row] for day, row in self.per_day.items()],
            "per_hour": self.per_hour,
            "sec": {name: ({"counts": value.counts, "dropped": value.dropped}
                           if isinstance(value, Bounded) else value)
                    for name, value in _fields(s)},
            "sizes": self._sizes, "rcvd": self._rcvd, "deferred": list(self._deferred),
            "first_bsd": self.parser.first_bsd, "year_state": self.parser.year_state,
        }


def _fields(sec: Security) -> list[tuple[str, Any]]:
    # dataclasses.fields, not vars(): a compiled (mypyc) Security has no __dict__
    return [(f.name, getattr(sec, f.name)) for f in dataclasses.fields(sec)]


# -- the parent's side -------------------------------------------------------------------------

@dataclass
class Worker:
    pid: int
    start: int
    end: int
    journal: IO[str]
    state: IO[str]


Blocks = Callable[[Iterator[list[str]]], Iterator[list[str]]]


def summarise(path: str, ranges: list[tuple[int, int]], options: dict[str, Any],
              blocks: Blocks = iter, recounted: list[int] | None = None) -> Summary:
    """Count ``path`` cut into ``ranges`` (``reader.split_points``): the first by this
    process (its blocks through ``blocks``, e.g. a progress bar), the others by forked
    workers, merged in order. ``options``: Summary's keyword arguments; ``recounted``
    collects the index of each part this process had to count again itself."""
    workers = [_fork(path, start, end, options) for start, end in ranges[1:]]
    summary = Summary(**options)
    try:
        with without_collector():
            for block in blocks(range_blocks(path, *ranges[0])):
                summary.feed(block)
            for i, worker in enumerate(workers, 1):
                if not _merge_or_count(summary, worker, path) and recounted is not None:
                    recounted.append(i)
    except BaseException:
        for worker in workers:      # an error or ^C here: the workers' parts are not needed
            if worker.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        raise
    finally:
        for worker in workers:
            _reap(worker)
    return summary


@contextlib.contextmanager
def without_collector() -> Iterator[None]:
    """The cyclic garbage collector paused: a summary makes no reference cycles, so the
    collector would only walk its growing tables again and again (5-10% of the time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _fork(path: str, start: int, end: int, options: dict[str, Any]) -> Worker:
    # private (0600) and already unlinked; closed by _reap
    journal = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    state = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
    pid = os.fork()
    if pid == 0:
        # the worker: count, write, leave without running the parent's exit code; on any
        # exception (GiveUp included) it exits 1 and the parent counts the part itself
        code = 1
        gc.disable()
        try:
            part = PartSummary(journal, **options)
            for block in range_blocks(path, start, end):
                part.feed(block)
            journal.flush()
            json.dump(part.to_state(), state)
            state.flush()
            code = 0
        finally:
            os._exit(code)
    return Worker(pid, start, end, journal, state)


def _reap(worker: Worker) -> None:
    if worker.pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)
        worker.pid = 0
    worker.journal.close()
    worker.state.close()


def _merge_or_count(summary: Summary, worker: Worker, path: str) -> bool:
    """Merge a worker's part; count it here when the worker failed or the merge could not
    be exact (returns False then)."""
    _, status = os.waitpid(worker.pid, 0)
    worker.pid = 0
    if os.waitstatus_to_exitcode(status) == 0:
        worker.state.seek(0)
        state = json.load(worker.state)
        if exact(summary, _journal(worker.journal)):
            merge(summary, state, _journal(worker.journal))
            return True
    for block in range_blocks(path, worker.start, worker.end):
        summary.feed(block)
    return False


def _journal(f: IO[str]) -> Iterator[list[str]]:
    f.seek(0)
    for line in f:
        yield line[:-1].split("\0")


# -- the merge ---------------------------------------------------------------------------------

SET_TOTALS = ("senders", "sending_hosts", "recipients", "recipient_hosts")


def exact(summary: Summary, journal: Iterator[list[str]]) -> bool:
    """Whether replaying the journal on the state the earlier parts left gives one pass's
    counts: no queue id the worker took as new has a size or a deferral there."""
    has_state: dict[str, bool] = {}
    for kind, qid, *_ in journal:
        if kind == NEW:
            known = has_state.get(qid)
            if known is None:
                known = qid in summary._sizes or qid in summary._deferred
            if known:
                return False
        elif kind in (QUEUED, DEFERRED):
            has_state[qid] = True
        elif kind == REMOVED:
            has_state[qid] = False
    return True


def merge(summary: Summary, state: dict[str, Any], journal: Iterator[list[str]]) -> None:
    """Add a worker's part to the summary of the parts before it (theory, step 3)."""
    for key, value in state["t"].items():
        if key not in SET_TOTALS:
            summary.t[key] += value
    summary.deferrals += state["deferrals"]
    summary.lines += state["lines"]
    summary.matched += state["matched"]
    for name in ("senders", "sending_domains", "recipients"):
        _add_rows(getattr(summary, name), state[name])
    _add_domains(summary.recipient_domains, state["recipient_domains"])
    _add_days(summary, state)
    for mine, theirs in zip(summary.per_hour, state["per_hour"], strict=True):
        for i, n in enumerate(theirs):
            mine[i] += n
    _add_security(summary.sec, state["sec"])
    for fields in journal:
        _replay(summary, fields)
    summary._sizes.update(state["sizes"])
    summary._rcvd.update(state["rcvd"])
    summary._deferred.update(dict.fromkeys(state["deferred"]))
    t = summary.t
    t["senders"] = len(summary.senders)
    t["sending_hosts"] = len(summary.sending_domains)
    t["recipients"] = len(summary.recipients)
    t["recipient_hosts"] = sum(1 for row in summary.recipient_domains.values() if row[0])


def _replay(summary: Summary, fields: list[str]) -> None:
    kind, qid = fields[0], fields[1]
    if kind == NEW:
        summary._rcvd.pop(qid, None)       # one pass: client= overwrites it
    elif kind == RCVD:
        summary._rcvd[qid] = fields[2]
    elif kind == QUEUED:
        summary.queued(qid, fields[2], fields[3])
    elif kind == SENT:
        size = summary._sizes.get(qid, 0)
        if size:
            summary.t["bytes_delivered"] += size
            summary.recipients[fields[2]][1] += size
            summary.recipient_domains[fields[3]][1] += size
    elif kind == DEFERRED:
        summary.deferred_once(qid)
    elif kind == REMOVED:
        summary.removed(qid)


def _add_rows(mine: dict[str, list[int]], theirs: dict[str, list[int]]) -> None:
    for key, (count, size) in theirs.items():
        row = mine.get(key)
        if row is None:
            mine[key] = [count, size]
        else:
            row[0] += count
            row[1] += size


def _add_domains(mine: dict[str, list[float]], theirs: dict[str, list[float]]) -> None:
    for key, other in theirs.items():
        row = mine.get(key)
        if row is None:
            mine[key] = list(other)
            continue
        for i in range(4):
            row[i] += other[i]
        if not row[4] or other[4] > row[4]:
            row[4] = other[4]


def _add_days(summary: Summary, state: dict[str, Any]) -> None:
    """The part's per-day rows, its BSD years corrected (theory, step 4)."""
    shift = 0
    if state["first_bsd"] is not None:
        month, guessed = state["first_bsd"]
        shift = summary.parser.bsd_year(month) - guessed
        year, last_month = state["year_state"]
        summary.parser.year_state = (year + shift, last_month)
    for year, month, day, other in state["per_day"]:
        row = summary.per_day.setdefault((year + shift, month, day), [0, 0, 0, 0, 0])
        for i, n in enumerate(other):
            row[i] += n


def _add_security(sec: Security, theirs: dict[str, Any]) -> None:
    for name, other in theirs.items():
        mine = getattr(sec, name)
        if isinstance(mine, Bounded):
            for key, n in other["counts"].items():
                mine.add(key, n)
            mine.dropped += other["dropped"]
        else:
            setattr(sec, name, mine + other)
