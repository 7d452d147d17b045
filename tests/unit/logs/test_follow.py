"""Following a file through rotation, truncation and absence; the journal child process."""

from __future__ import annotations

import os
import sys
import time
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
