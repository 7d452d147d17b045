"""The typed model of postwarden.toml: read once, checked strictly, passed down frozen.

Security: the file is trusted as configuration but checked as input: unknown sections and
keys, wrong types and out-of-range values stop the load with one line naming the file and
the key (``section.key``), so a misspelt key never silently means "default". A store URL
may carry a password; it is never quoted in an error or a summary (``StoreSettings.shown``).
Standards: TOML 1.0 (``tomllib``); postconf(5) "time units" (s, m, h, d, w);
SMTPD_POLICY_README (endpoints, actions); access(5) (the fail-safe action).

Theory of operation
-------------------
Each section is read through a ``Section`` (postwarden.tables) that hands out typed
values by key and remembers which keys it handed out; whatever is left over is an unknown
key. Defaults live in the dataclasses, so a missing file and an empty file mean the same
thing. Checks that span sections (the SPF lookup time must fit in the decision budget) run
last.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from postwarden.errors import ConfigError, UsageError, clip
from postwarden.logs.watch_settings import WatchSettings
from postwarden.milter.dmarc import DmarcSettings
from postwarden.milter.milter_settings import MilterSettings
from postwarden.milter.signing import SigningSettings
from postwarden.policy.greylist import GreylistSettings
from postwarden.policy.ratelimit import COUNTS, KEYS, STAGES, RateLimitSettings, RateRule
from postwarden.policy.spf import HEADER_TYPES, REJECT_POLICIES, SpfSettings
from postwarden.policy.store import ALGORITHMS

# Re-exported: the section readers of other modules use them from here.
from postwarden.tables import Section as Section
from postwarden.tables import parse_duration as parse_duration

DEFAULT_PATH = Path("/etc/postwarden/postwarden.toml")
DEFAULT_SOCKET = "/var/spool/postfix/postwarden/policy"
MAX_WORKERS = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")  # a user or group name, or a number
# access(5) words a fail-safe or a rate-limit action may start with.
ACTION_WORDS = frozenset({"DUNNO", "OK", "REJECT", "DEFER", "DEFER_IF_REJECT",
                          "DEFER_IF_PERMIT", "HOLD", "DISCARD", "WARN", "INFO"})
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """Where the service listens: ``unix:PATH`` or ``tcp:HOST:PORT``."""

    kind: str                  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``unix:/abs/path`` or ``tcp:HOST:PORT`` (``tcp:[::1]:10023`` for IPv6)."""
    kind, _, rest = text.partition(":")
    if kind == "unix":
        if not rest.startswith("/") or "\0" in rest:
            raise ValueError(f"{text!r}: unix: needs an absolute path")
        return Endpoint("unix", path=rest)
    if kind == "tcp":
        host, colon, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r}: expected tcp:HOST:PORT")
        return Endpoint("tcp", host=host, port=int(port))
    raise ValueError(f"{text!r}: expected unix:PATH or tcp:HOST:PORT")


def check_action(action: str) -> str:
    """An access(5) action fit to be a reply: one line, a known word or a 4NN/5NN code."""
    word = action.split(None, 1)[0].upper() if action.strip() else ""
    if (len(action) > 200 or any(not c.isprintable() for c in action)
            or not (word in ACTION_WORDS or re.fullmatch(r"[45][0-9][0-9]", word))):
        raise ValueError(f"{clip(action)!r} is not an access(5) action (DUNNO, "
                         "DEFER_IF_PERMIT text, 450 text, ...)")
    return action


