"""Following a file through rotation, truncation and absence; the journal child process."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from postwarden.logs.follow import FileFollower, JournalFollower


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines))


def drain(follower: FileFollower | JournalFollower, rounds: int = 3) -> list[str]:
    out: list[str] = []
    for _ in range(rounds):
        out += [line.decode() for line in follower.poll()]
    return out


def test_starts_at_the_end_then_follows(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    append(log, "old 1", "old 2")
    f = FileFollower(log)
    assert drain(f) == []
    append(log, "new 1")
    with open(log, "a") as handle:
        handle.write("new 2 half")                 # no newline yet: not a line
    assert drain(f) == ["new 1"]
    append(log, " done")
    assert drain(f) == ["new 2 half done"]


def test_from_start(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    append(log, "a", "b")
    assert drain(FileFollower(log, from_start=True)) == ["a", "b"]


def test_rotation_by_rename(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    append(log, "before")
    f = FileFollower(log)
    append(log, "last of old")
    os.rename(log, tmp_path / "mail.log.1")
    append(tmp_path / "mail.log.1", "written after the rename")  # the writer's old fd
    assert drain(f) == ["last of old", "written after the rename"]
    append(log, "first of new")                    # the new file appears
    assert drain(f) == ["first of new"]
    assert f.rotations == 1


def test_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    append(log, "x" * 100, "y" * 100)
    f = FileFollower(log)
    (tmp_path / "mail.log.1").write_bytes(log.read_bytes())
    with open(log, "r+") as handle:
        handle.truncate(0)
    append(log, "after truncate")
    assert drain(f) == ["after truncate"]
    assert f.truncations == 1


def test_truncated_and_regrown_past_the_position(tmp_path: Path) -> None:
    """copytruncate, then more written than was read before we looked: noticed by the
    changed first bytes, not by the size."""
    log = tmp_path / "mail.log"
    append(log, "first line of the old file")
    f = FileFollower(log, from_start=True)
    assert drain(f) == ["first line of the old file"]
    with open(log, "r+") as handle:
        handle.truncate(0)
    append(log, "NEW first line, longer than the old one was", "NEW second")
    assert drain(f) == ["NEW first line, longer than the old one was", "NEW second"]


def test_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    f = FileFollower(log)
    assert drain(f) == []
    append(log, "hello")                           # created after we started: read it all
    assert drain(f) == ["hello"]


def test_overlong_lines_are_cut(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = FileFollower(log, max_line=10, chunk=4)
    append(log, "a" * 25, "short")
    assert drain(f, rounds=20) == ["a" * 10, "short"]


def test_not_utf8_bytes_pass_through(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    f = FileFollower(log)
    with open(log, "ab") as handle:
        handle.write(b"caf\xe9 \xff\n")
    assert f.poll() == [b"caf\xe9 \xff"]


def fake_journalctl(tmp_path: Path) -> Path:
    """A stand-in journalctl: prints its arguments and two JSON entries, then exits
    (so the follower must restart it from the cursor)."""
    script = tmp_path / "journalctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "after = [a for a in args if a.startswith('--after-cursor=')]\n"
        "start = int(after[0].split('=')[1]) + 1 if after else 0\n"
        "for n in range(start, start + 2):\n"
        "    print(json.dumps({'__CURSOR': str(n), 'MESSAGE': f'entry {n}', "
        "'ARGS': ' '.join(args)}), flush=True)\n")
    script.chmod(0o755)
    return script


def test_journal_restarts_from_its_cursor(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import postwarden.logs.follow as follow

    monkeypatch.setattr(follow, "RESTART_PAUSE", 0.0)
    f = JournalFollower(str(fake_journalctl(tmp_path)), ["SYSLOG_FACILITY=2"])
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while len(seen) < 4 and time.monotonic() < deadline:
        seen += [line.decode() for line in f.poll()]
        time.sleep(0.01)
    f.close()
    entries = [json.loads(line) for line in seen]
    assert [e["MESSAGE"] for e in entries] == ["entry 0", "entry 1", "entry 2", "entry 3"]
    assert "--lines=0" in entries[0]["ARGS"] and "SYSLOG_FACILITY=2" in entries[0]["ARGS"]
    assert "--after-cursor=1" in entries[2]["ARGS"]
    assert f.restarts == 1


def test_bookmark_resumes_where_the_last_run_stopped(tmp_path: Path) -> None:
    """Lines written while the watcher was down are read at its next start, from the
    last complete line on; a partial line is read whole."""
    log, mark = tmp_path / "mail.log", tmp_path / "watch.position"
    append(log, "old")
    first = FileFollower(log, bookmark=mark)
    append(log, "seen 1")
    with open(log, "a") as handle:
        handle.write("half")
    assert drain(first) == ["seen 1"]
    first.checkpoint()
    first.close()
    assert oct(mark.stat().st_mode & 0o777) == "0o600"
    append(log, " done", "while down")
    second = FileFollower(log, bookmark=mark)
    assert drain(second) == ["half done", "while down"]


def test_bookmark_of_another_file_is_ignored(tmp_path: Path) -> None:
    """After a rotation (another inode) or a rewrite (other first bytes), or with a
    damaged bookmark, reading starts at the end as without one."""
    log, mark = tmp_path / "mail.log", tmp_path / "watch.position"
    append(log, "a")
    f = FileFollower(log, bookmark=mark)
    f.checkpoint()
    f.close()
    log.rename(tmp_path / "mail.log.1")
    append(log, "b", "c")
    assert drain(FileFollower(log, bookmark=mark)) == []
    log.write_text("x\n" * 3)                    # same inode, other first bytes
    f = FileFollower(log, bookmark=mark)
    f.checkpoint()
    f.close()
    log.write_text("y\n" * 5)
    assert drain(FileFollower(log, bookmark=mark)) == []
    mark.write_text("{not json")
    assert drain(FileFollower(log, bookmark=mark)) == []


# -- the journal's position across restarts (follow.py theory point 6) -------------------

JOURNAL = """\
import json, sys, time
args = sys.argv[1:]
def called():
    with open(sys.argv[0] + ".calls", "a") as calls:
        calls.write(" ".join(args) + "\\n")
