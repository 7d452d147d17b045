"""Reading log files: plain, gzip, bzip2 or xz (by their magic bytes), a rotated set in time
order, ``-`` for standard input; lines as text, whatever the bytes.

Security: files are opened read-only and streamed in blocks (never read whole); bytes that are
not UTF-8 become U+FFFD, so a hostile client's bytes in a log line never stop the reading; a
compressed file that is damaged ends with one ``LogReadError`` naming the file and the line.
Standards: gzip (RFC 1952), bzip2 and xz container magic numbers; logrotate's numbering
(``mail.log``, ``mail.log.1``, ``mail.log.2.gz``).
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from postwarden.errors import PostwardenError

BLOCK = 1 << 20
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))


class LogReadError(PostwardenError):
    """A log file cannot be read (missing, unreadable, damaged compression)."""


@dataclass(frozen=True)
class Source:
    name: str           # the path as given, or "-"
    size: int           # bytes on disk (compressed size for compressed files), 0 for stdin
    mtime: float        # 0.0 for stdin


def compression_of(head: bytes) -> str:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return ""


def _open_binary(name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    try:
        raw = open(name, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise LogReadError(f"{name}: {exc.strerror or exc}") from None
    head = raw.peek(8)[:8] if isinstance(raw, io.BufferedReader) else b""
    kind = compression_of(head)
    # the decompressors are binary files too; typeshed does not say so
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "bzip2":
        return cast(BinaryIO, bz2.BZ2File(raw, mode="rb"))
    if kind == "xz":
        return cast(BinaryIO, lzma.LZMAFile(raw, mode="rb"))
    return raw


def _rotation_key(path: str) -> tuple[int, str]:
    """'mail.log.3.gz' -> 3, 'mail.log' -> 0: higher numbers are older."""
    m = re.search(r"\.(\d+)(?:\.(?:gz|bz2|xz))?$", path)
    return (int(m.group(1)) if m else 0, path)


def in_time_order(names: Sequence[str]) -> list[Source]:
    """The sources oldest first: by modification time, then by logrotate's number (a
    higher number is older); ``-`` keeps its place at the end."""
    sources: list[Source] = []
    stdin = False
    for name in names:
        if name == "-":
            stdin = True
            continue
        try:
            st = os.stat(name)
        except OSError as exc:
            raise LogReadError(f"{name}: {exc.strerror or exc}") from None
        sources.append(Source(name, st.st_size, st.st_mtime))
    sources.sort(key=lambda s: (s.mtime, -_rotation_key(s.name)[0], s.name))
    if stdin:
        sources.append(Source("-", 0, 0.0))
    return sources


class LineReader:
    """Iterates the lines of several sources in order, as str (newline kept).

    ``position`` counts the bytes read so far (compressed bytes for compressed files), for a
    progress bar; ``where`` names the current file and line number for error messages."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self.position = 0
        self.current = ""
        self.line_no = 0

    @property
    def total(self) -> int:
        return sum(s.size for s in self.sources)

    @property
    def where(self) -> str:
        return f"{self.current}, line {self.line_no}"

    def __iter__(self) -> Iterator[str]:
        for block in self.blocks():
            yield from block

    def blocks(self) -> Iterator[list[str]]:
        """The lines in blocks of about a megabyte (the cheapest way to loop over them)."""
        for source in self.sources:
            yield from self._blocks(source)

    def _blocks(self, source: Source) -> Iterator[list[str]]:
        self.current, self.line_no = source.name, 0
        binary = _open_binary(source.name)
        raw = getattr(binary, "fileobj", None) or getattr(binary, "_fp", None) or binary
        start = self.position
        text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=None)
        try:
            while True:
                try:
                    block = text.readlines(BLOCK)
                except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
                    raise LogReadError(f"{self.where}: cannot read: {exc}") from None
                if not block:
                    break
                self.line_no += len(block)
                self.position = start + _tell(raw, binary)
                yield block
        finally:
            if source.name != "-":
                text.close()
            else:
                text.detach()
        self.position = start + source.size


def _tell(raw: object, binary: object) -> int:
    for f in (raw, binary):
        tell = getattr(f, "tell", None)
        if tell is not None:
            try:
                return int(tell())
            except (OSError, ValueError):
                continue
    return 0


# -- a plain file in parts, for a parallel summary ---------------------------------------------

def plain_file(sources: Sequence[Source]) -> Source | None:
    """The one source when it is a regular, uncompressed file (what can be split). A pipe
    or device is never opened here (that could block, or eat its first bytes)."""
    if len(sources) != 1 or sources[0].name == "-":
        return None
    try:
        if not os.path.isfile(sources[0].name):
            return None
        with open(sources[0].name, "rb") as f:
            if compression_of(f.read(8)):
                return None
    except OSError:
        return None
    return sources[0]


def split_points(path: str, size: int, parts: int,
                 first: float = 1.0) -> list[tuple[int, int]]:
    """``parts`` byte ranges covering the file, each starting at a line's start (after a
    "\n"; a "\r\n" pair is never cut, so the lines are the reader's). The first range is
    ``first`` times as large as each of the others."""
    unit = size / (parts - 1 + first)
    cuts = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            f.seek(max(int(unit * (first + i - 1)), cuts[-1]))
            f.readline()
            cuts.append(min(f.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


class _Range(io.RawIOBase):
    """Bytes ``start`` to ``end`` of an open file, as a file of their own."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        super().__init__()
        self._f = f
        self._left = end - start
        f.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._f.readinto(view[:min(len(view), self._left)])  # type: ignore[attr-defined]
        self._left -= n
        return int(n)


def range_blocks(path: str, start: int, end: int) -> Iterator[list[str]]:
    """The lines of bytes ``start`` to ``end`` of a plain file, in blocks, decoded exactly as
    ``LineReader`` decodes them (the same TextIOWrapper). Both ends must be line starts
    (``split_points``): no character or "\r\n" pair is then cut."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, with the wrapper
    except OSError as exc:
        raise LogReadError(f"{path}: {exc.strerror or exc}") from None
    text = io.TextIOWrapper(io.BufferedReader(_Range(f, start, end), BLOCK),
                            encoding="utf-8", errors="replace", newline=None)
    with f, text:
        while True:
            try:
                block = text.readlines(BLOCK)
            except OSError as exc:
                raise LogReadError(f"{path}: cannot read: {exc}") from None
            if not block:
                return
            yield block


def read_lines(names: Sequence[str]) -> LineReader:
    """A reader over the named files (``-`` for stdin) in time order."""
    return LineReader(in_time_order(names or ["-"]))


def reference_time(sources: Sequence[Source]) -> float | None:
    """The newest modification time: the reference for BSD years (None: stdin only)."""
    times = [s.mtime for s in sources if s.name != "-"]
    return max(times) if times else None