@dataclass(frozen=True)
class PolicydSettings:
    listen: tuple[Endpoint, ...] = (Endpoint("unix", path=DEFAULT_SOCKET),)
    socket_mode: int = 0o660
    socket_owner: str | None = None
    socket_group: str | None = None
    user: str | None = None          # privilege drop target; "root" means: stay root
    group: str | None = None
    budget: int = 30                 # seconds for one whole decision
    failsafe_action: str = "DUNNO"
    dry_run: bool = False
    workers: int = 1                 # processes serving the same sockets (postwarden.prefork)


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite:///var/lib/postwarden/state.db"

    @property
    def kind(self) -> str:
        return self.url.split(":", 1)[0]

    @property
    def shown(self) -> str:
        """The URL without a password, for logs and summaries."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        return self.url.replace(f":{parts.password}@", ":***@", 1)


@dataclass(frozen=True)
class Settings:
    policyd: PolicydSettings = field(default_factory=PolicydSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    greylist: GreylistSettings = field(default_factory=GreylistSettings)
    spf: SpfSettings = field(default_factory=SpfSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    dkim: SigningSettings = field(default_factory=SigningSettings)
    milter: MilterSettings = field(default_factory=MilterSettings)
    dmarc: DmarcSettings = field(default_factory=DmarcSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    path: str = ""                           # where they came from ("" for defaults)

    def summary(self) -> str:
        """One line for ``policyd --check-config``."""
        p = self.policyd
        parts = [
            f"listen {' '.join(str(e) for e in p.listen)}",
            f"store {self.store.shown}",
            f"greylist {'on' if self.greylist.enabled else 'off'}",
            f"spf {'on' if self.spf.enabled else 'off'}",
            f"ratelimit on ({len(self.ratelimit.rules)} rule(s))" if self.ratelimit.enabled
            else "ratelimit off",
            f"budget {p.budget}s", f"failsafe {p.failsafe_action}",
        ]
        if p.workers > 1:
            parts.append(f"workers {p.workers}")
        if p.dry_run:
            parts.append("dry-run")
        return f"{self.path or 'built-in defaults'}: ok: " + "; ".join(parts)


_Section = Section  # the name the section readers below were written with


def account(section: Section, key: str) -> str | None:
    """A user or group name (or number) from ``key``, or None when not given."""
    value = section.string(key, None)
    if value is not None and not _NAME.match(value):
        section.fail(key, f"{clip(value)!r} is not a user or group name")
    return value


_account = account


def socket_mode(section: Section, default: int) -> int:
    """``socket_mode``: an integer (0o660) or an octal string ("0660")."""
    mode = section.get("socket_mode", (int, str), "an octal mode (0o660 or \"0660\")",
                        default)
    if isinstance(mode, str):
        mode = int(mode, 8) if re.fullmatch(r"0?[0-7]{3}", mode) else -1
    if not 0 <= mode <= 0o777:
        section.fail("socket_mode", "expected a permission mode from 0o000 to 0o777")
    return int(mode)


def check_store_url(url: str) -> str:
    """A store URL: ``sqlite:///ABSOLUTE/PATH`` or ``redis://HOST[:PORT][/DB]``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or "\0" in url:
            raise ValueError("expected sqlite:///ABSOLUTE/PATH (the path after sqlite://)")
        return url
    if scheme in ("redis", "rediss"):
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("expected redis://HOST[:PORT][/DB]") from None
        db = parts.path.lstrip("/")
        if not parts.hostname or (db and not db.isdigit()) or (port is not None and port == 0):
            raise ValueError("expected redis://HOST[:PORT][/DB]")
        return url
    raise ValueError(f"unknown scheme {clip(scheme)!r}: expected sqlite:/// or redis://")


def _policyd(section: _Section) -> PolicydSettings:
    d = PolicydSettings()
    listen = tuple(section.convert("listen", text, parse_endpoint)
                   for text in section.strings("listen", tuple(str(e) for e in d.listen)))
    if not listen:
        section.fail("listen", "needs at least one endpoint")
    mode = socket_mode(section, d.socket_mode)
    result = PolicydSettings(
        listen=listen, socket_mode=mode,
        socket_owner=_account(section, "socket_owner"),
        socket_group=_account(section, "socket_group"),
        user=_account(section, "user"), group=_account(section, "group"),
        budget=section.duration("budget", d.budget, low=1),
        failsafe_action=section.convert(
            "failsafe_action", section.string("failsafe_action", d.failsafe_action),
            check_action),
        dry_run=section.boolean("dry_run", d.dry_run),
        workers=section.integer("workers", d.workers, 1, MAX_WORKERS))
    section.done()
    return result


