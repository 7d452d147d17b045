"""The ``[milter]`` section of postwarden.toml: where the milter listens and how it acts.

Security: the file is trusted configuration but checked as input: unknown keys, wrong
types and out-of-range values stop the load with one line naming the file and the key
(``milter.key``). User and group names must look like names; the authserv-id must be a
host name (it goes verbatim into every Authentication-Results header); a store URL is
checked like ``[store] url`` and never quoted with its password.
Standards: RFC 8601 2.5 (authserv-id); Postfix MILTER_README (``milter_default_action``,
what ``on_error`` mirrors); postconf(5) time units.

Theory of operation
-------------------
``postwarden.settings`` reads the whole file and hands the ``[milter]`` table to
``MilterSettings.from_toml``, which uses the same typed section reader as every other
section. This module imports ``postwarden.settings`` only inside functions, because that
module imports this one: the import cycle is broken at call time, not at load time.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postwarden.errors import clip

if TYPE_CHECKING:
    from postwarden.settings import Endpoint

DEFAULT_SOCKET = "/var/spool/postfix/postwarden/milter"
MODES = ("sign+verify", "sign", "verify")
ON_ERROR = ("accept", "tempfail")
SPF_SOURCES = ("auto", "evaluate")
MAX_WORKERS = 64
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024       # bytes; Postfix's message_size_limit is 10 MB
MAX_MAX_MESSAGE = 1024 * 1024 * 1024
MIN_MAX_MESSAGE = 64 * 1024
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?\Z")


def _default_listen() -> tuple[Endpoint, ...]:
    from postwarden.settings import Endpoint
    return (Endpoint("unix", path=DEFAULT_SOCKET),)


@dataclass(frozen=True)
class MilterSettings:
    """How ``postwarden milter`` listens, whom it runs as, and what it does."""

    listen: tuple[Endpoint, ...] = field(default_factory=_default_listen)
    socket_mode: int = 0o660
    socket_owner: str | None = None
    socket_group: str | None = None
    user: str | None = None          # privilege drop target; "root" means: stay root
    group: str | None = None
    workers: int = 1                 # processes serving the same sockets
    authserv_id: str = ""            # "" = this host's name
    on_error: str = "tempfail"       # internal error: "accept" or "tempfail"
    mode: str = "sign+verify"        # "sign+verify", "sign" or "verify"
    dry_run: bool = False            # decide and log, change no message
    store: str = ""                  # evaluations for DMARC reports; "" = [store] url
    verify_budget: float = 10.0      # seconds for the DNS of one message's DKIM and SPF
    nameserver: str = ""             # HOST[:PORT]; "" = /etc/resolv.conf
    max_message_size: int = DEFAULT_MAX_MESSAGE  # bytes kept per message; more: not checked
    spf_source: str = "auto"         # "auto": policyd's header, else evaluate; "evaluate"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}")
        if self.spf_source not in SPF_SOURCES:
            raise ValueError(f"spf_source: expected one of {', '.join(SPF_SOURCES)}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error: expected one of {', '.join(ON_ERROR)}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers: {self.workers} is out of range (1 to {MAX_WORKERS})")
        if self.authserv_id and not _HOST.match(self.authserv_id):
            raise ValueError(f"authserv_id: {clip(self.authserv_id)!r} is not a host name")
        if not 0 < self.verify_budget <= 300:
            raise ValueError("verify_budget: must be more than 0 and at most 300 seconds")
        if not MIN_MAX_MESSAGE <= self.max_message_size <= MAX_MAX_MESSAGE:
            raise ValueError(f"max_message_size: {self.max_message_size} is out of range "
                             f"({MIN_MAX_MESSAGE} to {MAX_MAX_MESSAGE})")

    @property
    def signs(self) -> bool:
        return self.mode in ("sign+verify", "sign")

    @property
    def verifies(self) -> bool:
        return self.mode in ("sign+verify", "verify")

    @property
    def authserv(self) -> str:
        """The authserv-id to write and to protect: the setting, else this host's name."""
        return self.authserv_id or socket.gethostname() or "localhost"

    @classmethod
    def from_toml(cls, table: Mapping[str, Any], path: Path | str) -> MilterSettings:
        """Build from the ``[milter]`` table; ``ConfigError`` naming file and key."""
        from postwarden import settings as config

        section = config.Section(Path(path), "milter", dict(table) if isinstance(
            table, Mapping) else table)
        return _parse(section)


def _parse(section: Any) -> MilterSettings:
    from postwarden import settings as config

    d = MilterSettings()
    listen = tuple(section.convert("listen", text, config.parse_endpoint)
                   for text in section.strings("listen", tuple(str(e) for e in d.listen)))
    if not listen:
        section.fail("listen", "needs at least one endpoint")
    store = section.string("store", d.store)
    if store:
        section.convert("store", store, config.check_store_url)
    nameserver = section.string("nameserver", d.nameserver)
    if nameserver:
        section.convert("nameserver", nameserver, _nameserver)
    result: MilterSettings = section.build(
        MilterSettings,
        listen=listen,
        socket_mode=config.socket_mode(section, d.socket_mode),
        socket_owner=config.account(section, "socket_owner"),
        socket_group=config.account(section, "socket_group"),
        user=config.account(section, "user"), group=config.account(section, "group"),
        workers=section.integer("workers", d.workers, 1, MAX_WORKERS),
        authserv_id=section.string("authserv_id", d.authserv_id),
        on_error=section.string("on_error", d.on_error, ON_ERROR),
        mode=section.string("mode", d.mode, MODES),
        dry_run=section.boolean("dry_run", d.dry_run),
        store=store,
        verify_budget=float(section.duration("verify_budget", int(d.verify_budget), low=1)),
        nameserver=nameserver,
        max_message_size=section.integer("max_message_size", d.max_message_size,
                                         MIN_MAX_MESSAGE, MAX_MAX_MESSAGE),
        spf_source=section.string("spf_source", d.spf_source, SPF_SOURCES))
    section.done()
    return result


def _nameserver(text: str) -> str:
    from postwarden.dns import parse_nameserver
    from postwarden.errors import UsageError

    try:
        parse_nameserver(text)
    except UsageError:
        raise ValueError(f"{clip(text)!r}: expected an IP address, optionally :PORT "
                         "([V6]:PORT)") from None
    return text

