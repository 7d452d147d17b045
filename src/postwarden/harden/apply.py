"""Write a plan to disk as one transaction: backup, journal, rename, verify, roll back.

Security: runs as the owner of the configuration (root on a real server). Backups and the
journal live in ``DIR/.postwarden`` (mode 0700); files are written with the mode of the file
they replace. Nothing read from the configuration reaches a command line except as one
argument of an argument list (``postfix -c DIR check``), never through a shell.
Standards: POSIX rename(2) atomicity; the layout of ``sha256sum`` output (so ``sha256sum -c
SHA256SUMS`` checks a backup by hand); Postfix postfix(1) ``check`` and ``reload``.

Theory of operation
-------------------
``commit`` changes several files, but rename(2) is atomic for one file only. So:

1. The current files are copied into a new backup directory with a ``SHA256SUMS``
   manifest and an ``INFO`` record (each written to a temp file, fsynced, renamed).
2. Each new file is written in full beside its target (``.main.cf.postwarden-new``) and
   fsynced.
3. The ``journal`` is written (atomically): each target with its temp file and the SHA-256
   of its old and new content, and the backup directory. This is the commit point.
4. The temp files are renamed over their targets, the directory fsynced, the journal
   removed.

A process killed before 3 leaves the old files (and stray temp files, which the next run
removes); killed after 3, it leaves a journal, and every ``postwarden harden`` run starts by
finishing it: forward when each target already has its new content or its complete temp
file is still there, else back from the backup. No file is ever partly written, since
every write is a rename of a complete, fsynced file; the only moment two files can
disagree is between the renames of step 4, and the journal covers it.

One change at a time: ``lock`` holds an exclusive flock(2) on ``DIR/.postwarden/lock``
around recovery, commit, verification and rollback, so a second harden run refuses to
start instead of interleaving its renames with the first's.

After a commit, ``verify`` runs ``postfix -c DIR check`` and postwarden's configuration
check when Postfix is installed; if either fails, the backup is committed back the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from postwarden.errors import PostwardenError
from postwarden.postfix.maincf import write_atomic

STATE = ".postwarden"
TEMP_SUFFIX = ".postwarden-new"
JOURNAL = "journal"
MANIFEST = "SHA256SUMS"
INFO = "INFO"


class ApplyError(PostwardenError):
    """The change could not be written, verified or undone."""


@dataclass(frozen=True)
class Backup:
    path: Path
    created: str
    reason: str          # "harden" or "rollback"
    restored: bool
    files: tuple[str, ...]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dir(config_dir: Path) -> Path:
    path = config_dir / STATE
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def lock(config_dir: Path) -> Iterator[None]:
    """Hold the configuration's harden lock, or fail at once if another run has it."""
    fd = os.open(state_dir(config_dir) / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ApplyError(f"{config_dir}: another postwarden harden is changing this "
                             "configuration; try again when it has finished") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- backups ---------------------------------------------------------------------------------

def make_backup(config_dir: Path, names: list[str], reason: str) -> Path:
    """Copy the named files into a new timestamped backup with a SHA-256 manifest."""
    root = state_dir(config_dir) / "backups"
    root.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = root / stamp
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{stamp}-{suffix}"
    building = root / f".{path.name}.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(mode=0o700)
    sums = []
    for name in names:
        data = _read(config_dir / name)
        if data is None:
            continue
        write_atomic(building / name, data, mode=0o600)
        sums.append(f"{sha256(data)}  {name}\n")
    write_atomic(building / MANIFEST, "".join(sums).encode(), mode=0o600)
    info = {"created": stamp, "reason": reason, "config_directory": str(config_dir)}
    write_atomic(building / INFO, json.dumps(info).encode() + b"\n", mode=0o600)
    os.rename(building, path)  # the backup appears whole or not at all
    _fsync_dir(root)
    return path


def read_backup(path: Path) -> tuple[Backup, dict[str, bytes]]:
    """A backup and its files, each checked against the manifest."""
    try:
        info = json.loads((path / INFO).read_text())
        manifest = (path / MANIFEST).read_text().splitlines()
    except (OSError, ValueError) as exc:
        raise ApplyError(f"{path}: not a complete backup ({exc})") from None
    files: dict[str, bytes] = {}
    for lineno, line in enumerate(manifest, 1):
        digest, _, name = line.partition("  ")
        if not name or "/" in name or name.startswith("."):
            raise ApplyError(f"{path / MANIFEST}, line {lineno}: malformed entry")
        data = _read(path / name)
        if data is None or sha256(data) != digest:
            raise ApplyError(f"{path / name}: does not match its SHA-256 in {MANIFEST}")
        files[name] = data
    backup = Backup(path, str(info.get("created", path.name)), str(info.get("reason", "")),
                    (path / "RESTORED").exists(), tuple(files))
    return backup, files


def backups(config_dir: Path) -> list[Path]:
    root = config_dir / STATE / "backups"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


# -- the transaction -------------------------------------------------------------------------

def commit(config_dir: Path, new: Mapping[str, bytes], reason: str = "harden") -> Path:
    """Replace the named files with new contents as one transaction; returns the backup."""
    recover(config_dir)
    old = {name: _read(config_dir / name) for name in new}
    backup = make_backup(config_dir, list(new), reason)
    entries = []
    for name, data in new.items():
        if old[name] == data:
            continue
        target = config_dir / name
        temp = config_dir / f".{name}{TEMP_SUFFIX}"
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
        write_atomic(temp, data, mode=mode)
        previous = old[name]
        entries.append({"name": name, "temp": temp.name,
                        "old": sha256(previous) if previous is not None else None,
                        "new": sha256(data)})
    if not entries:
        return backup
    journal = state_dir(config_dir) / JOURNAL
    write_atomic(journal, json.dumps({"backup": str(backup), "files": entries}).encode(),
                 mode=0o600)
    _roll_forward(config_dir, entries)
    journal.unlink()
    _fsync_dir(journal.parent)
    return backup


def _roll_forward(config_dir: Path, entries: list[dict[str, str | None]]) -> None:
    for entry in entries:
        temp = config_dir / str(entry["temp"])
        if temp.exists():
            os.replace(temp, config_dir / str(entry["name"]))
    _fsync_dir(config_dir)


def recover(config_dir: Path) -> str | None:
    """Finish a transaction a killed process left; returns what was done, or None."""
    state = config_dir / STATE
    journal = state / JOURNAL
    done: str | None = None
    if journal.exists():
        try:
            record = json.loads(journal.read_text())
            entries: list[dict[str, str | None]] = record["files"]
            backup = Path(record["backup"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ApplyError(f"{journal}: unreadable journal ({exc}); restore by hand from "
                             f"{state / 'backups'}") from None
        if all(_complete(config_dir, e) for e in entries):
            _roll_forward(config_dir, entries)
            done = "completed an interrupted change"
        else:
            _, files = read_backup(backup)
            for name, data in files.items():
                write_atomic(config_dir / name, data)
            done = f"undid an interrupted change from {backup}"
        journal.unlink()
        _fsync_dir(state)
    for stray in config_dir.glob(f".*{TEMP_SUFFIX}"):
        stray.unlink()
    for partial in (state / "backups").glob(".*.partial") if state.is_dir() else ():
        shutil.rmtree(partial, ignore_errors=True)
    return done


def _complete(config_dir: Path, entry: Mapping[str, str | None]) -> bool:
    """Whether this file can be brought to its new content: it has it, or its temp does."""
    for path in (config_dir / str(entry["name"]), config_dir / str(entry["temp"])):
        data = _read(path)
        if data is not None and sha256(data) == entry["new"]:
            return True
    return False


def mark_restored(backup: Path) -> None:
    write_atomic(backup / "RESTORED", b"", mode=0o600)


def rollback(config_dir: Path, verify: Callable[[], str | None] | None = None) -> Backup:
    """Restore the latest harden backup not yet restored; the current files are backed up."""
    with lock(config_dir):
        return _rollback(config_dir, verify)


def _rollback(config_dir: Path, verify: Callable[[], str | None] | None) -> Backup:
    recover(config_dir)
    for path in reversed(backups(config_dir)):
        backup, files = read_backup(path)
        if backup.reason == "harden" and not backup.restored:
            break
    else:
        raise ApplyError(f"no backup to restore in {config_dir / STATE / 'backups'}")
    commit(config_dir, files, reason="rollback")
    mark_restored(path)
    if verify is not None:
        problem = verify()
        if problem:
            raise ApplyError(f"restored {path}, but the check fails: {problem}")
    return backup