def _store(section: _Section) -> StoreSettings:
    url = section.convert("url", section.string("url", StoreSettings.url), check_store_url)
    section.done()
    return StoreSettings(url)


def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


def _absolute(text: str) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{clip(text)!r}: give an absolute path")
    return text


def _greylist(section: _Section) -> GreylistSettings:
    d = GreylistSettings()
    result = section.build(
        GreylistSettings,
        enabled=section.boolean("enabled", d.enabled),
        delay=section.duration("delay", d.delay),
        retry_window=section.duration("retry_window", d.retry_window, low=1),
        max_age=section.duration("max_age", d.max_age, low=1),
        auto_whitelist_clients=section.integer("auto_whitelist_clients",
                                               d.auto_whitelist_clients, 0, 1_000_000),
        ipv4_cidr=section.integer("ipv4_cidr", d.ipv4_cidr, 8, 32),
        ipv6_cidr=section.integer("ipv6_cidr", d.ipv6_cidr, 16, 128),
        action=section.convert("action", section.string("action", d.action), check_action),
        text=section.string("text", d.text),
        header=section.string("header", d.header),
        hostname=section.string("hostname", d.hostname),
        key_by_spf_domain=section.string("key_by_spf_domain", d.key_by_spf_domain,
                                         ("domain", "skip", "off")),
        exempt_networks=tuple(str(section.convert("exempt_networks", t, _network)) for t in
                              section.strings("exempt_networks", d.exempt_networks)),
        whitelist_clients=tuple(section.convert("whitelist_clients", t, _absolute)
                                for t in section.strings("whitelist_clients", ())),
        whitelist_recipients=tuple(section.convert("whitelist_recipients", t, _absolute)
                                   for t in section.strings("whitelist_recipients", ())))
    if result.retry_window <= result.delay:
        section.fail("retry_window", "must be longer than delay")
    if result.max_age < result.retry_window:
        section.fail("max_age", "must be at least retry_window")
    section.done()
    return result


def _spf(section: _Section) -> SpfSettings:
    d = SpfSettings()
    result = section.build(
        SpfSettings,
        enabled=section.boolean("enabled", d.enabled),
        helo_reject=section.string("helo_reject", d.helo_reject, tuple(REJECT_POLICIES)),
        mail_from_reject=section.string("mail_from_reject", d.mail_from_reject,
                                        tuple(p for p in REJECT_POLICIES if p != "Null")),
        permerror_reject=section.boolean("permerror_reject", d.permerror_reject),
        temperror_defer=section.boolean("temperror_defer", d.temperror_defer),
        header_type=section.string("header_type", d.header_type, HEADER_TYPES),
        authserv_id=section.string("authserv_id", d.authserv_id),
        receiver=section.string("receiver", d.receiver),
        lookup_time=float(section.duration("lookup_time", int(d.lookup_time), low=1)),
        void_limit=section.integer("void_limit", d.void_limit, 0, 100),
        skip_networks=tuple(str(section.convert("skip_networks", t, _network)) for t in
                            section.strings("skip_networks", d.skip_networks)),
        nameserver=section.string("nameserver", d.nameserver),
        reason_message=section.string("reason_message", d.reason_message),
        reason_url=section.string("reason_url", d.reason_url))
    for key in ("authserv_id", "receiver"):
        value = getattr(result, key)
        if value and not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
            section.fail(key, "expected a host name")
    section.done()
    return result


def _rule(section: _Section) -> RateRule:
    for required in ("name", "key", "limit", "window"):
        if required not in section.table:
            section.fail(required, "missing")
    d = RateRule("x", KEYS[0], 1, 1)
    result = section.build(
        RateRule,
        name=section.string("name", ""),
        key=section.string("key", "", KEYS),
        limit=section.integer("limit", 1, 1, 10**9),
        window=section.duration("window", 1, low=1),
        count=section.string("count", d.count, COUNTS),
        algorithm=section.string("algorithm", d.algorithm, ALGORITHMS),
        stage=section.string("stage", d.stage, STAGES),
        action=section.convert("action", section.string("action", d.action), check_action))
    section.done()
    return result


