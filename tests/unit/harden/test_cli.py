"""postwarden harden on the command line: plan, --check, --apply, inputs, and bad input.

Bad input must give one line naming the option or the file (and line), exit 2, and leave
the configuration as it was. ``postfix check`` is left out here (the integration tests run
it); everything else is the real command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden import cli
from postwarden.harden import run
from postwarden.postfix.config import PostfixConfig

MAIN = """# Our mail server. Keep this comment.
myhostname = mx.example.org
smtpd_recipient_restrictions = permit_mynetworks,
    reject_unauth_destination,
    check_client_access hash:/etc/postfix/access
smtpd_banner = $myhostname ESMTP Postfix (Debian/GNU)
"""
MASTER = ("smtp      inet  n       -       y       -       -       smtpd\n"
          "pickup    unix  n       -       y       60      1       pickup\n"
          "cleanup   unix  n       -       y       -       0       cleanup\n")


@pytest.fixture(autouse=True)
def _no_postfix_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "find_program", lambda name: None)


@pytest.fixture
def etc() -> Iterator[Path]:
    """A config directory any user can read (tmp_path is not), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="postwarden-harden-"))
    root.chmod(0o755)
    (root / "main.cf").write_text(MAIN)
    (root / "master.cf").write_text(MASTER)
    yield root
    shutil.rmtree(root)


def files(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in ("main.cf", "master.cf")}


def harden(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["harden", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_shows_a_diff_with_rule_ids_and_writes_nothing(
        etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "mx")
    assert code == 0
    assert files(etc) == {"main.cf": MAIN, "master.cf": MASTER}
    assert "+smtpd_helo_required = yes" in out
    assert "smtpd_helo_required = yes" in out.split("changes:")[1]
    assert "RESTR-009" in out and "pending" in out


def test_apply_merges_and_a_second_run_plans_nothing(
        etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert harden(capsys, "-c", str(etc), "--role", "mx", "--check")[0] == 1
    code, out, err = harden(capsys, "-c", str(etc), "--role", "mx", "--apply")
    assert code == 0, err
    assert "applied and verified" in out
    text = (etc / "main.cf").read_text()
    assert text.startswith("# Our mail server. Keep this comment.\n")
    # The operator's own entry stays; the new checks come right after the guard.
    value = PostfixConfig.load(etc).main.get("smtpd_recipient_restrictions") or ""
    order = [w.strip(",") for w in value.split()]
    assert order[:3] == ["permit_mynetworks", "reject_unauth_destination",
                         "reject_non_fqdn_sender"], order
    assert order[-2:] == ["check_client_access", "hash:/etc/postfix/access"], order
    assert text.count("smtpd_recipient_restrictions") == 1
    assert "    check_client_access hash:/etc/postfix/access\n" in text  # its line untouched
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "mx", "--check")
    assert code == 0 and "nothing to change" in out


def test_inputs_a_role_does_not_use_are_named(
        etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "relay", "--sasl", "dovecot",
                          "--with", "milter")
    assert code == 0
    assert "ignored: --sasl is not used by the relay profile" in out
    assert "ignored: --with milter is not used by the relay profile" in out
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "mx", "--sasl", "dovecot")
    assert "ignored: --sasl is not used by the mx profile" in out


def test_missing_inputs_are_named_not_guessed(
        etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (etc / "main.cf").write_text(MAIN.replace("myhostname = mx.example.org\n", ""))
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "submission")
    assert code == 0
    assert "needs --hostname: myhostname (NET-008) left out" in out
    assert "needs --sasl: smtpd_sasl_auth_enable on the submission services" in out
    assert "myhostname =" not in out.split("changes:")[0]


def test_settings_file(etc: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = tmp_path / "harden.toml"
    settings.write_text('hostname = "mail.example.net"\nsasl = "dovecot"\n')
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "submission", "--settings",
                          str(settings), "--hostname", "mx2.example.net")
    assert code == 0
    assert "+myhostname = mx2.example.net" in out          # the option wins
    assert "+smtpd_sasl_type = dovecot" in out             # the file fills in


def test_json(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = harden(capsys, "-c", str(etc), "--role", "mx", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["pending"] is True
    assert any(c["parameter"] == "smtpd_helo_required" and c["rules"] == ["RESTR-009"]
               for c in data["changes"])


def one_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def command(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "postwarden", "harden", *args],
                          capture_output=True, text=True, timeout=60, user=user)


@pytest.mark.parametrize(("args", "needles"), [
    (("--tls-cert", "/nonexistent/cert.pem"), ("--tls-cert", "no such file")),
    (("--tls-key", "relative.pem"), ("--tls-key", "absolute path")),
    (("--hostname", "mx example"), ("--hostname", "not a fully qualified")),
    (("--hostname", "localhost"), ("--hostname",)),
    (("--sasl", "pam"), ("--sasl",)),
    (("--with", "greylist"), ("--with",)),
    ((), ("needs --role",)),
])
def test_bad_options_are_one_line_and_change_nothing(
        etc: Path, args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    role = () if not args else ("--role", "mx")
    one_line(command("-c", str(etc), *role, *args, "--apply"), *needles)
    assert files(etc) == {"main.cf": MAIN, "master.cf": MASTER}
    assert not (etc / ".postwarden").exists()


def test_key_that_is_not_the_certificates(etc: Path, tmp_path: Path) -> None:
    from tests.integration.test_harden import certificate
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = certificate(tmp_path / "a")
    _, key = certificate(tmp_path / "b")
    one_line(command("-c", str(etc), "--role", "mx", "--tls-cert", str(cert), "--tls-key",
                     str(key), "--apply"), "is not the key of the certificate")


def test_unparsable_main_cf_names_file_and_line(etc: Path) -> None:
    (etc / "main.cf").write_text(MAIN + "this line has no equals sign\n")
    one_line(command("-c", str(etc), "--role", "mx", "--apply"), "main.cf, line 7")


def test_bad_settings_file(etc: Path, tmp_path: Path) -> None:
    settings = tmp_path / "harden.toml"
    settings.write_text('hostname = "mx.example.org"\ncolour = "blue"\n')
    one_line(command("-c", str(etc), "--role", "mx", "--settings", str(settings)),
             str(settings), "unknown key 'colour'")
    settings.write_text("hostname = \n")
    one_line(command("-c", str(etc), "--role", "mx", "--settings", str(settings)),
             str(settings), "line 1")


def test_contradictory_roles(etc: Path) -> None:
    one_line(command("-c", str(etc), "--role", "mx,null-client"), "contradicts")


def test_directory_not_writable(tmp_path: Path) -> None:
    """A configuration on a read-only file system (root may write anywhere else)."""
    assert os.geteuid() == 0, "the test mounts a file system"
    target = tmp_path / "ro"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    try:
        (target / "main.cf").write_text(MAIN)
        (target / "master.cf").write_text(MASTER)
        subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)
        one_line(command("-c", str(target), "--role", "mx", "--apply"), "not writable")
        one_line(command("-c", str(target), "--rollback"), "not writable")
        assert files(target) == {"main.cf": MAIN, "master.cf": MASTER}
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_reload_needs_apply_or_rollback(etc: Path) -> None:
    one_line(command("-c", str(etc), "--role", "mx", "--reload"), "--reload goes with")
