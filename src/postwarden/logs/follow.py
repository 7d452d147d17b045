"""Follow a log as it grows: a file (through rotation and truncation) or the journal.

Security: the bytes read are outside data and go to the parser untouched, but each line is
cut at ``max_line`` bytes (the rest of an overlong line is dropped) and each ``poll``
reads at most ``chunk`` bytes, so memory stays bounded whatever is written. journalctl runs
with an argument list, never a shell; its match arguments come from the settings.
Standards: logrotate's rotation by rename (``create``) and by ``copytruncate``; Postfix
``postfix logrotate`` (MAILLOG_README); journalctl(1) ``--follow --output=json``,
``--after-cursor``, ``--no-tail``.

Theory of operation
-------------------
``poll()`` never blocks: it returns the complete lines available now (possibly none), and
the caller sleeps when there were none. A file is identified by (device, inode):

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

The journal is read from ``journalctl --follow --output=json`` as a child process. When
it exits it is restarted (after a pause) from the cursor of the last entry seen, so no
entry is lost or read twice.
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
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
CHUNK = 1 << 20
HEAD = 256            # bytes of the file's start remembered to notice copytruncate
RESTART_PAUSE = 2.0
_CURSOR = re.compile(rb'"__CURSOR"\s*:\s*"([^"\\]{1,512})"')


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
        self.bookmark = bookmark
        self.bookmark_failed = False
        if self._open(at_end=not from_start) and not from_start and bookmark is not None:
            self._resume(bookmark)

    def _resume(self, bookmark: Path) -> None:
        """Theory point 4: go back to where the last run stopped, if it is this file."""
        assert self.handle is not None and self.identity is not None
        try:
            saved = json.loads(bookmark.read_text(encoding="utf-8"))
            identity = (int(saved["device"]), int(saved["inode"]))
            offset, digest = int(saved["offset"]), str(saved["head"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("watch: %s: not a bookmark, reading from the end: %s", bookmark, exc)
            return
        if identity != self.identity or not 0 <= offset <= self.position:
            return
        if _digest(os.pread(self.handle.fileno(), min(HEAD, offset), 0)) != digest:
            return
        log.info("watch: %s: resuming at byte %d (%d bytes written since)", self.path,
                 offset, self.position - offset)
        self.position = self.handle.seek(offset)

    def checkpoint(self) -> None:
        """Theory point 4; written atomically (temporary file, fsync, rename), mode 0600."""
        if self.bookmark is None or self.handle is None or self.identity is None:
            return
        offset = self.position - len(self.lines.buffer)
        data = json.dumps({
            "file": str(self.path), "device": self.identity[0], "inode": self.identity[1],
            "offset": offset,
            "head": _digest(os.pread(self.handle.fileno(), min(HEAD, offset), 0))})
        temporary = self.bookmark.with_name(f".{self.bookmark.name}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.bookmark)
        except OSError as exc:   # said once, not at every checkpoint
            if not self.bookmark_failed:
                log.warning("watch: bookmark %s not written: %s", self.bookmark,
                            exc.strerror or exc)
            self.bookmark_failed = True
        else:
            self.bookmark_failed = False

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
    """``journalctl --follow --output=json`` as a child process, restarted from its cursor."""

    def __init__(self, journalctl: str, matches: Sequence[str] = (), *,
                 from_start: bool = False, max_line: int = 4 * MAX_LINE,
                 extra: Sequence[str] = ()) -> None:
        self.journalctl, self.matches, self.extra = journalctl, tuple(matches), tuple(extra)
        self.lines = _Lines(max_line)
        self.cursor: str | None = None
        self.from_start = from_start
        self.process: subprocess.Popen[bytes] | None = None
        self.restart_at = 0.0
        self.restarts = 0
        self._start()

    def command(self) -> list[str]:
        args = [self.journalctl, "--follow", "--output=json", "--no-pager", *self.extra]
        if self.cursor is not None:
            args.append(f"--after-cursor={self.cursor}")
        elif self.from_start:
            args.append("--no-tail")
        else:
            args.append("--lines=0")
        return args + list(self.matches)

    def _start(self) -> None:
        try:
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE)
        except OSError as exc:
            log.error("watch: %s: %s", self.journalctl, exc.strerror or exc)
            self.process, self.restart_at = None, time.monotonic() + RESTART_PAUSE
            return
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)

    def poll(self) -> list[bytes]:
        if self.process is None:
            if time.monotonic() >= self.restart_at:
                self.restarts += 1
                self._start()
            return []
        assert self.process.stdout is not None
        try:
            data = os.read(self.process.stdout.fileno(), CHUNK)
        except BlockingIOError:
            return []
        if not data:
            code = self.process.wait()
            log.warning("watch: journalctl exited (%s); restarting in %g s", code,
                        RESTART_PAUSE)
            self._stop()
            self.restart_at = time.monotonic() + RESTART_PAUSE
            return []
        lines = self.lines.feed(data)
        for line in reversed(lines):
            found = _CURSOR.search(line)
            if found:
                self.cursor = found[1].decode("ascii", "replace")
                break
        return lines

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
        """Nothing kept across runs: a new run starts at the journal's end, or with
        ``from_start`` at its beginning (the cursor is kept within a run only)."""

    def close(self) -> None:
        self._stop()
