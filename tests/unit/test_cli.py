"""The command line: version, help, and bad input as one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden import __version__
from postwarden.cli import main

MASTER = "smtp inet n - y - - smtpd\n"


def run(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postwarden", *args], capture_output=True,
                          text=True, timeout=60, user=user, errors="replace")


def config_dir(tmp_path: Path, main: bytes, master: str = MASTER) -> Path:
    (tmp_path / "main.cf").write_bytes(main)
    (tmp_path / "master.cf").write_text(master)
    return tmp_path


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"postwarden {__version__}"


def test_config_show_help_keeps_h_for_postconf() -> None:
    result = run("config", "show", "--help")
    assert result.returncode == 0
    assert "-h" in result.stdout and "-M" in result.stdout


def test_show_prints_effective_settings(tmp_path: Path) -> None:
    d = config_dir(tmp_path, b"myhostname = mx.example.org\nmydomain = example.org\n"
                             b"smtpd_banner = $myhostname   ESMTP\nmisspelt_thing = 1\n")
    result = run("config", "show", "-c", str(d), "-n", "-x")
    assert result.returncode == 0
    assert result.stdout.splitlines() == [
        f"config_directory = {d}",
        "mydomain = example.org",
        "myhostname = mx.example.org",
        "smtpd_banner = mx.example.org ESMTP",
    ]
    assert "unused parameter: misspelt_thing=1" in result.stderr


@pytest.mark.parametrize(
    ("main", "needles"),
    [
        (b"a = 1\n\x00\x01\x02garbage\xff\xfe\n", ["main.cf, line 2", "binary data"]),
        (b"\xff\xfe\x80garbage without equals\n", ["main.cf, line 1", "missing '='"]),
        (b"a = 1\nb = " + b"x" * (10 * 1024 * 1024) + b"\n", ["main.cf, line 2", "longer"]),
        (b"x = 1\nsmtpd_banner = ${myhostname\n", ["main.cf, line 2", "truncated macro"]),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, main: bytes, needles: list[str]) -> None:
    d = config_dir(tmp_path, main)
    assert_one_line_error(run("config", "show", "-c", str(d), "-n", "-x"), *needles)


def test_bad_master_entry_is_one_line(tmp_path: Path) -> None:
    d = config_dir(tmp_path, b"a = 1\n", "# x\nsmtp inet n - y\n")
    assert_one_line_error(run("config", "show", "-c", str(d), "-M"),
                          "master.cf, line 2", "bad field count")


def test_missing_directory(tmp_path: Path) -> None:
    assert_one_line_error(run("config", "check", "-c", str(tmp_path / "nope")),
                          "nope", "no such directory")


def test_usage_error_is_one_line() -> None:
    assert_one_line_error(run("config", "show", "--no-such-flag"), "unrecognized arguments")


def run_as_nobody(*args: str) -> tuple[int, str]:
    """Run the CLI in a forked child that has dropped to uid/gid 65534 (root bypasses modes).

    The commands import their modules when they run; the child may no longer read a
    virtual environment under root's home, so they are imported here, before the fork."""
    import postwarden.postfix.check
    import postwarden.postfix.config
    import postwarden.postfix.postconf  # noqa: F401 - imported for the child

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.close(read_fd)
            os.dup2(write_fd, 2)
            sys.stderr = os.fdopen(2, "w")
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            code = main(list(args))
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        stderr = pipe.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_file_and_directory(tmp_path: Path) -> None:
    d = config_dir(tmp_path, b"a = 1\n")
    code, stderr = run_as_nobody("config", "show", "-c", str(d))
    assert code == 2
    assert stderr.strip().splitlines() == [f"postwarden: {d}: permission denied"]
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if str(parent).startswith("/tmp/"):
            parent.chmod(parent.stat().st_mode | 0o005)
    (d / "main.cf").chmod(0o600)
    code, stderr = run_as_nobody("config", "show", "-c", str(d))
    assert code == 2
    assert stderr.strip().splitlines() == [f"postwarden: {d}/main.cf: permission denied"]


def test_check_reports_seed_mistakes(tmp_path: Path) -> None:
    d = config_dir(tmp_path, b"smtpd_recipient_restrictions = permit_mynetworks,"
                             b" reject_unauth_destination\n"
                             b"policyd-spf_time_limit = 3600s\n"
                             b"smtpd_recipient_restrictions = check_policy_service"
                             b" unix:private/policyd-spf\n")
    result = run("config", "check", "-c", str(d), "--format", "json")
    assert result.returncode == 1
    assert '"id": "CFG-DUP"' in result.stdout
    assert '"line": 3' in result.stdout
    assert "policyd-spf" in result.stdout
