"""The watcher pipeline: lines -> parse -> detectors -> bans, alerts and metrics; the CLI."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from postwarden.errors import ConfigError
from postwarden.logs.bans_store import Ban, MemoryBanStore, SqliteBanStore
from postwarden.logs.follow import FileFollower
from postwarden.logs.watch import Watcher
from postwarden.logs.watch_settings import DETECTORS, BanSettings, Rule, WatchSettings

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def brute_force(ip: str, n: int = 5, second: int = 0) -> list[str]:
    return [f"Nov 30 06:00:{second + i:02d} mx1 postfix/submission/smtpd[100]: warning: "
            f"unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"
            for i in range(n)]


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, alert: object) -> None:
        self.sent.append(alert)


def test_brute_force_becomes_one_ban_and_one_alert() -> None:
    sink = Recorder()
    settings = WatchSettings(ban=BanSettings(backend="none"))
    w = Watcher(settings, store=MemoryBanStore(), sinks=[sink], protected=LOOPBACK,
                year=2026, host="mx1")
    w.start()
    for line in brute_force("198.51.100.7", 12) + brute_force("127.0.0.1", 12):
        w.feed(line)
    w.alerter.flush()
    assert [b.network for b in w.bans.active()] == ["198.51.100.7/32"]
    assert len(sink.sent) == 1                       # loopback: found, never banned
    assert w.bans.counts["refused"] == 2
    text = w.metrics.render()
    assert 'postwarden_watch_bans_total{detector="sasl_client"} 1' in text
    assert 'postwarden_watch_findings_total{detector="sasl_client",action="ban"} 4' in text
    w.close()


def test_follow_loop_bans_within_the_threshold(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    store = SqliteBanStore(str(tmp_path / "watch.db"))
    w = Watcher(WatchSettings(ban=BanSettings(backend="none")), store=store, sinks=[],
                protected=LOOPBACK, year=2026)
    stop = threading.Event()
    runner = threading.Thread(target=w.run, args=(FileFollower(log), stop))
    runner.start()
    try:
        with open(log, "a") as handle:
            handle.write("\n".join(brute_force("203.0.113.9", 4)) + "\n")
        time.sleep(0.6)
        assert w.bans.active() == []                  # 4 < threshold 5
        with open(log, "a") as handle:
            handle.write(brute_force("203.0.113.9", 1, second=30)[0] + "\n")
        deadline = time.monotonic() + 5
        while not w.bans.active() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(10)
    assert [b.network for b in store.active(time.time())] == ["203.0.113.9/32"]


def test_cli_replay_dry_run(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(brute_force("198.51.100.7", 5)) + "\n")
    config = tmp_path / "postwarden.toml"
    config.write_text(f'[watch]\nstore = "sqlite://{tmp_path}/w.db"\n')
    result = subprocess.run([sys.executable, "-m", "postwarden", "logs", "watch", str(log),
                             "--config", str(config), "--once", "--dry-run", "--year", "2026"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "client=198.51.100.7 action=ban dry_run=yes check=sasl_client" in result.stderr
    assert "5 lines" in result.stderr and "1 would-be bans" in result.stderr
    assert not (tmp_path / "w.db").exists()           # dry run: the store is not touched


def test_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "postwarden.toml"
    config.write_text("[watch.ban]\nbackend = \"iptables\"\n")
    result = subprocess.run([sys.executable, "-m", "postwarden", "logs", "watch",
                             "--config", str(config), "--check-config"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"{config}: watch.ban.backend" in result.stderr


def test_restart_reapplies_bans(tmp_path: Path) -> None:
    path = str(tmp_path / "watch.db")
    store = SqliteBanStore(path)
    now = time.time()
    store.put(Ban("192.0.2.77/32", now, now + 600, 1, "relay_probe"), now + 7200)
    store.close()
    w = Watcher(WatchSettings(ban=BanSettings(backend="none")), store=SqliteBanStore(path),
                sinks=[], protected=LOOPBACK)
    w.start()
    assert [b.network for b in w.bans.active()] == ["192.0.2.77/32"]
    w.close()


def rules(**thresholds: int) -> dict[str, Rule]:
    return {name: dataclasses.replace(rule, threshold=thresholds.get(name, rule.threshold))
            for name, rule in DETECTORS.items()}


def test_reload_keeps_counts_and_bans_and_applies_new_rules() -> None:
    """An action changed: the counts go on. A threshold changed: it applies at once.
    Bans stay; a ban inside a network now on the ignore list is lifted."""
    settings = WatchSettings(ban=BanSettings(backend="none"))
    w = Watcher(settings, store=MemoryBanStore(), sinks=[], year=2026)
    w.start()
    for line in brute_force("198.51.100.7", 5) + brute_force("203.0.113.9", 3):
        w.feed(line)
    assert [b.network for b in w.bans.active()] == ["198.51.100.7/32"]
    alert = dataclasses.replace(DETECTORS["sasl_client"], action="alert")
    assert w.reload(lambda: dataclasses.replace(
        settings, detectors={**DETECTORS, "sasl_client": alert}))
    for line in brute_force("203.0.113.9", 2, second=10):     # 3 before + 2 = 5
        w.feed(line)
    assert w.findings[-1].subject == "203.0.113.9" and w.findings[-1].action == "alert"
    assert w.reload(lambda: dataclasses.replace(settings, detectors=rules(sasl_client=2)))
    for line in brute_force("192.0.2.55", 2, second=20):
        w.feed(line)
    assert [b.network for b in w.bans.active()] == ["192.0.2.55/32", "198.51.100.7/32"]
    ignore = dataclasses.replace(settings.ban, ignore=("198.51.100.0/24",))
    assert w.reload(lambda: dataclasses.replace(settings, detectors=rules(sasl_client=2),
                                                ban=ignore))
    assert [b.network for b in w.bans.active()] == ["192.0.2.55/32"]
    assert [b.network for b in w.bans.store.active(time.time() + 1)] == ["192.0.2.55/32"]
    for line in brute_force("198.51.100.7", 4, second=30):
        w.feed(line)
    assert [b.network for b in w.bans.active()] == ["192.0.2.55/32"]
    w.close()


def test_reload_restarts_only_the_detector_whose_threshold_changed(
        caplog: pytest.LogCaptureFixture) -> None:
    """Another detector's threshold changed: this one's counts go on."""
    settings = WatchSettings(ban=BanSettings(backend="none"))
    w = Watcher(settings, store=MemoryBanStore(), sinks=[], year=2026)
    w.start()
    for line in brute_force("203.0.113.9", 3):
        w.feed(line)
    with caplog.at_level("INFO"):
        assert w.reload(lambda: dataclasses.replace(settings,
                                                    detectors=rules(sasl_account=50)))
    assert any(r.getMessage().endswith("counting starts again for sasl_account")
               for r in caplog.records)
    for line in brute_force("203.0.113.9", 2, second=10):     # 3 before + 2 = 5
        w.feed(line)
    assert [b.network for b in w.bans.active()] == ["203.0.113.9/32"]
    w.close()


def test_reload_refuses_a_bad_file_and_what_needs_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = WatchSettings(ban=BanSettings(backend="none"), file="/var/log/mail.log")

    def bad() -> WatchSettings:
        raise ConfigError(tmp_path / "postwarden.toml", None, "watch.ban.backend: 'x'")

    w = Watcher(settings, store=MemoryBanStore(), sinks=[], protected=LOOPBACK, year=2026)
    assert not w.reload(bad)
    assert w.settings is settings
    assert "reload refused, the running configuration is kept: " in caplog.text
    assert w.reload(lambda: dataclasses.replace(
        settings, file="/var/log/other.log", journal=True, store="sqlite:///x.db",
        ban=dataclasses.replace(settings.ban, backend="nftables", duration=60)))
    assert (w.settings.file, w.settings.journal, w.settings.store) == (
        settings.file, False, settings.store)
    assert w.settings.ban.backend == "none" and w.bans.ban.duration == 60
    assert ("reload: file, journal, store, ban.backend changed: applied at the next start"
            in caplog.text)
    w.close()
