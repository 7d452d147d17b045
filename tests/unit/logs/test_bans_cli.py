"""``logs bans list`` and ``logs bans unban`` on a real SQLite store and a real access map,
with a watcher's ``BanManager`` beside them that must drop an unbanned network for good."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest

from postwarden.cli import logs_bans
from postwarden.cli.common import Parser
from postwarden.errors import PostwardenError
from postwarden.logs.bans import AccessMapBackend, BanManager
from postwarden.logs.bans_store import SqliteBanStore
from postwarden.logs.detect import Finding
from postwarden.settings import load

ATTACKER = "198.51.100.7"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command as ``postwarden logs ...`` runs it: exit code, stdout, stderr."""
    parser = Parser(prog="postwarden logs")
    logs_bans.add(parser.add_subparsers(dest="logs_command", parser_class=Parser))
    try:
        parsed = parser.parse_args(list(args))
        code = int(parsed.handler(parsed))
    except PostwardenError as exc:
        print(f"postwarden: {exc}", file=__import__("sys").stderr)
        code = 2
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "postwarden.toml"
    path.write_text(f'[watch]\nstore = "sqlite://{tmp_path}/watch.db"\n'
                    '[watch.ban]\nbackend = "access_map"\n'
                    f'[watch.access_map]\npath = "{tmp_path}/bans"\ntype = "texthash"\n')
    return path


def watcher(config: Path) -> BanManager:
    settings = load(config).watch
    manager = BanManager(settings, SqliteBanStore(settings.store.removeprefix("sqlite://")),
                         AccessMapBackend(settings.access_map),
                         protected=[ipaddress.ip_network("127.0.0.0/8")], origin="mx1")
    manager.start(time.time())
    return manager


def offend(manager: BanManager, client: str, detector: str = "sasl_client") -> None:
    finding = Finding(detector, client, client, "", 5, 600, "ban",
                      "5 failed logins in 600s (last user \x1b[31m?)", 0.0)
    assert manager.offend(finding, time.time()) is not None


