"""The ``[watch]`` section of postwarden.toml: detectors, bans, alerts, strictly checked.

Security: the file is trusted configuration but checked as input: an unknown key, a wrong
type or an out-of-range value stops the load with one line naming the file and the key
(``watch.<key>``), so a misspelt threshold never silently means "default". Commands
(``nft``, ``postmap``, ``sendmail``, a reload command) are argument lists of absolute
paths and plain words, never shell text. A store URL may carry a password; it is never
quoted in an error or a summary.
Standards: TOML 1.0; postconf(5) time units (s, m, h, d, w); access(5) (the reject action
of the access-map backend); postconf(5) ``mynetworks``.

Theory of operation
-------------------
Every table is read through ``_Table``, which hands out typed values by key and remembers
which keys it handed out; whatever is left is an unknown key. Defaults live in the
dataclasses, so a missing ``[watch]`` and an empty one mean the same thing. Each detector
has the same four knobs (``enabled``, ``threshold``, ``window``, ``action``); the bulk
sender detector adds ``factor``, its multiple of the account's own baseline.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from postwarden.errors import ConfigError, clip
from postwarden.tables import Section

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ACTIONS = ("ban", "alert", "log")
BACKENDS = ("nftables", "access_map", "none")
MAP_TYPES = ("hash", "texthash", "cidr", "lmdb")
DEFAULT_STORE = "sqlite:///var/lib/postwarden/watch.db"
_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./-]{1,200}\Z")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}\Z")
_MATCH = re.compile(r"[A-Z0-9_]{1,64}=[^\s\0]{0,200}\Z")
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")  # as settings.account checks


@dataclass(frozen=True)
class Rule:
    """One detector: ``threshold`` events within ``window`` seconds trigger ``action``."""

    enabled: bool = True
    threshold: int = 5
    window: int = 600
    action: str = "ban"
    factor: float = 0.0      # bulk_sender only: a multiple of the account's baseline


# Defaults per detector (see docs/watch.md for what each counts).
DETECTORS: dict[str, Rule] = {
    "sasl_client": Rule(threshold=5, window=600, action="ban"),
    "sasl_account": Rule(threshold=30, window=600, action="alert"),
    "account_clients": Rule(threshold=10, window=3600, action="alert"),
    "relay_probe": Rule(threshold=3, window=600, action="ban"),
    "postscreen": Rule(threshold=3, window=600, action="ban"),
    "ratelimit": Rule(threshold=5, window=600, action="alert"),
    "bulk_sender": Rule(threshold=200, window=3600, action="alert", factor=10.0),
    "tls_failure": Rule(threshold=20, window=600, action="log"),
}


@dataclass(frozen=True)
class BanSettings:
    backend: str = "nftables"
    duration: int = 3600                 # first ban
    factor: float = 2.0                  # each repeat within ``memory`` multiplies it
    max_duration: int = 7 * 86400
    memory: int = 7 * 86400              # how long a past ban counts as a previous offence
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    aggregate: int = 3                   # distinct offenders in one prefix -> ban the prefix
    aggregate_window: int = 3600
    ignore: tuple[str, ...] = ()
    mynetworks: tuple[str, ...] = ()
    postfix_config_directory: str = ""   # also take mynetworks from this main.cf


@dataclass(frozen=True)
class NftSettings:
    command: tuple[str, ...] = ("/usr/sbin/nft",)
    table: str = "postwarden"
    ports: tuple[int, ...] = (25, 465, 587)
    priority: int = -10


@dataclass(frozen=True)
class AccessMapSettings:
    path: str = "/etc/postfix/postwarden_bans"
    type: str = "hash"
    postmap: str = "/usr/sbin/postmap"
    config_directory: str = ""           # postmap -c DIR (default: Postfix's own)
    action: str = "REJECT access denied: client banned by postwarden"
    reload_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlertSettings:
    webhook: str = ""
    mail_to: tuple[str, ...] = ()
    mail_from: str = "postwarden"
    sendmail: str = "/usr/sbin/sendmail"
    syslog: bool = True
    interval: int = 3600                 # one alert per detector and subject per interval
    max_per_hour: int = 60               # all alerts together
    timeout: int = 10


@dataclass(frozen=True)
class WatchSettings:
    file: str = "/var/log/mail.log"
    # where the file follower writes down how far it read, to go on from there after a
    # restart ("" : always start at the end)
    position_file: str = "/var/lib/postwarden/watch.position"
    journal: bool = False
    journalctl: str = "/usr/bin/journalctl"
    journal_matches: tuple[str, ...] = ("SYSLOG_FACILITY=2",)
    # read the journal files of this directory (journalctl --directory): a journal
    # collected from another host or a container ("" : the system journal)
    journal_directory: str = ""
    # after a restart, catch up on at most this much of the journal (seconds; 0: all)
    journal_catchup: int = 86400
    # the unprivileged account that parses the log (privilege separation): as [policyd]
    # user, None means "not set" and "root" means stay root on purpose; ``groups`` are the
    # supplementary groups it needs to read the log (adm: /var/log/mail.log on Debian;
    # systemd-journal: the journal)
    user: str | None = None
    groups: tuple[str, ...] = ("adm",)
    store: str = DEFAULT_STORE
    dry_run: bool = False
    max_keys: int = 100_000              # per detector: the memory bound
    sync_interval: int = 5               # seconds between store polls (other MX hosts' bans)
    detectors: Mapping[str, Rule] = field(default_factory=lambda: dict(DETECTORS))
    ban: BanSettings = field(default_factory=BanSettings)
    nftables: NftSettings = field(default_factory=NftSettings)
    access_map: AccessMapSettings = field(default_factory=AccessMapSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    path: str = field(default="", compare=False)

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], path: Path | str, *,
                  store: str | None = None) -> WatchSettings:
        """Build from the ``[watch]`` table; ``ConfigError`` naming file and key.
        ``store``: the URL used when the table has no ``store`` key (the ``[store]`` url)."""
        if store is not None and isinstance(table, Mapping) and "store" not in table:
            table = {**table, "store": store}
        return _parse(_Table(Path(path), "watch", table))

    def rule(self, name: str) -> Rule:
        return self.detectors[name]

    def protected(self) -> tuple[IPNetwork, ...]:
        """Networks never banned: loopback, the ignore list and mynetworks."""
        texts = ("127.0.0.0/8", "::1/128", *self.ban.ignore, *self.ban.mynetworks)
        return tuple(ipaddress.ip_network(t, strict=False) for t in texts)

    @property
    def store_shown(self) -> str:
        parts = urlsplit(self.store)
        if parts.password is None:
            return self.store
        return self.store.replace(f":{parts.password}@", ":***@", 1)

    @property
    def source(self) -> str:
        """What is followed: the file, ``journal`` or ``journal DIR``."""
        if not self.journal:
            return self.file
        return f"journal {self.journal_directory}" if self.journal_directory else "journal"

    def summary(self) -> str:
        on = [n for n, r in self.detectors.items() if r.enabled]
        parts = [f"source {self.source}",
                 f"backend {self.ban.backend}", f"store {self.store_shown}",
                 f"detectors {','.join(on) or 'none'}"]
        if self.user is not None:
            parts.append(f"user {self.user} (groups {','.join(self.groups) or 'none'})")
        if self.dry_run:
            parts.append("dry-run")
        return f"{self.path or 'built-in defaults'}: ok: " + "; ".join(parts)


class _Table(Section):
    """A ``Section`` with what the watcher's tables need besides: numbers, networks,
    commands and sub-tables."""

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = float(self.get(key, (int, float), "a number", default))
        if not low <= value <= high:
            self.fail(key, f"{value:g} is out of range ({low:g} to {high:g})")
        return value

    def networks(self, key: str) -> tuple[str, ...]:
        out = []
        for text in self.strings(key, ()):
            try:
                out.append(str(ipaddress.ip_network(text.strip(), strict=False)))
            except ValueError:
                self.fail(key, f"{clip(text)!r} is not an address or network")
        return tuple(out)

    def command(self, key: str, default: tuple[str, ...], *,
                empty: bool = False) -> tuple[str, ...]:
        words = self.strings(key, default)
        if not words and not empty:
            self.fail(key, "needs at least the program")
        if words and not words[0].startswith("/"):
            self.fail(key, f"{clip(words[0])!r}: give the program as an absolute path")
        for word in words:
            if not _WORD.match(word):
                self.fail(key, f"{clip(word)!r}: only plain words (no blanks or shell "
                               "characters) in a command")
        return words

    def sub(self, key: str) -> _Table:
        self.used.add(key)
        return _Table(self.path, f"{self.name}.{key}", self.table.get(key, {}))


def _rule(table: _Table, default: Rule, name: str) -> Rule:
    rule = Rule(
        enabled=table.boolean("enabled", default.enabled),
        threshold=table.integer("threshold", default.threshold, 1, 1_000_000),
        window=table.duration("window", default.window, low=1),
        action=table.string("action", default.action, ACTIONS),
        factor=(table.number("factor", default.factor, 1.0, 1000.0)
                if name == "bulk_sender" else 0.0))
    table.done()
    return rule


def _detectors(table: _Table) -> dict[str, Rule]:
    for name in table.table:
        if name not in DETECTORS:
            table.fail(name, f"unknown detector (known: {', '.join(DETECTORS)})")
    return {name: _rule(table.sub(name), default, name) for name, default in DETECTORS.items()}


def _ban(table: _Table) -> BanSettings:
    d = BanSettings()
    result = BanSettings(
        backend=table.string("backend", d.backend, BACKENDS),
        duration=table.duration("duration", d.duration, low=1),
        factor=table.number("factor", d.factor, 1.0, 100.0),
        max_duration=table.duration("max_duration", d.max_duration, low=1),
        memory=table.duration("memory", d.memory),
        ipv4_prefix=table.integer("ipv4_prefix", d.ipv4_prefix, 8, 32),
        ipv6_prefix=table.integer("ipv6_prefix", d.ipv6_prefix, 16, 128),
        aggregate=table.integer("aggregate", d.aggregate, 0, 65536),
        aggregate_window=table.duration("aggregate_window", d.aggregate_window, low=1),
        ignore=table.networks("ignore"),
        mynetworks=table.networks("mynetworks"),
        postfix_config_directory=table.string("postfix_config_directory",
                                              d.postfix_config_directory))
    if result.max_duration < result.duration:
        table.fail("max_duration", "must be at least duration")
    if result.postfix_config_directory and not result.postfix_config_directory.startswith("/"):
        table.fail("postfix_config_directory", "give an absolute path")
    table.done()
    return result


def _nft(table: _Table) -> NftSettings:
    d = NftSettings()
    ports = table.get("ports", list, "a list of port numbers", list(d.ports))
    if not ports or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                            for p in ports):
        table.fail("ports", "expected a non-empty list of port numbers (1 to 65535)")
    result = NftSettings(
        command=table.command("command", d.command),
        table=table.string("table", d.table),
        ports=tuple(sorted(set(ports))),
        priority=table.integer("priority", d.priority, -400, 400))
    if not _IDENT.match(result.table):
        table.fail("table", f"{clip(result.table)!r} is not an nftables name")
    table.done()
    return result


def _access_map(table: _Table) -> AccessMapSettings:
    from postwarden.settings import check_action  # not at import: settings imports us

    d = AccessMapSettings()
    result = AccessMapSettings(
        path=table.string("path", d.path), type=table.string("type", d.type, MAP_TYPES),
        postmap=table.string("postmap", d.postmap),
        config_directory=table.string("config_directory", d.config_directory),
        action=table.string("action", d.action),
        reload_command=table.command("reload_command", d.reload_command, empty=True))
    for key in ("path", "postmap", "config_directory"):
        value = getattr(result, key)
        if value and not value.startswith("/"):
            table.fail(key, "give an absolute path")
    try:
        check_action(result.action)
    except ValueError as exc:
        table.fail("action", str(exc))
    table.done()
    return result


def _alerts(table: _Table) -> AlertSettings:
    d = AlertSettings()
    result = AlertSettings(
        webhook=table.string("webhook", d.webhook),
        mail_to=table.strings("mail_to", d.mail_to),
        mail_from=table.string("mail_from", d.mail_from),
        sendmail=table.string("sendmail", d.sendmail),
        syslog=table.boolean("syslog", d.syslog),
        interval=table.duration("interval", d.interval),
        max_per_hour=table.integer("max_per_hour", d.max_per_hour, 0, 100_000),
        timeout=table.duration("timeout", d.timeout, low=1))
    if result.webhook and urlsplit(result.webhook).scheme not in ("http", "https"):
        table.fail("webhook", "expected an http:// or https:// URL")
    for address in (*result.mail_to, result.mail_from):
        if not re.fullmatch(r"[^\s<>,;\"\\]{1,254}", address):
            table.fail("mail_to" if address in result.mail_to else "mail_from",
                       f"{clip(address)!r} is not a mail address")
    if not result.sendmail.startswith("/"):
        table.fail("sendmail", "give an absolute path")
    table.done()
    return result


def _store(table: _Table) -> str:
    url = table.string("store", DEFAULT_STORE)
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or "\0" in url:
            table.fail("store", "expected sqlite:///ABSOLUTE/PATH")
    elif scheme in ("redis", "rediss"):
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if not host:
            table.fail("store", "expected redis://HOST[:PORT][/DB]")
    else:
        table.fail("store", f"unknown scheme {clip(scheme)!r}: expected sqlite:/// or redis://")
    return url


def _user(table: _Table) -> str | None:
    """``user``: checked as ``[policyd] user`` is (settings.account)."""
    from postwarden.settings import account  # not at import: settings imports us

    return account(table, "user")


def _groups(table: _Table) -> tuple[str, ...]:
    """``groups``: names as ``settings.account`` accepts them, none twice."""
    names = table.strings("groups", WatchSettings.groups)
    for name in names:
        if not _ACCOUNT.match(name):
            table.fail("groups", f"{clip(name)!r} is not a group name")
    if len(set(names)) != len(names):
        table.fail("groups", "a group is named twice")
    return names


def _parse(table: _Table) -> WatchSettings:
    d = WatchSettings()
    matches = table.strings("journal_matches", d.journal_matches)
    for match in matches:
        if not _MATCH.match(match):
            table.fail("journal_matches", f"{clip(match)!r}: expected FIELD=VALUE")
    result = WatchSettings(
        file=table.string("file", d.file), journal=table.boolean("journal", d.journal),
        position_file=table.string("position_file", d.position_file),
        journalctl=table.string("journalctl", d.journalctl), journal_matches=matches,
        journal_directory=table.string("journal_directory", d.journal_directory),
        journal_catchup=table.duration("journal_catchup", d.journal_catchup),
        user=_user(table), groups=_groups(table),
        store=_store(table), dry_run=table.boolean("dry_run", d.dry_run),
        max_keys=table.integer("max_keys", d.max_keys, 100, 10_000_000),
        sync_interval=table.duration("sync_interval", d.sync_interval, low=1),
        detectors=_detectors(table.sub("detect")), ban=_ban(table.sub("ban")),
        nftables=_nft(table.sub("nftables")), access_map=_access_map(table.sub("access_map")),
        alerts=_alerts(table.sub("alerts")), path=str(table.path))
    for key in ("file", "journalctl", "position_file", "journal_directory"):
        value = getattr(result, key)
        optional = key in ("position_file", "journal_directory")
        if not value.startswith("/") and (value or not optional):
            table.fail(key, "give an absolute path")
    table.done()
    return result


def postfix_mynetworks(config_directory: str) -> tuple[str, ...]:
    """``mynetworks`` of a Postfix configuration, as networks (``postconf -h -x``);
    entries that are not literal networks (``hash:`` tables, host names) are skipped."""
    try:
        result = subprocess.run(["postconf", "-c", config_directory, "-h", "-x", "mynetworks"],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(config_directory, None, f"postconf: {exc}") from None
    if result.returncode != 0:
        raise ConfigError(config_directory, None,
                          f"postconf: {clip(result.stderr.strip(), 200)}")
    found = []
    for word in re.split(r"[\s,]+", result.stdout.strip()):
        text = word.strip("[]").replace("]/", "/")
        try:
            found.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            continue
    return tuple(found)