def load():
    with open(sys.argv[0] + ".entries") as handle:
        return [json.loads(line) for line in handle]
def value(name):
    found = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return found[0] if found else None
entries, after, since = load(), value("--after-cursor"), value("--since")
if after is not None:
    at = [i for i, e in enumerate(entries) if e["__CURSOR"] == after]
    if not at:
        called()
        print("Failed to seek to cursor: Invalid argument", file=sys.stderr)
        sys.exit(1)
    printed = at[0] + 1
elif since is not None:
    printed = len([e for e in entries if int(e["t"]) < int(since[1:])])
elif value("--lines") is not None:
    printed = len(entries) - int(value("--lines"))
else:
    printed = 0
called()   # positioned: what is added from now on is printed
while True:
    for entry in entries[printed:]:
        print(json.dumps(entry), flush=True)
    printed = len(entries)
    if "--follow" not in args:
        break
    time.sleep(0.05)
    entries = load()
"""


class FakeJournal:
    """A stand-in journalctl over a list of entries that grows (``add``); cursors look
    like journald's (``s=...;i=N;t=HEX``); a cursor it does not know is refused."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "journalctl"
        self.path.write_text(f"#!{sys.executable}\n" + JOURNAL)
        self.path.chmod(0o755)
        self.entries = Path(f"{self.path}.entries")
        self.entries.write_text("")
        self.count = 0

    def add(self, *messages: str, when: float | None = None) -> None:
        import json

        with open(self.entries, "a") as handle:
            for message in messages:
                self.count += 1
                t = int((time.time() if when is None else when) * 1e6)
                handle.write(json.dumps({"__CURSOR": self.cursor(self.count, t), "t": t // 10**6,
                                         "MESSAGE": message}) + "\n")

    @staticmethod
    def cursor(n: int, t: int) -> str:
        return f"s=0123abcd;i={n:x};b=42;m=1;t={t:x};x=9"

    def calls(self) -> list[str]:
        path = Path(f"{self.path}.calls")
        return path.read_text().splitlines() if path.exists() else []

    def follower(self, mark: Path, *, from_start: bool = False, directory: str = "",
                 catchup: float = 0, clock: Callable[[], float] = time.time) -> JournalFollower:
        """A follower, once its journalctl --follow has found its place."""
        calls = len(self.follows())
        follower = JournalFollower(str(self.path), bookmark=mark, from_start=from_start,
                                   directory=directory, catchup=catchup, clock=clock)
        deadline = time.monotonic() + 10
        while len(self.follows()) == calls and time.monotonic() < deadline:
            time.sleep(0.01)
        return follower

    def follows(self) -> list[str]:
        return [call for call in self.calls() if "--follow" in call]


def messages(follower: JournalFollower, count: int, timeout: float = 10) -> list[str]:
    """The MESSAGEs of the next ``count`` entries (fewer when they do not come)."""
    import json

    out: list[str] = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        out += [json.loads(line)["MESSAGE"] for line in follower.poll()]
        time.sleep(0.02)
    return out