def _ratelimit(section: _Section) -> RateLimitSettings:
    d = RateLimitSettings()
    enabled = section.boolean("enabled", d.enabled)
    tables = section.get("rule", list, "an array of tables ([[ratelimit.rule]])", None)
    rules = d.rules if tables is None else tuple(
        _rule(_Section(section.path, f"ratelimit.rule[{i}]", t)) for i, t in enumerate(tables))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        section.fail("rule", "two rules have the same name")
    result = section.build(RateLimitSettings, enabled=enabled, rules=rules)
    section.done()
    return result


def _dkim(section: _Section) -> SigningSettings:
    """``[dkim]``: read by the milter's signing decision, which checks it itself."""
    section.used = set(section.table)
    return SigningSettings.from_toml(section.table, section.path)


def _milter(section: _Section) -> MilterSettings:
    """``[milter]``: the milter daemon (postwarden.milter.milter_settings)."""
    section.used = set(section.table)
    return MilterSettings.from_toml(section.table, section.path)


def _dmarc(section: _Section) -> DmarcSettings:
    """``[dmarc]``: DMARC evaluation and reports (postwarden.milter.dmarc checks it)."""
    section.used = set(section.table)
    return DmarcSettings.from_toml(section.table, section.path)


def _watch(section: _Section, store: StoreSettings | None = None) -> WatchSettings:
    """``[watch]``: the log watcher (postwarden.logs.watch_settings checks it); its bans
    are kept in the ``[store]`` url, when one is given, unless it names a store of its own."""
    section.used = set(section.table)
    return WatchSettings.from_toml(section.table, section.path,
                                   store=store.url if store is not None else None)


SECTIONS: dict[str, Callable[[_Section], object]] = {
    "policyd": _policyd, "store": _store, "greylist": _greylist, "spf": _spf,
    "ratelimit": _ratelimit, "dkim": _dkim, "milter": _milter, "dmarc": _dmarc,
    "watch": _watch,
}


def parse(data: dict[str, Any], path: Path) -> Settings:
    """Settings from an already parsed TOML document."""
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(path, None, f"{clip(name)}: unknown section")
    built = {name: read(_Section(path, name, data.get(name, {})))
             for name, read in SECTIONS.items() if name != "watch"}
    store = built["store"] if "url" in data.get("store", {}) else None
    built["watch"] = _watch(_Section(path, "watch", data.get("watch", {})),
                            store)  # type: ignore[arg-type]
    settings = Settings(path=str(path), **built)  # type: ignore[arg-type]
    if settings.spf.enabled and settings.spf.lookup_time >= settings.policyd.budget:
        raise ConfigError(path, None, f"spf.lookup_time: {settings.spf.lookup_time:g} s must be "
                                      f"below policyd.budget ({settings.policyd.budget} s)")
    return settings


def load(path: Path | None = None) -> Settings:
    """The settings of ``path``, or of the default file; a missing default file: defaults."""
    chosen = path or DEFAULT_PATH
    try:
        with open(chosen, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        if path is None:
            return Settings()
        raise ConfigError(chosen, None, "no such file") from None
    except OSError as exc:
        raise ConfigError(chosen, None, exc.strerror or str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ConfigError(chosen, None, f"not valid TOML: {exc}") from None
    return parse(data, chosen)


def override(settings: Settings, *, listen: list[str] | None = None,
             dry_run: bool = False) -> Settings:
    """Settings with the command line's --listen and --dry-run applied."""
    policyd = settings.policyd
    if listen:
        try:
            endpoints = tuple(parse_endpoint(text) for text in listen)
        except ValueError as exc:
            raise UsageError(f"--listen: {exc}") from None
        policyd = dataclasses.replace(policyd, listen=endpoints)
    if dry_run:
        policyd = dataclasses.replace(policyd, dry_run=True)
    return dataclasses.replace(settings, policyd=policyd)