def test_list_text_json_and_all(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    manager = watcher(config)
    offend(manager, ATTACKER)
    offend(manager, "2001:db8::7", "relay_probe")
    code, out, _ = run(capsys, "bans", "list", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["network", "detector", "count", "since", "until", "origin",
                                "reason"]
    assert lines[1].split()[:3] == ["198.51.100.7", "sasl_client", "1"]
    assert lines[2].split()[:3] == ["2001:db8::7", "relay_probe", "1"]
    assert "\x1b" not in out and "\\x1b[31m" in out          # log text is escaped
    assert lines[-1].startswith("2 active ban(s) in sqlite://")
    code, out, _ = run(capsys, "bans", "list", "--config", str(config), "--format", "json")
    bans = json.loads(out)["bans"]
    assert [(b["network"], b["detector"], b["count"], b["active"], b["origin"])
            for b in bans] == [(f"{ATTACKER}/32", "sasl_client", 1, True, "mx1"),
                               ("2001:db8::7/128", "relay_probe", 1, True, "mx1")]
    assert 3590 <= bans[0]["remaining"] <= 3600 and bans[0]["until"].endswith("Z")
    assert run(capsys, "bans", "unban", ATTACKER, "--config", str(config))[0] == 0
    code, out, _ = run(capsys, "bans", "list", "--config", str(config), "--format", "json")
    assert [b["network"] for b in json.loads(out)["bans"]] == ["2001:db8::7/128"]
    code, out, _ = run(capsys, "bans", "list", "--config", str(config), "--all")
    assert f"{ATTACKER} " in out and "(ended)" in out
    assert out.splitlines()[-1].startswith("1 active ban(s), 1 ended in")


def test_list_reads_only(capsys: pytest.CaptureFixture[str], config: Path,
                         tmp_path: Path) -> None:
    code, _, err = run(capsys, "bans", "list", "--config", str(config))
    assert code == 2 and err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "watch.db").exists()               # not created by a listing
    watcher(config).store.close()
    before = (tmp_path / "watch.db").stat().st_mtime_ns
    assert run(capsys, "bans", "list", "--config", str(config))[0] == 0
    assert (tmp_path / "watch.db").stat().st_mtime_ns == before


def test_unban_lifts_in_store_and_map_and_the_watcher_does_not_re_add(
        capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path) -> None:
    manager = watcher(config)
    offend(manager, ATTACKER)
    offend(manager, "198.51.100.99")
    assert ATTACKER in (tmp_path / "bans").read_text()
    code, out, _ = run(capsys, "bans", "unban", ATTACKER, "--config", str(config))
    assert code == 0
    assert out.startswith(f"postwarden: unbanned {ATTACKER} (detector sasl_client, offence 1")
    text = (tmp_path / "bans").read_text()
    assert f"{ATTACKER} REJECT" not in text and "198.51.100.99 REJECT" in text
    for _ in range(3):                                        # the watcher's next ticks
        manager.tick(time.time())
        time.sleep(0.01)
    assert sorted(manager.applied) == ["198.51.100.99/32"]
    assert manager.counts["errors"] == 0
    offend(manager, "203.0.113.100")                           # a later rewrite of the map
    assert f"{ATTACKER} REJECT" not in (tmp_path / "bans").read_text()
    # the same client offending again is a second offence (remembered)
    offend(manager, ATTACKER)
    assert manager.applied[f"{ATTACKER}/32"].count == 2


def test_unban_forget_resets_escalation(capsys: pytest.CaptureFixture[str],
                                       config: Path) -> None:
    manager = watcher(config)
    offend(manager, ATTACKER)
    code, out, _ = run(capsys, "bans", "unban", ATTACKER, "--forget", "--config", str(config))
    assert code == 0 and f"forgot the past offences of {ATTACKER}" in out
    manager.tick(time.time())
    offend(manager, ATTACKER)
    assert manager.applied[f"{ATTACKER}/32"].count == 1


def test_unban_not_banned_and_covered(capsys: pytest.CaptureFixture[str],
                                      config: Path) -> None:
    manager = watcher(config)
    code, _, err = run(capsys, "bans", "unban", ATTACKER, "--config", str(config))
    assert (code, err) == (1, f"postwarden: {ATTACKER}: not banned\n")
    for i in (1, 2, 3):                                        # aggregated to the /24
        offend(manager, f"198.51.100.{i}")
    assert "198.51.100.0/24" in manager.applied
    code, _, err = run(capsys, "bans", "unban", "198.51.100.2", "--config", str(config))
    assert code == 1
    assert err == ("postwarden: 198.51.100.2: not banned: it is inside the banned network "
                   "198.51.100.0/24; unban that\n")
    code, out, _ = run(capsys, "bans", "unban", "198.51.100.0/24", "--config", str(config))
    assert code == 0 and "unbanned 198.51.100.0/24" in out
    manager.tick(time.time())
    assert manager.applied == {}


def test_unban_a_network_lifts_what_is_inside(capsys: pytest.CaptureFixture[str],
                                              config: Path) -> None:
    manager = watcher(config)
    offend(manager, "203.0.113.5")
    offend(manager, "203.0.113.6")
    offend(manager, "192.0.2.1")
    code, out, _ = run(capsys, "bans", "unban", "203.0.113.0/24", "--config", str(config))
    assert code == 0 and out.count("unbanned 203.0.113.") == 2
    manager.tick(time.time())
    assert list(manager.applied) == ["192.0.2.1/32"]


def test_unban_ipv4_mapped_and_ipv6(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    manager = watcher(config)
    offend(manager, ATTACKER)
    offend(manager, "2001:db8::7")
    assert run(capsys, "bans", "unban", f"::ffff:{ATTACKER}", "--config", str(config))[0] == 0
    assert run(capsys, "bans", "unban", "2001:db8::7", "--config", str(config))[0] == 0
    manager.tick(time.time())
    assert manager.applied == {}


@pytest.mark.parametrize("target", ["198.51.100.7/24", " 198.51.100.7", "198.51.100.7 ",
                                    "[::1]", "fe80::1%eth0", "198.51.100", "01.2.3.4",
                                    "198.51.100.7/33", "example.org", "", "1.2.3.4;reboot",
                                    "2001:db8::/64" + " " * 40])
def test_unban_refuses_what_is_not_strictly_a_network(capsys: pytest.CaptureFixture[str],
                                                      config: Path, target: str) -> None:
    code, out, err = run(capsys, "bans", "unban", target, "--config", str(config))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("postwarden: '") or "unrecognized" in err or "expected" in err
