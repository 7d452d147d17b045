"""The harden transaction: backups with a manifest, rollback, and no torn state when killed.

The kill test runs a real ``harden --apply`` in a child process that SIGKILLs itself just
before its Nth call that changes the file system (rename, replace, fsync, unlink, mkdir,
rmdir, chmod, opening a file for writing), for every N until a run completes. After each
kill, every file must be entirely its old or its new content, and after the next harden
run (which finishes or undoes the interrupted change) both files must be old or both new.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden.harden import apply as tx

OLD_MAIN = "# the operator's comment\nsmtpd_banner = $myhostname ESMTP $mail_name\n"
OLD_MASTER = ("smtp inet n - y - - smtpd\n"
              "pickup unix n - y 60 1 pickup\n"
              "cleanup unix n - y - 0 cleanup\n")
ARGS = ("--role", "mx,submission", "--hostname", "mx.example.org", "--sasl", "dovecot")

RUNNER = r"""
import os, signal, sys
from postwarden import cli
from postwarden.harden import run

run.find_program = lambda name: None   # postfix check is the integration tests' business
target = int(sys.argv[1])
count = 0

def hook(function):
    def wrapper(*args, **kwargs):
        global count
        if function.__name__ == "open" and len(args) > 1 and not args[1] & (
                os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            return function(*args, **kwargs)
        count += 1
        if count == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    return wrapper

for name in ("replace", "rename", "fsync", "unlink", "mkdir", "rmdir", "chmod", "fchmod",
             "open"):
    setattr(os, name, hook(getattr(os, name)))
code = cli.main(sys.argv[2:])
print("calls", count)
sys.exit(code)
"""


def setup(root: Path) -> Path:
    root.mkdir()
    (root / "main.cf").write_text(OLD_MAIN)
    (root / "master.cf").write_text(OLD_MASTER)
    return root


def run_harden(root: Path, kill_at: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUNNER, str(kill_at), "harden", "-c",
                           str(root), *ARGS, *extra], capture_output=True, text=True,
                          timeout=60)


def test_commit_writes_files_and_a_checked_backup(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    backup = tx.commit(root, {"main.cf": b"new main\n", "master.cf": OLD_MASTER.encode()})
    assert (root / "main.cf").read_bytes() == b"new main\n"
    sums = (backup / tx.MANIFEST).read_text()
    assert hashlib.sha256(OLD_MAIN.encode()).hexdigest() + "  main.cf\n" in sums
    check = subprocess.run(["sha256sum", "-c", tx.MANIFEST], cwd=backup, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert oct((root / tx.STATE).stat().st_mode & 0o777) == oct(0o700)
    assert (backup / "main.cf").stat().st_mode & 0o077 == 0


def test_commit_keeps_the_file_mode(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    os.chmod(root / "main.cf", 0o640)
    tx.commit(root, {"main.cf": b"x = 1\n"})
    assert (root / "main.cf").stat().st_mode & 0o777 == 0o640


def test_rollback_restores_the_latest_harden_backup_once(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    tx.commit(root, {"main.cf": b"first\n"})
    tx.commit(root, {"main.cf": b"second\n"})
    tx.rollback(root)
    assert (root / "main.cf").read_bytes() == b"first\n"
    tx.rollback(root)
    assert (root / "main.cf").read_text() == OLD_MAIN
    with pytest.raises(tx.ApplyError, match="no backup to restore"):
        tx.rollback(root)


def test_rollback_refuses_a_tampered_backup(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    backup = tx.commit(root, {"main.cf": b"new\n"})
    (backup / "main.cf").write_text("tampered\n")
    with pytest.raises(tx.ApplyError, match="does not match its SHA-256"):
        tx.rollback(root)
    assert (root / "main.cf").read_bytes() == b"new\n"


def test_recover_finishes_a_journaled_change(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    backup = tx.make_backup(root, ["main.cf"], "harden")
    (root / ".main.cf.postwarden-new").write_text("new\n")
    digest = hashlib.sha256(b"new\n").hexdigest()
    entry = {"name": "main.cf", "temp": ".main.cf.postwarden-new", "old": None, "new": digest}
    (root / tx.STATE / tx.JOURNAL).write_text(json.dumps({"backup": str(backup),
                                                          "files": [entry]}))
    assert tx.recover(root) == "completed an interrupted change"
    assert (root / "main.cf").read_text() == "new\n"
    assert not (root / tx.STATE / tx.JOURNAL).exists()


def test_killed_at_every_step_leaves_old_or_new_files(tmp_path: Path) -> None:
    reference = setup(tmp_path / "reference")
    done = run_harden(reference, 0, "--apply")
    assert done.returncode == 0, done.stdout + done.stderr
    total = int(done.stdout.rsplit("calls", 1)[1])
    old = {"main.cf": OLD_MAIN, "master.cf": OLD_MASTER}
    new = {name: (reference / name).read_text() for name in old}
    assert new != old
    states = set()
    for kill_at in range(1, total + 1):
        root = setup(tmp_path / f"run{kill_at}")
        result = run_harden(root, kill_at, "--apply")
        assert result.returncode == -9, (kill_at, result.stdout, result.stderr)
        now = {name: (root / name).read_text() for name in old}
        for name in old:
            assert now[name] in (old[name], new[name]), (kill_at, name, now[name])
        after = run_harden(root, 0, "--check")   # finishes or undoes what was interrupted
        assert after.returncode in (0, 1), after.stderr
        final = {name: (root / name).read_text() for name in old}
        assert final in (old, new), (kill_at, final)
        states.add("new" if final == new else "old")
        assert not list(root.glob(".*.postwarden-new"))
    assert states == {"old", "new"}, "the kills should land both before and after the commit"


def test_a_second_run_waits_its_turn(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    with tx.lock(root):
        result = run_harden(root, 0, "--apply")
        assert result.returncode == 2
        assert "another postwarden harden is changing" in result.stderr
    assert (root / "main.cf").read_text() == OLD_MAIN
    assert run_harden(root, 0, "--apply").returncode == 0


def test_symlinked_main_cf_is_refused(tmp_path: Path) -> None:
    root = setup(tmp_path / "etc")
    (root / "main.cf").rename(tmp_path / "real-main.cf")
    (root / "main.cf").symlink_to(tmp_path / "real-main.cf")
    result = run_harden(root, 0, "--apply")
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert (root / "main.cf").is_symlink()
