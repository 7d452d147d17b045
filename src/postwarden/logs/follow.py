"""Follow a log as it grows: a file (through rotation and truncation) or the journal.

Security: the bytes read are outside data and go to the parser untouched, but each line is
cut at ``max_line`` bytes (the rest of an overlong line is dropped) and each ``poll``
reads at most ``chunk`` bytes, so memory stays bounded whatever is written. journalctl runs
with an argument list, never a shell; its match arguments come from the settings.
The position file is trusted no more than a log: a record that does not parse, or a
cursor with other characters than a journald cursor has, is ignored.
Standards: logrotate's rotation by rename (``create``) and by ``copytruncate``; Postfix
``postfix logrotate`` (MAILLOG_README); journalctl(1) ``--follow --output=json``,
``--after-cursor``, ``--since=@EPOCH``, ``--no-tail``, ``--directory``;
sd_journal_get_cursor(3) (the cursor's ``t=`` field: realtime in hex microseconds).

Theory of operation
-------------------
``poll()`` never blocks: it returns the complete lines available now (possibly none), and
the caller sleeps when there were none (the one exception: a journal follower without
``follow``, for ``--once``, waits for journalctl). A file is identified by (device, inode):

1. Rename rotation: the path now names another file (or none for a while). What is left
   in the old file is read to its end first, then the new file is read from its start.
2. Truncation and copytruncate: the same inode but smaller than the position read, or the
   first bytes (remembered when read) changed: read again from the start. A partial line
   buffered from before is dropped.
3. A file that does not exist yet is opened when it appears and read from its start; a
   file that existed when following began is read from its end (``from_start`` reads it
   all).
4. With a ``bookmark`` file, the follower writes down (``checkpoint``) how far it has
   read: the file's identity, the offset after the last complete line, and a digest of
   the bytes before it up to ``HEAD``. At the next start the same file, at least that
   long and with the same first bytes, is read on from there, so lines written while the
   watcher was down are not missed; any other file is read from its end as in point 3.

The journal is read from ``journalctl --follow --output=json`` as a child process
(``--directory=DIR`` for journal files collected from elsewhere; journalctl itself picks up
files that appear in it). Every JSON entry carries its ``__CURSOR``:

5. When journalctl exits it is restarted (after a pause) after the cursor of the last
   entry returned, so no entry is lost or read twice. journalctl is told ``--no-tail``
   whenever it starts from a position: with ``--follow`` alone (an implied
   ``--lines=10``) journalctl 252 prints only the first 10 entries after the cursor and
   then waits for new ones, silently skipping the rest (seen here, on real journal files).
6. With a ``bookmark`` file, ``checkpoint`` writes down that cursor, with the source kind
   (``journal``) and the directory. The next run starts with ``--after-cursor`` from it
   (the entries written while the watcher was down are read, once). Starting from the
   end, the cursor of the journal's last entry is asked for first (``--lines=1``), so
   there is a position to write down before any entry arrives. A record of another
   kind (a file position: the source was switched), of another directory, or damaged,
   means: read from the end, said in one log line. A cursor older than ``catchup``
   seconds is replaced by ``--since`` that long ago, so a watcher down for a month does
   not replay the month. journalctl refusing a position (it exits with an error before
   printing an entry) means: one warning, then the end of the journal; a start from the
   end has no position to refuse, so this cannot loop.

Both followers share ``Bookmark``: one JSON record with a ``source`` key, written only when
it changed, atomically (temporary file, fsync, rename), mode 0600. A file record written
before ``source`` existed counts as a file record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from postwarden.errors import clip

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
CHUNK = 1 << 20
HEAD = 256            # bytes of the file's start remembered to notice copytruncate
RESTART_PAUSE = 2.0
REFUSED_WITHIN = 10.0   # journalctl exiting this soon after a positioned start refused it
MAX_BOOKMARK = 64 * 1024
_CURSOR = re.compile(rb'"__CURSOR"\s*:\s*"([0-9A-Za-z=;]{1,512})"')
_CURSOR_TEXT = re.compile(r"[0-9A-Za-z=;]{1,512}\Z")
_CURSOR_TIME = re.compile(r"(?:^|;)t=([0-9a-f]{1,16})(?:;|$)")


class Follower(Protocol):
    def poll(self) -> list[bytes]:
        """The complete lines available now, without their line ends; never blocks."""
    def checkpoint(self) -> None:
        """Write down how far the lines were read, where the follower keeps that."""
    def close(self) -> None: ...


class _Lines:
    """Splits a byte stream into bounded lines."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buffer = b""
        self.skipping = False   # inside the dropped tail of an overlong line
        self.cut = 0            # overlong lines seen

    def feed(self, data: bytes) -> list[bytes]:
        if self.skipping:
            end = data.find(b"\n")
            if end < 0:
                return []
            data, self.skipping = data[end + 1:], False
        data = self.buffer + data
        lines = data.split(b"\n")
        self.buffer = lines.pop()
        if any(len(line) > self.max_line for line in lines):
            lines = [line[: self.max_line] for line in lines]
        if len(self.buffer) > self.max_line:
            lines.append(self.buffer[: self.max_line])
            self.buffer, self.skipping = b"", True
            self.cut += 1
        return lines

    def reset(self) -> None:
        self.buffer, self.skipping = b"", False


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Bookmark:
    """The position file: one JSON record (theory of operation, last paragraph)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed = False
        self.written: dict[str, object] | None = None

    def read(self) -> dict[str, object] | None:
        """The record; None when there is none, or (said once) when it is damaged."""
        try:
            with open(self.path, "rb") as handle:
                record = json.loads(handle.read(MAX_BOOKMARK))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("watch: %s: not a position record, ignored: %s", self.path, exc)
            return None
        if not isinstance(record, dict):
            log.warning("watch: %s: not a position record, ignored", self.path)
            return None
        record.setdefault("source", "file")   # written before there were two kinds
        return record

    def write(self, record: dict[str, object]) -> None:
        """Atomically (temporary file, fsync, rename), mode 0600; only when it changed."""
        if record == self.written:
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(record))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:   # said once, not at every checkpoint
            if not self.failed:
                log.warning("watch: position file %s not written: %s", self.path,
                            exc.strerror or exc)
            self.failed = True
        else:
            self.failed, self.written = False, record


class FileFollower:
    """Follow one file by name, through rotation and truncation (theory points 1-3)."""

    def __init__(self, path: Path | str, *, from_start: bool = False,
                 max_line: int = MAX_LINE, chunk: int = CHUNK,
                 bookmark: Path | None = None) -> None:
        self.path = Path(path)
        self.chunk = chunk
        self.lines = _Lines(max_line)
        self.handle: BinaryIO | None = None
        self.identity: tuple[int, int] | None = None
        self.position = 0
        self.head = b""
        self.rotations = 0
        self.truncations = 0
        self.bookmark = None if bookmark is None else Bookmark(bookmark)
        if self._open(at_end=not from_start) and not from_start and self.bookmark:
            self._resume(self.bookmark)

    def _resume(self, bookmark: Bookmark) -> None:
        """Theory point 4: go back to where the last run stopped, if it is this file."""
        assert self.handle is not None and self.identity is not None
        saved = bookmark.read()
        if saved is None:
            return
        if saved["source"] != "file":
            log.info("watch: %s holds a %s position, not a file's: %s is read from its end",
                     bookmark.path, clip(str(saved["source"])), self.path)
            return
        try:
            identity = (_integer(saved["device"]), _integer(saved["inode"]))
            offset, digest = _integer(saved["offset"]), str(saved["head"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("watch: %s: not a file position, reading from the end: %s",
                        bookmark.path, exc)
            return
        if identity != self.identity or not 0 <= offset <= self.position:
            return
        if _digest(os.pread(self.handle.fileno(), min(HEAD, offset), 0)) != digest:
            return
        log.info("watch: %s: resuming at byte %d (%d bytes written since)", self.path,
                 offset, self.position - offset)
        self.position = self.handle.seek(offset)

    def checkpoint(self) -> None:
        """Theory point 4 (``Bookmark.write``)."""
        if self.bookmark is None or self.handle is None or self.identity is None:
            return
        offset = self.position - len(self.lines.buffer)
        self.bookmark.write({
            "source": "file", "file": str(self.path), "device": self.identity[0],
            "inode": self.identity[1], "offset": offset,
            "head": _digest(os.pread(self.handle.fileno(), min(HEAD, offset), 0))})

    def _open(self, *, at_end: bool) -> bool:
        try:
            handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("watch: %s: %s", self.path, exc.strerror or exc)
            return False
        info = os.fstat(handle.fileno())
        self.handle, self.identity = handle, (info.st_dev, info.st_ino)
        self.position = handle.seek(0, os.SEEK_END) if at_end else 0
        self.head = os.pread(handle.fileno(), HEAD, 0)
        self.lines.reset()
        return True

    def _read(self) -> list[bytes]:
        assert self.handle is not None
        data = self.handle.read(self.chunk)
        if not data:
            return []
        if self.position < HEAD:
            self.head = os.pread(self.handle.fileno(), HEAD, 0)
        self.position += len(data)
        return self.lines.feed(data)

    def _switch(self) -> list[bytes]:
        """Rotation by rename: finish the old file, then start the new one."""
        rest: list[bytes] = []
        while chunk := self._read():
            rest += chunk
        if self.lines.buffer:
            rest.append(self.lines.buffer)
        self.close()
        self.rotations += 1
        self._open(at_end=False)
        return rest

    def _rewritten(self) -> bool:
        """The first bytes are not what they were: truncated and written again."""
        assert self.handle is not None
        return bool(self.head) and os.pread(self.handle.fileno(), len(self.head), 0) != self.head

    def _restart(self) -> list[bytes]:
        assert self.handle is not None
        self.truncations += 1
        self.handle.seek(0)
        self.position = 0
        self.lines.reset()
        self.head = os.pread(self.handle.fileno(), HEAD, 0)
        return self._read()

    def poll(self) -> list[bytes]:
        if self.handle is None and not self._open(at_end=False):
            return []
        if self._rewritten():
            return self._restart()
        lines = self._read()
        if lines:
            return lines
        try:
            info = os.stat(self.path)
        except OSError:
            return []   # renamed away, the new file not created yet: keep the old one
        if (info.st_dev, info.st_ino) != self.identity:
            return self._switch()
        if info.st_size < self.position:
            return self._restart()
        return []

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class JournalFollower:
    """``journalctl --follow --output=json`` as a child process, restarted from its cursor
    (theory points 5 and 6). Without ``follow`` journalctl prints what there is and exits,
    and ``poll`` waits for it (``--once``): an empty list then means the end."""

    def __init__(self, journalctl: str, matches: Sequence[str] = (), *,
                 from_start: bool = False, directory: str = "",
                 bookmark: Path | None = None, catchup: float = 0, follow: bool = True,
                 max_line: int = 4 * MAX_LINE, extra: Sequence[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.journalctl, self.matches, self.extra = journalctl, tuple(matches), tuple(extra)
        self.directory, self.follow = directory, follow
        self.lines = _Lines(max_line)
        self.cursor: str | None = None
        self.since: float | None = None     # --since, when a saved cursor was too old
        self.from_start = from_start
        self.positioned = False   # started after a cursor or a time, nothing read since
        self.process: subprocess.Popen[bytes] | None = None
        self.started = self.restart_at = 0.0
        self.restarts = 0
        self.bookmark = None if bookmark is None else Bookmark(bookmark)
        if self.bookmark is not None and not from_start:
            self._resume(self.bookmark, catchup, clock())
            if self.cursor is None and self.since is None:
                self._mark_the_end()
        self._start()

    def _mark_the_end(self) -> None:
        """Theory point 6: start after the last entry there is now (its cursor), so a
        position exists from the start, even if nothing is logged before the next stop."""
        command = [self.journalctl, "--output=json", "--no-pager", "--lines=1"]
        if self.directory:
            command.append(f"--directory={self.directory}")
        try:
            result = subprocess.run([*command, *self.extra, *self.matches],
                                    stdin=subprocess.DEVNULL, capture_output=True,
                                    timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("watch: %s: %s", self.journalctl, exc)
            return
        found = _CURSOR.search(result.stdout[-4 * MAX_LINE:])
        if result.returncode == 0 and found:
            self.cursor, self.positioned = found[1].decode("ascii"), True

    def _resume(self, bookmark: Bookmark, catchup: float, now: float) -> None:
        """Theory point 6: after the saved cursor, or at most ``catchup`` seconds back."""
        saved = bookmark.read()
        if saved is None:
            return
        if saved["source"] != "journal":
            log.info("watch: %s holds a %s position, not a journal cursor: the journal is "
                     "read from its end", bookmark.path, clip(str(saved["source"])))
            return
        cursor, directory = saved.get("cursor"), saved.get("directory", "")
        if not isinstance(cursor, str) or not _CURSOR_TEXT.match(cursor):
            log.warning("watch: %s: not a journal cursor; the journal is read from its end",
                        bookmark.path)
            return
        if directory != self.directory:
            log.info("watch: %s holds a cursor of the journal in %s, not %s: the journal is "
                     "read from its end", bookmark.path, clip(str(directory)) or "(system)",
                     self.directory or "(system)")
            return
        written = cursor_time(cursor)
        if catchup and written is not None and written < now - catchup:
            self.since = now - catchup
            log.warning("watch: the journal position is from %s, more than %gs ago: "
                        "catching up from %s only", _iso(written), catchup, _iso(self.since))
        else:
            self.cursor = cursor
            log.info("watch: journal: resuming after the cursor of %s",
                     _iso(written) if written is not None else "the last run")
        self.positioned = True

    def command(self) -> list[str]:
        args = [self.journalctl, *(["--follow"] if self.follow else []), "--output=json",
                "--no-pager"]
        if self.directory:
            args.append(f"--directory={self.directory}")
        args += self.extra
        # --no-tail with a position: --follow alone means --lines=10, and journalctl 252
        # then prints the first 10 entries after a cursor and skips the rest (found here)
        if self.cursor is not None:
            args += ["--no-tail", f"--after-cursor={self.cursor}"]
        elif self.since is not None:
            args += ["--no-tail", f"--since=@{int(self.since)}"]
        elif self.from_start:
            args.append("--no-tail")
        else:
            args.append("--lines=0")
        return args + list(self.matches)

    def _start(self) -> None:
        self.started = time.monotonic()
        try:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE)
        except OSError as exc:
            log.error("watch: %s: %s", self.journalctl, exc.strerror or exc)
            self.process, self.restart_at = None, time.monotonic() + RESTART_PAUSE
            return
        assert self.process.stdout is not None
        if self.follow:
            os.set_blocking(self.process.stdout.fileno(), False)

    def _read(self) -> bytes | None:
        """What journalctl printed: b"" at its end, None when nothing is there yet."""
        assert self.process is not None and self.process.stdout is not None
        try:
            return os.read(self.process.stdout.fileno(), CHUNK)
        except BlockingIOError:
            return None

    def poll(self) -> list[bytes]:
        if self.process is None:
            if self.follow and time.monotonic() >= self.restart_at:
                self.restarts += 1
                self._start()
            return []
        lines: list[bytes] = []
        while not lines:
            data = self._read()
            if data is None:
                return []
            if not data:
                self._ended()
                return []
            lines = self.lines.feed(data)
            self.positioned = self.positioned and not lines
            if self.follow:
                break
        for line in reversed(lines):
            found = _CURSOR.search(line)
            if found:
                self.cursor = found[1].decode("ascii")
                break
        return lines

    def _ended(self) -> None:
        """journalctl exited: restart it after a pause (theory points 5 and 6)."""
        assert self.process is not None
        code = self.process.wait()
        self._stop()
        if not self.follow:
            return
        refused = code != 0 and time.monotonic() - self.started < REFUSED_WITHIN
        if self.positioned and refused:
            log.warning("watch: journalctl refused to start after the saved position "
                        "(exit %s): reading the journal from its end", code)
            self.cursor, self.since, self.positioned = None, None, False
            self._start()
            return
        log.warning("watch: journalctl exited (%s); restarting in %g s", code, RESTART_PAUSE)
        self.restart_at = time.monotonic() + RESTART_PAUSE

    def _stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            with contextlib.suppress(OSError):
                process.stdout.close()
        self.lines.reset()

    def checkpoint(self) -> None:
        """Theory point 6: the cursor of the last entry returned, when there is one."""
        if self.bookmark is not None and self.cursor is not None:
            self.bookmark.write({"source": "journal", "directory": self.directory,
                                 "cursor": self.cursor})

    def close(self) -> None:
        self._stop()


def cursor_time(cursor: str) -> float | None:
    """The entry's time (seconds since the epoch) from a cursor's ``t=`` field."""
    found = _CURSOR_TIME.search(cursor)
    return int(found[1], 16) / 1e6 if found else None