def test_journal_position_survives_a_restart(tmp_path: Path) -> None:
    """What was logged while the watcher was down is read at its next start, once."""
    import json

    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    journal.add("before the first start")
    first = journal.follower(mark)
    journal.add("one", "two")
    assert messages(first, 2) == ["one", "two"]
    first.checkpoint()
    first.close()
    record = json.loads(mark.read_text())
    assert record == {"source": "journal", "directory": "", "cursor": first.cursor}
    assert oct(mark.stat().st_mode & 0o777) == "0o600"
    journal.add("three (while down)", "four (while down)")
    second = journal.follower(mark)
    assert messages(second, 3, timeout=2) == ["three (while down)", "four (while down)"]
    second.close()
    calls = journal.calls()     # the first start: the last entry's cursor, then after it
    assert "--lines=1" in calls[0] and "--follow" not in calls[0]
    assert f"--after-cursor={FakeJournal.cursor(1, 0)[:16]}" in calls[1]
    assert f"--after-cursor={record['cursor']}" in calls[2]


def test_a_position_is_kept_even_when_nothing_was_read(tmp_path: Path) -> None:
    """Started from the end and stopped before any entry came: what is logged until the
    next start is still read then."""
    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    journal.add("before the first start")
    first = journal.follower(mark)
    assert messages(first, 1, timeout=0.5) == []
    first.checkpoint()
    first.close()
    journal.add("while down")
    second = journal.follower(mark)
    assert messages(second, 1) == ["while down"]
    second.close()


def test_a_switch_of_source_reads_from_the_end(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """A file position is no journal cursor, and the other way round: each source then
    starts at its end, and says so in one line."""
    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    log = tmp_path / "mail.log"
    append(log, "old line")
    f = FileFollower(log, bookmark=mark)
    f.checkpoint()
    f.close()
    journal.add("old entry")
    caplog.set_level("INFO")
    j = journal.follower(mark)
    journal.add("new entry")
    assert messages(j, 1) == ["new entry"]
    assert "holds a file position, not a journal cursor" in caplog.text
    j.checkpoint()
    j.close()
    append(log, "written while the journal was followed")
    assert drain(FileFollower(log, bookmark=mark)) == []
    assert "holds a journal position, not a file's" in caplog.text


def test_another_journal_directory_reads_from_the_end(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    journal.add("a")
    j = journal.follower(mark, from_start=True, directory="/srv/journal/mx1")
    assert messages(j, 1) == ["a"]
    j.checkpoint()
    j.close()
    caplog.set_level("INFO")
    journal.follower(mark, directory="/srv/journal/mx2").close()
    assert "cursor of the journal in /srv/journal/mx1, not /srv/journal/mx2" in caplog.text
    journal.follower(mark, directory="/srv/journal/mx1").close()
    calls = journal.calls()
    assert "--lines=1 --directory=/srv/journal/mx2" in calls[1]     # its own end
    assert "--directory=/srv/journal/mx1" in calls[3] and "--after-cursor=" in calls[3]
    assert len(calls) == 4


def test_catch_up_is_capped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cursor older than ``catchup`` seconds: from that long ago only (--since)."""
    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    now = 1_800_000_000.0
    journal.add("two days ago", when=now - 2 * 86400)
    j = journal.follower(mark, from_start=True)
    assert messages(j, 1) == ["two days ago"]
    j.checkpoint()
    j.close()
    journal.follower(mark, catchup=3600, clock=lambda: now).close()
    assert f"--since=@{int(now - 3600)}" in journal.calls()[1]
    assert "more than 3600s ago: catching up from" in caplog.text
    journal.follower(mark, catchup=0, clock=lambda: now).close()     # 0: no cap
    assert "--after-cursor=" in journal.calls()[2]


def test_a_refused_cursor_means_the_end_once(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """journalctl refusing the saved cursor (the fake refuses unknown ones, as journalctl
    does a malformed one): one warning, then the end of the journal; never a loop."""
    import json

    journal, mark = FakeJournal(tmp_path), tmp_path / "watch.position"
    mark.write_text(json.dumps({"source": "journal", "directory": "",
                                "cursor": FakeJournal.cursor(99, int(time.time() * 1e6))}))
    journal.add("old")
    j = journal.follower(mark)
    assert messages(j, 1, timeout=1.5) == []
    journal.add("new")
    assert messages(j, 1) == ["new"]
    j.close()
    assert caplog.text.count("journalctl refused to start after the saved position") == 1
    calls = journal.calls()
    assert len(calls) == 2 and "--after-cursor=" in calls[0] and "--lines=0" in calls[1]


def test_journal_once_reads_to_the_end(tmp_path: Path) -> None:
    """Without ``follow`` (--once) journalctl runs without --follow, poll waits for it,
    and an empty poll means the end."""
    journal = FakeJournal(tmp_path)
    journal.add("a", "b", "c")
    j = JournalFollower(str(journal.path), from_start=True, follow=False)
    lines: list[bytes] = []
    while batch := j.poll():
        lines += batch
    assert len(lines) == 3 and j.process is None
    assert "--follow" not in journal.calls()[0]
