"""reader: plain, gzip, bzip2 and xz files, a rotated set oldest first, standard input, and
bytes that are not UTF-8."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden.logs.reader import LogReadError, in_time_order, read_lines

COMPRESSORS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress,
               ".xz": lzma.compress}


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_compressed_files_by_magic(tmp_path: Path, suffix: str) -> None:
    data = b"line one\nline \xff two\r\nline three"
    # the name says nothing: the magic bytes decide
    path = tmp_path / "mail.log.7"
    path.write_bytes(COMPRESSORS[suffix](data))
    assert list(read_lines([str(path)])) == ["line one\n", "line \ufffd two\n", "line three"]


def test_rotated_set_in_time_order(tmp_path: Path) -> None:
    names = {"mail.log.3.gz": b"third\n", "mail.log.2.bz2": b"second\n", "mail.log.1": b"first\n",
             "mail.log": b"now\n"}
    for i, (name, data) in enumerate(names.items()):
        path = tmp_path / name
        path.write_bytes(COMPRESSORS[path.suffix if path.suffix in (".gz", ".bz2") else ""](data))
        os.utime(path, (1000 + i, 1000 + i))
    given = [str(tmp_path / n) for n in ("mail.log", "mail.log.1", "mail.log.3.gz",
                                         "mail.log.2.bz2")]
    assert list(read_lines(given)) == ["third\n", "second\n", "first\n", "now\n"]


def test_same_mtime_falls_back_to_rotation_number(tmp_path: Path) -> None:
    for name in ("mail.log", "mail.log.1", "mail.log.2"):
        (tmp_path / name).write_text(name + "\n")
        os.utime(tmp_path / name, (1000, 1000))
    order = [Path(s.name).name for s in in_time_order(
        [str(tmp_path / n) for n in ("mail.log", "mail.log.2", "mail.log.1")])]
    assert order == ["mail.log.2", "mail.log.1", "mail.log"]


def test_missing_file_is_a_log_read_error(tmp_path: Path) -> None:
    with pytest.raises(LogReadError, match=r"nope\.log"):
        read_lines([str(tmp_path / "nope.log")])


def test_damaged_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"x\n" * 1000)[:-20] + b"garbage!")
    with pytest.raises(LogReadError, match=r"bad\.gz"):
        list(read_lines([str(path)]))


def test_position_reaches_the_total(tmp_path: Path) -> None:
    path = tmp_path / "m.log.gz"
    path.write_bytes(gzip.compress(b"abc\n" * 10000))
    reader = read_lines([str(path)])
    assert sum(len(b) for b in reader.blocks()) == 10000
    assert reader.position == reader.total == path.stat().st_size


def test_stdin_dash() -> None:
    code = ("import sys; from postwarden.logs.reader import read_lines; "
            "sys.stdout.write(''.join(read_lines(['-'])))")
    out = subprocess.run([sys.executable, "-c", code], input=b"a\n\xffb\n",
                         capture_output=True, check=True, timeout=60).stdout
    assert out.decode() == "a\n\ufffdb\n"
