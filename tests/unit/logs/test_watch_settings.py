"""[watch] settings: defaults, values, and one-line errors naming watch.<key> and the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from postwarden import settings
from postwarden.errors import ConfigError
from postwarden.logs.watch_settings import WatchSettings

FULL = """
[watch]
file = "/var/log/mail.log"
store = "redis://127.0.0.1:6379/0?prefix=pw:"
dry_run = true
max_keys = 5000
[watch.detect.sasl_client]
threshold = 3
window = "5m"
[watch.detect.bulk_sender]
factor = 20
action = "ban"
[watch.ban]
backend = "access_map"
duration = "2h"
factor = 3
max_duration = "4w"
aggregate = 5
ignore = ["192.0.2.0/24", "2001:db8::1"]
mynetworks = ["10.0.0.0/8"]
[watch.nftables]
command = ["/usr/sbin/ip", "netns", "exec", "ns1", "/usr/sbin/nft"]
ports = [587, 25, 25]
[watch.access_map]
type = "cidr"
path = "/etc/postfix/bans.cidr"
reload_command = ["/usr/sbin/postfix", "reload"]
[watch.alerts]
webhook = "https://hooks.example.net/x"
mail_to = ["postmaster@example.org"]
max_per_hour = 10
"""


def parse(text: str) -> WatchSettings:
    data: dict[str, Any] = tomllib.loads(text)
    return WatchSettings.from_toml(data.get("watch", {}), "/etc/postwarden/postwarden.toml")


def test_defaults() -> None:
    s = WatchSettings.from_toml({}, "x.toml")
    assert s.ban.backend == "nftables" and s.rule("sasl_client").threshold == 5
    assert s.nftables.ports == (25, 465, 587)
    assert "sasl_client" in s.summary()


def test_full() -> None:
    s = parse(FULL)
    assert s.rule("sasl_client").threshold == 3 and s.rule("sasl_client").window == 300
    assert s.rule("bulk_sender").factor == 20 and s.rule("bulk_sender").action == "ban"
    assert s.ban.duration == 7200 and s.ban.max_duration == 28 * 86400
    assert s.ban.ignore == ("192.0.2.0/24", "2001:db8::1/128")
    assert s.nftables.ports == (25, 587)
    assert s.access_map.reload_command == ("/usr/sbin/postfix", "reload")
    assert [str(n) for n in s.protected()][:2] == ["127.0.0.0/8", "::1/128"]


@pytest.mark.parametrize(("text", "key"), [
    ("[watch]\nthreshold = 3", "watch.threshold: unknown key"),
    ("[watch.detect.sasl_clients]\nthreshold = 3", "watch.detect.sasl_clients: unknown "
                                                   "detector"),
    ("[watch.detect.sasl_client]\nthreshold = 0", "watch.detect.sasl_client.threshold: 0 is "
                                                  "out of range"),
    ("[watch.detect.sasl_client]\nwindow = \"5 minutes\"", "watch.detect.sasl_client.window"),
    ("[watch.detect.sasl_client]\nfactor = 2", "watch.detect.sasl_client.factor: unknown key"),
    ("[watch.detect.relay_probe]\naction = \"drop\"", "watch.detect.relay_probe.action"),
    ("[watch.ban]\nbackend = \"iptables\"", "watch.ban.backend"),
    ("[watch.ban]\nignore = [\"not-a-net\"]", "watch.ban.ignore: 'not-a-net' is not"),
    ("[watch.ban]\nduration = \"2h\"\nmax_duration = \"1h\"", "watch.ban.max_duration"),
    ("[watch.nftables]\ncommand = [\"nft\"]", "watch.nftables.command: 'nft': give the "
                                              "program as an absolute path"),
    ("[watch.nftables]\ncommand = [\"/usr/sbin/nft\", \"; rm -rf /\"]", "watch.nftables.command"),
    ("[watch.nftables]\ntable = \"a b\"", "watch.nftables.table"),
    ("[watch.nftables]\nports = [0]", "watch.nftables.ports"),
    ("[watch.access_map]\naction = \"MAYBE\"", "watch.access_map.action"),
    ("[watch.alerts]\nwebhook = \"file:///etc/passwd\"", "watch.alerts.webhook"),
    ("[watch]\nstore = \"mysql://x\"", "watch.store: unknown scheme"),
    ("[watch]\ndry_run = \"yes\"", "watch.dry_run: expected true or false, got str"),
    ("[watch]\njournal_directory = \"remote\"", "watch.journal_directory: give an absolute"),
    ("[watch]\njournal_catchup = \"1 day\"", "watch.journal_catchup"),
    ("[watch]\nuser = \"post warden\"", "watch.user: 'post warden' is not a user"),
    ("[watch]\nuser = 1000", "watch.user: expected a string"),
    ("[watch]\ngroups = \"adm\"", "watch.groups: expected a list of strings"),
    ("[watch]\ngroups = [\"adm\", \"a;b\"]", "watch.groups: 'a;b' is not a group name"),
    ("[watch]\ngroups = [\"adm\", \"adm\"]", "watch.groups: a group is named twice"),
])
def test_errors_name_the_key_and_the_file(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith("/etc/postwarden/postwarden.toml: "), message
    assert key in message, message


def test_load_takes_the_store_url_from_store(tmp_path: Path) -> None:
    path = tmp_path / "postwarden.toml"
    path.write_text('[store]\nurl = "sqlite:///var/lib/x.db"\n[watch]\ndry_run = true\n')
    assert settings.load(path).watch.store == "sqlite:///var/lib/x.db"
    path.write_text('[store]\nurl = "sqlite:///var/lib/x.db"\n[watch]\nstore = "redis://h:1/0"\n')
    assert settings.load(path).watch.store == "redis://h:1/0"
    path.write_text("[watch]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"watch\.bogus"):
        settings.load(path)


def test_journal_and_privilege_settings() -> None:
    """Defaults: the system journal, a day of catch-up, no user (as [policyd] user: a
    root start must name one), group adm; and the values given."""
    d = WatchSettings.from_toml({}, "x.toml")
    assert (d.journal_directory, d.journal_catchup, d.user, d.groups) == ("", 86400, None,
                                                                          ("adm",))
    s = parse('[watch]\njournal = true\njournal_directory = "/var/log/journal/remote"\n'
              'journal_catchup = "6h"\nuser = "postwarden"\n'
              'groups = ["adm", "systemd-journal"]\n')
    assert s.journal_directory == "/var/log/journal/remote" and s.journal_catchup == 6 * 3600
    assert s.user == "postwarden" and s.groups == ("adm", "systemd-journal")
    assert "source journal /var/log/journal/remote" in s.summary()
    assert "user postwarden (groups adm,systemd-journal)" in s.summary()
    assert parse("[watch]\ngroups = []\n").groups == ()
