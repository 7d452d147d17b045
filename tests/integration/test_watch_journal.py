"""``postwarden logs watch`` on a real journal read by the real journalctl; SIGHUP reloads.

No journald runs here, so the journal files are written by ``systemd-journal-remote`` (the
Debian package of that name) from the journal export format: the same on-disk format,
the same cursors, read by the same ``journalctl --directory`` that follows a collected
journal. A real ``postwarden logs watch`` process (a dry run) follows that directory; it
is stopped, more is logged (appended to a journal file, and a new file beside it),
started again: what was logged while it was down is read exactly once (its line counter
equals what was written, and a brute force from before the restart is not banned a
second time), a brute force in the journal leads to a (dry-run) ban, and a journal file
that appears while it runs is read too (journalctl --follow watches the directory). A
first start keeps its place before anything is read, and a cursor journalctl refuses
means the end of the journal, said once.

The SIGHUP test follows a plain file: a new threshold applies, a broken file is refused
with one line and changes nothing, an action change keeps the counts, a newly ignored
network loses its ban, a source change waits for a restart, and SIGTERM ends it (exit 0)
after a last checkpoint.

Security: everything is files under the test's temporary directory and one metrics port
on 127.0.0.1.
Standards: systemd's Journal Export Format; journalctl(1); journal cursors
(sd_journal_get_cursor(3)); signal(7).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
JOURNALCTL = "/usr/bin/journalctl"
THRESHOLD = 4


class Journal:
    """Journal files in ``directory``, written by systemd-journal-remote."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir()
        self.boot = uuid.uuid4().hex
        self.monotonic = 1_000_000

    def write(self, name: str, entries: list[tuple[str, str, int]]) -> None:
        """Append (identifier, message, facility) entries to ``name``.journal."""
        now = int(time.time() * 1e6)
        export: list[str] = []
        for identifier, message, facility in entries:
            self.monotonic += 1000
            export.append("".join(f"{key}={value}\n" for key, value in (
                ("__REALTIME_TIMESTAMP", now), ("__MONOTONIC_TIMESTAMP", self.monotonic),
                ("_BOOT_ID", self.boot), ("_HOSTNAME", "mx1"), ("_TRANSPORT", "syslog"),
                ("PRIORITY", 6), ("SYSLOG_FACILITY", facility),
                ("SYSLOG_IDENTIFIER", identifier), ("_PID", 4000 + len(export)),
                ("MESSAGE", message))) + "\n")
            now += 1000
        result = subprocess.run([JOURNAL_REMOTE, f"--output={self.directory / name}.journal",
                                 "-"], input="".join(export), capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stderr

    def cursors(self) -> list[str]:
        """Every entry's cursor, in journal order (journalctl itself)."""
        result = subprocess.run([JOURNALCTL, f"--directory={self.directory}", "--output=json",
                                 "--no-pager"], capture_output=True, text=True, timeout=60,
                                check=True)
        return [json.loads(line)["__CURSOR"] for line in result.stdout.splitlines()]


def connects(first: int, count: int) -> list[tuple[str, str, int]]:
    return [("postfix/smtpd", f"connect from unknown[192.0.2.{n}]", 2)
            for n in range(first, first + count)]


def sasl_failures(client: str, count: int) -> list[tuple[str, str, int]]:
    return [("postfix/submission/smtpd", f"warning: unknown[{client}]: SASL LOGIN "
             "authentication failed: UGFzc3dvcmQ6", 2)] * count


def dovecot_failures(client: str, count: int) -> list[tuple[str, str, int]]:
    return [("dovecot", f"imap-login: Disconnected (auth failed, 1 attempts in 2 secs): "
             f"user=<u{n}@example.org>, method=PLAIN, rip={client}, lip=192.0.2.1, TLS", 2)
            for n in range(count)]


def not_mail(count: int) -> list[tuple[str, str, int]]:
    """Facility daemon (3): outside the default match SYSLOG_FACILITY=2."""
    return [("cron", f"warning: unknown[198.51.100.99]: SASL LOGIN authentication failed: "
             f"x{n}", 3) for n in range(count)]


class Watch:
    """``postwarden logs watch --dry-run`` as a child process, its stderr in a file."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.err = config.with_name(f"watch-{time.monotonic_ns()}.err")
        with open(self.err, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "postwarden", "logs", "watch", "--config", str(config),
                 "--dry-run", *extra], stdin=subprocess.DEVNULL, stderr=handle)
        self.port = 0

    def text(self) -> str:
        return self.err.read_text()

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{what}; the watcher said:\n{self.text()}")
            time.sleep(0.05)

    def wait_for_text(self, text: str, count: int = 1) -> None:
        self.wait_for(lambda: self.text().count(text) >= count, f"never said {text!r}")

    def metric(self, name: str) -> float:
        if not self.port:
            found = re.search(r"metrics on http://127\.0\.0\.1:([0-9]+)/", self.text())
            if not found:
                return -1
            self.port = int(found[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics",
                                    timeout=10) as reply:
            body = reply.read().decode()
        found = re.search(rf"^{name} ([0-9.e+]+)$", body, re.MULTILINE)
        return float(found[1]) if found else 0.0

    def signal(self, number: int) -> None:
        self.process.send_signal(number)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def settled(watch: Watch, name: str, value: float, still: float = 1.5) -> None:
    """The counter reaches ``value`` and stays there (nothing read twice)."""
    watch.wait_for(lambda: watch.metric(name) >= value, f"{name} never reached {value}")
    time.sleep(still)
    assert watch.metric(name) == value, watch.text()


def journal_config(tmp_path: Path, journal: Journal, extra: str = "") -> tuple[Path, Path]:
    """A config following ``journal`` with a position file (and ``extra`` lines of its
    [watch] section); the config's path and the position file's."""
    position = tmp_path / "watch.position"
    config = tmp_path / "postwarden.toml"
    config.write_text(f'[watch]\njournal = true\njournal_directory = "{journal.directory}"\n'
                      f'position_file = "{position}"\n{extra}[watch.alerts]\nsyslog = false\n')
    return config, position


def test_journal_position_survives_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    config, position = journal_config(
        tmp_path, journal, f'store = "sqlite://{tmp_path}/w.db"\n'
                           f"[watch.detect.sasl_client]\nthreshold = {THRESHOLD}\n")
    # A position from an earlier run: after the first entry (a first run would start at
    # the end; pinning it makes every count below exact).
    journal.write("a", connects(1, 1))
    position.write_text(json.dumps({"source": "journal", "directory": str(journal.directory),
                                    "cursor": journal.cursors()[0]}))
    journal.write("a", connects(2, 10) + sasl_failures("203.0.113.10", THRESHOLD)
                  + not_mail(2))
    first = Watch(config, "--metrics", "127.0.0.1:0")
    try:
        settled(first, "postwarden_watch_lines_total", 10 + THRESHOLD)
        first.wait_for_text("client=203.0.113.10 action=ban dry_run=yes check=sasl_client")
    finally:
        assert first.stop() == 0
    saved = json.loads(position.read_text())
    assert saved["source"] == "journal" and saved["directory"] == str(journal.directory)
    assert saved["cursor"] == journal.cursors()[-3]        # the last mail entry read

    # While the watcher is down: appended to the same file, and a new file beside it.
    journal.write("a", connects(20, 5) + dovecot_failures("198.51.100.20", THRESHOLD))
    journal.write("b", connects(30, 3) + not_mail(1))
    second = Watch(config, "--metrics", "127.0.0.1:0")
    try:
        settled(second, "postwarden_watch_lines_total", 5 + THRESHOLD + 3)
        assert second.metric("postfix_smtpd_connects_total") == 5 + 3
        second.wait_for_text("client=198.51.100.20 action=ban dry_run=yes check=sasl_client")
        # A journal file that appears while it runs (journalctl --follow sees it).
        journal.write("c", sasl_failures("203.0.113.30", THRESHOLD))
        second.wait_for_text("client=203.0.113.30 action=ban dry_run=yes check=sasl_client")
        settled(second, "postwarden_watch_lines_total", 5 + THRESHOLD + 3 + THRESHOLD)
    finally:
        assert second.stop() == 0
    err = second.text()
    assert "resuming after the cursor" in err
    assert "203.0.113.10" not in err                     # banned before: not read again
    assert json.loads(position.read_text())["cursor"] == journal.cursors()[-1]


def test_a_first_start_keeps_its_place_before_anything_is_read(tmp_path: Path) -> None:
    """No position yet: the watcher starts after the journal's last entry and writes that
    down at once, so what is logged after a quick stop is read at the next start."""
    journal = Journal(tmp_path / "journal")
    config, position = journal_config(tmp_path, journal)
    journal.write("a", connects(1, 5))
    first = Watch(config)
    first.wait_for_text("active ban(s) applied")
    assert first.stop() == 0
    assert json.loads(position.read_text())["cursor"] == journal.cursors()[-1]
    journal.write("a", connects(10, 3))
    second = Watch(config, "--metrics", "127.0.0.1:0")
    try:
        settled(second, "postwarden_watch_lines_total", 3)
    finally:
        assert second.stop() == 0


def test_a_cursor_journalctl_refuses_means_the_end(tmp_path: Path) -> None:
    """A damaged cursor in the position file: journalctl refuses it, the watcher says so
    once and follows from the end."""
    journal = Journal(tmp_path / "journal")
    config, position = journal_config(tmp_path, journal)
    journal.write("a", connects(1, 3))
    position.write_text(json.dumps({"source": "journal", "directory": str(journal.directory),
                                    "cursor": "s=zz;i=zz"}))
    watch = Watch(config, "--metrics", "127.0.0.1:0")
    try:
        watch.wait_for_text("journalctl refused to start after the saved position")
        time.sleep(1.0)    # journalctl found the end
        journal.write("a", connects(10, 2))
        settled(watch, "postwarden_watch_lines_total", 2)
    finally:
        assert watch.stop() == 0
    assert watch.text().count("journalctl refused") == 1


WATCH_TABLE = """\
[watch]
file = "{log}"
position_file = "{position}"
store = "sqlite://{root}/w.db"
[watch.detect.sasl_client]
threshold = {threshold}
action = "{action}"
[watch.ban]
aggregate = 0
ignore = [{ignore}]
[watch.alerts]
syslog = false
"""


def failures(client: str, count: int) -> str:
    return "".join(f"2026-11-30T06:00:0{n}+00:00 mx1 postfix/smtpd[7]: warning: "
                   f"unknown[{client}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
                   for n in range(count))


def test_sighup_reloads_and_sigterm_stops_after_a_checkpoint(tmp_path: Path) -> None:
    log, position, config = tmp_path / "mail.log", tmp_path / "pos", tmp_path / "pw.toml"
    log.write_text("")

    def configure(threshold: int, action: str = "ban", ignore: str = "",
                  path: Path = log) -> None:
        config.write_text(WATCH_TABLE.format(log=path, position=position, root=tmp_path,
                                             threshold=threshold, action=action,
                                             ignore=ignore))

    def written(text: str) -> None:
        with open(log, "a") as handle:
            handle.write(text)

    configure(10)
    watch = Watch(config, "--metrics", "127.0.0.1:0")
    try:
        watch.wait_for_text("active ban(s) applied")
        written(failures("198.51.100.1", 4))               # 4 < 10: nothing yet
        settled(watch, "postwarden_watch_lines_total", 4, still=0)
        configure(4)
        watch.signal(signal.SIGHUP)
        watch.wait_for_text("watch: reloaded")
        written(failures("198.51.100.2", 4))               # the new threshold applies
        watch.wait_for_text("client=198.51.100.2 action=ban dry_run=yes")

        config.write_text("[watch.detect.sasl_client]\nthreshold = 0\n")
        watch.signal(signal.SIGHUP)
        watch.wait_for_text("reload refused, the running configuration is kept")
        written(failures("198.51.100.3", 4))               # still 4, still running
        watch.wait_for_text("client=198.51.100.3 action=ban dry_run=yes")

        written(failures("198.51.100.4", 3))
        settled(watch, "postwarden_watch_lines_total", 15, still=0)
        configure(4, action="alert")                       # only the action: counts kept
        watch.signal(signal.SIGHUP)
        watch.wait_for_text("watch: reloaded", 2)
        written(failures("198.51.100.4", 1))
        watch.wait_for_text("subject=198.51.100.4 action=alert check=sasl_client")

        configure(4, action="alert", ignore='"198.51.100.0/24"', path=tmp_path / "other.log")
        watch.signal(signal.SIGHUP)
        watch.wait_for_text("watch: reloaded", 3)
        err = watch.text()
        assert "client=198.51.100.2 action=unban check=sasl_client reason=protected" in err
        assert "client=198.51.100.3 action=unban" in err
        assert "reload: file changed: applied at the next start" in err
        written(failures("198.51.100.5", 4))               # still the old file: read
        watch.wait_for_text("subject=198.51.100.5 action=alert")
    finally:
        code = watch.stop()
    err = watch.text()
    assert code == 0, err
    assert "198.51.100.1" not in err and "Traceback" not in err
    assert json.loads(position.read_text())["offset"] == log.stat().st_size
