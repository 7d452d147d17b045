"""logs summary on several processes: the merged report equals one pass's, whatever the cut
points, and a part that cannot be merged exactly is counted again by the parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from postwarden.lab import maillog
from postwarden.lab.maillog import Options
from postwarden.logs import summary_parallel
from postwarden.logs.reader import range_blocks, read_lines, reference_time, split_points
from postwarden.logs.summary import Summary
from postwarden.logs.summary_parallel import PartSummary, Worker, summarise


def one_pass(path: Path, **options: Any) -> Summary:
    s = Summary(**options)
    for block in read_lines([str(path)]).blocks():
        s.feed(block)
    return s


def in_parts(path: Path, parts: int, recounted: list[int] | None = None,
             **options: Any) -> Summary:
    ranges = split_points(str(path), path.stat().st_size, parts)
    return summarise(str(path), ranges, options, recounted=recounted)


def cut_after(path: Path, marker: str) -> list[tuple[int, int]]:
    """Two ranges: up to and including the line holding ``marker``, and the rest."""
    data = path.read_bytes()
    cut = data.index(b"\n", data.index(marker.encode())) + 1
    return [(0, cut), (cut, len(data))]


@pytest.mark.parametrize(("log_format", "queue_ids", "parts"), [
    ("bsd", "short", 2),
    ("bsd", "long", 3),
    ("rfc3339", "short", 8),
    ("short-iso", "long", 2),
    ("postlog", "short", 5),
    ("journal-json", "short", 3),
])
def test_parts_give_one_pass_report(tmp_path: Path, log_format: str, queue_ids: str,
                                    parts: int) -> None:
    path = tmp_path / "mail.log"
    truth = maillog.write_log(path, Options(lines=20_000, seed=5, format=log_format,
                                            queue_ids=queue_ids))
    options = {"now": reference_time(read_lines([str(path)]).sources)}
    recounted: list[int] = []
    merged = in_parts(path, parts, recounted, **options)
    assert recounted == []          # the journal replay did the work, not a recount
    assert merged.to_json(100) == one_pass(path, **options).to_json(100)
    assert merged.totals() == truth.totals.as_dict()


def test_many_small_parts_carry_queue_state_across(tmp_path: Path) -> None:
    """Cuts every ~100 lines: most messages start in one part and end in another."""
    path = tmp_path / "mail.log"
    truth = maillog.write_log(path, Options(lines=6000, seed=9))
    merged = in_parts(path, 60, year=2026)
    assert merged.to_json(100) == one_pass(path, year=2026).to_json(100)
    assert merged.totals() == truth.totals.as_dict()


def test_pflogsumm_compat_in_parts(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    maillog.write_log(path, Options(lines=8000, seed=2, names="all"))
    merged = in_parts(path, 4, year=2026, pflogsumm_compat=True)
    assert merged.to_json(50) == one_pass(path, year=2026, pflogsumm_compat=True).to_json(50)


LOG = """\
Mar  4 09:00:00 mx1 postfix/smtpd[10]: 3F1A2B4C5D: client=mail.example.org[192.0.2.25]
Mar  4 09:00:01 mx1 postfix/qmgr[9]: 3F1A2B4C5D: from=<a@example.org>, size=100, nrcpt=1 \
(queue active)
Mar  4 09:00:02 mx1 postfix/smtp[11]: 3F1A2B4C5D: to=<b@example.net>, relay=mx.example.net\
[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=4.0.0, status=deferred (try later)
Mar  4 10:00:00 mx1 postfix/smtpd[12]: 3F1A2B4C5D: client=other.example.com[192.0.2.26]
Mar  4 10:00:01 mx1 postfix/qmgr[9]: 3F1A2B4C5D: from=<c@example.com>, size=5000, nrcpt=1 \
(queue active)
Mar  4 10:00:02 mx1 postfix/smtp[11]: 3F1A2B4C5D: to=<d@example.net>, relay=mx.example.net\
[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)
Mar  4 10:00:03 mx1 postfix/qmgr[9]: 3F1A2B4C5D: removed
"""


def test_reused_queue_id_without_removed_is_counted_again(tmp_path: Path) -> None:
    """The id comes back (no 'removed' seen): one pass keeps the old size and deferral;
    the worker took it as new, so the parent counts that part itself."""
    path = tmp_path / "mail.log"
    path.write_text(LOG)
    recounted: list[int] = []
    merged = summarise(str(path), cut_after(path, "status=deferred"), {"year": 2026},
                       recounted=recounted)
    assert recounted == [1]
    single = one_pass(path, year=2026)
    assert merged.to_json() == single.to_json()
    assert single.t["bytes_delivered"] == 100 and single.t["deferred"] == 1


def test_state_carried_into_a_part_is_replayed(tmp_path: Path) -> None:
    """Size and deferral from the first part, delivery and removal in the second."""
    path = tmp_path / "mail.log"
    lines = LOG.splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[5:]))
    recounted: list[int] = []
    merged = summarise(str(path), cut_after(path, "size=100"), {"year": 2026},
                       recounted=recounted)
    assert recounted == []
    assert merged.to_json() == one_pass(path, year=2026).to_json()
    assert merged.t["bytes_delivered"] == 100 and merged.t["deferred"] == 1


def test_a_nul_in_a_journalled_field_makes_the_worker_give_up(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    lines = LOG.splitlines(keepends=True)
    poisoned = lines[1].replace("a@example", "a\0@example")
    path.write_text("".join([lines[0], poisoned, lines[2], *lines[5:]]))
    recounted: list[int] = []
    merged = summarise(str(path), cut_after(path, "client=mail"), {"year": 2026},
                       recounted=recounted)
    assert recounted == [1]
    assert merged.to_json() == one_pass(path, year=2026).to_json()


def test_a_failed_worker_is_counted_by_the_parent(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    path.write_text(LOG)
    ranges = cut_after(path, "status=deferred")
    summary = Summary(year=2026)
    for block in range_blocks(str(path), *ranges[0]):
        summary.feed(block)
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    with open(os.devnull, "w+") as journal, open(os.devnull, "w+") as state:
        worker = Worker(pid, *ranges[1], journal, state)
        assert not summary_parallel._merge_or_count(summary, worker, str(path))
    assert summary.to_json() == one_pass(path, year=2026).to_json()


def test_bsd_years_across_new_year_with_a_forced_year(tmp_path: Path) -> None:
    """The second part starts in January: its worker guessed the forced year, the merge
    moves its rows to the next one, as one pass does."""
    path = tmp_path / "mail.log"
    december = LOG.replace("Mar  4", "Dec 31")
    january = LOG.replace("Mar  4", "Jan  1").replace("3F1A2B4C5D", "4F1A2B4C5D")
    path.write_text(december + january)
    ranges = cut_after(path, "Dec 31 10:00:03")
    merged = summarise(str(path), ranges, {"year": 2025})
    single = one_pass(path, year=2025)
    assert merged.to_json() == single.to_json()
    assert [d["date"] for d in single.to_json()["per_day"]] == ["2025-12-31", "2026-01-01"]


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_ranges_read_like_the_reader(tmp_path: Path, parts: int) -> None:
    path = tmp_path / "odd.log"
    path.write_bytes(b"one\r\ntwo\rthree\n\xff\xfe bytes\r\n" * 3000 + b"no newline\r")
    ranges = split_points(str(path), path.stat().st_size, parts)
    assert [r[0] for r in ranges[1:]] == [r[1] for r in ranges[:-1]]
    got = [line for r in ranges for block in range_blocks(str(path), *r) for line in block]
    assert got == list(read_lines([str(path)]))


def test_part_summary_journals_only_what_needs_earlier_state(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w+") as journal:
        part = PartSummary(journal, year=2026)
        part.feed(LOG.splitlines(keepends=True)[1:])
        journal.flush()
        journal.seek(0)
        kinds = [line.split("\0")[0] for line in journal]
    # carried: size, deferral, then the id's new message (client=) after no removal
    assert kinds == ["Q", "D", "C", "Q", "S", "R"]


def test_cli_jobs_give_the_same_json(tmp_path: Path) -> None:
    path = tmp_path / "mail.log"
    maillog.write_log(path, Options(lines=125_000, seed=4, names="classic"))
    assert path.stat().st_size > 16 << 20        # above the CLI's threshold for workers
    outputs = []
    for jobs in ("1", "2", "3"):
        done = subprocess.run([sys.executable, "-m", "postwarden", "logs", "summary",
                               "--format", "json", "--jobs", jobs, str(path)],
                              capture_output=True, text=True, check=True, timeout=300)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
