"""What a rule sees: effective values per service, parsed lists, files and their locations.

Security: reads the parsed configuration and, for rules about certificates, keys and
sockets, the named files' metadata and (bounded) contents; never writes.
Standards: postconf(5) for value types and units; master(5) for service names and ports.

Theory of operation
-------------------
Rules call the ``Context`` rather than the configuration model, so each rule is a few lines
of intent: ``ctx.value("smtpd_tls_security_level", service)`` is what that service's smtpd
really uses (main.cf, its ``-o`` overrides, the defaults, expanded); ``ctx.where`` names the
line a finding should point at (the ``-o`` line when the service overrides it, else the
main.cf definition, else the service line).
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from postwarden.audit.model import Role
from postwarden.audit.restrictions import Restriction, parse
from postwarden.errors import PostwardenError
from postwarden.postfix import check as config_check
from postwarden.postfix.config import PostfixConfig
from postwarden.postfix.mastercf import Service

# /etc/services names master.cf uses for its inet services (Debian 12).
PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465, "lmtp": 24}
LOOPBACK_HOSTS = ("127.", "[::1]", "localhost", "::1")
MAX_READ = 1024 * 1024


@dataclass(frozen=True)
class FileFacts:
    path: str
    exists: bool
    uid: int = -1
    gid: int = -1
    mode: int = 0
    is_file: bool = False
    readable: bool = False


def parse_version(text: str) -> tuple[int, ...] | None:
    """'3.7.11' -> (3, 7, 11); None when it is not dotted numbers (compatibility_level too)."""
    parts = text.strip().split(".")
    if not text.strip() or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def service_key(service: Service | None) -> str | None:
    """The ``Hit.service`` for a service, or None for a main.cf-wide finding."""
    return service.key if service is not None else None


class Context:
    def __init__(self, config: PostfixConfig, roles: frozenset[Role]) -> None:
        self.config = config
        self.roles = roles
        self.main_path = str(config.main.path)
        self.master_path = str(config.master.path) if config.master else None
        self._values: dict[tuple[str, str | None, int], str] = {}

    @functools.cached_property
    def config_findings(self) -> list[config_check.Finding]:
        """``config check`` findings (postconf's own warnings and more), computed once."""
        return config_check.check(self.config)

    # -- values ----------------------------------------------------------------------------

    def raw(self, name: str, service: Service | None = None) -> str | None:
        return self.config.lookup(name, service=service)

    def value(self, name: str, service: Service | None = None) -> str:
        """The expanded effective value ('' for an unknown name; raw text if it won't expand).

        Remembered per name and service: a Context describes one state of the configuration
        (harden makes a new one after each round of edits)."""
        key = (name, service.key if service else None, service.first if service else -1)
        found = self._values.get(key)
        if found is None:
            found = self._values[key] = self._value(name, service)
        return found

    def _value(self, name: str, service: Service | None) -> str:
        raw = self.raw(name, service)
        if raw is None:
            return ""
        if name in self.config.table.raw:
            return raw
        try:
            return self.config.expand(raw, service=service).text.strip()
        except PostwardenError:
            return raw

    def words(self, name: str, service: Service | None = None) -> list[str]:
        return [w for w in self.value(name, service).replace(",", " ").split() if w]

    def yes(self, name: str, service: Service | None = None) -> bool:
        return self.value(name, service).lower() in ("yes", "true", "1")

    def number(self, name: str, service: Service | None = None) -> int | None:
        text = self.value(name, service)
        return int(text) if text.isdigit() else None

    def explicit(self, name: str, service: Service | None = None) -> bool:
        """Set in main.cf, or by an ``-o`` of this service."""
        if service is not None and name in service.overrides():
            return True
        return name in self.config.main

    def overridden(self, name: str, service: Service) -> bool:
        return name in service.overrides()

    def scopes(self, services: list[Service], names: tuple[str, ...],
               ) -> Iterator[tuple[Service | None, Service]]:
        """(scope to report, service) for a setting checked on several services.

        A service that overrides one of names is its own scope (its finding points at its
        -o line); the services that only inherit main.cf share one finding (scope None).
        """
        main_done = False
        for service in services:
            if any(self.overridden(n, service) for n in names):
                yield service, service
            elif not main_done:
                main_done = True
                yield None, service

    def restrictions(self, name: str, service: Service | None = None) -> list[Restriction]:
        return parse(self.value(name, service))

    def where(self, name: str | None, service: Service | None = None,
              ) -> tuple[str | None, int | None]:
        """The file and line a finding about name (for service) points at."""
        if (service is not None and self.master_path is not None
                and (name is None or name in service.overrides())):
            return self.master_path, self._override_line(service, name)
        if name is not None:
            found = self.config.main.find(name)
            if found:
                return self.main_path, found[-1].lineno
        if service is not None and self.master_path is not None:
            return self.master_path, service.lineno
        return (self.main_path, None) if name is not None else (None, None)

    def _override_line(self, service: Service, name: str | None) -> int:
        if name is None or self.config.master is None:
            return service.lineno
        lines = self.config.master.lines
        for index in range(service.first, service.last + 1):
            if f"{name}=" in lines[index].replace(" ", "") and name in lines[index]:
                return index + 1
        return service.lineno

    # -- services --------------------------------------------------------------------------

    @functools.cached_property
    def services(self) -> list[Service]:
        """master.cf entries as master(8) uses them: the last of each name/type."""
        last: dict[str, Service] = {}
        for service in self.config.services:
            last[service.key] = service
        return list(last.values())

    def service(self, name: str, type_: str = "inet") -> Service | None:
        return next((s for s in self.services if s.name == name and s.type == type_), None)

    def smtpd_services(self) -> list[Service]:
        """inet services that speak SMTP to clients: smtpd and postscreen."""
        return [s for s in self.services
                if s.type == "inet" and s.process_name in ("smtpd", "postscreen")]

    @staticmethod
    def port(service: Service) -> int | None:
        name = service.name.rsplit(":", 1)[-1]
        if name.isdigit():
            return int(name)
        return PORTS.get(name)

    def bound_to_loopback(self, service: Service) -> bool:
        """Whether an inet service listens only on loopback (by its name or inet_interfaces)."""
        host = service.name.rsplit(":", 1)[0] if ":" in service.name.strip("[]") else ""
        if host:
            return host.startswith(LOOPBACK_HOSTS)
        interfaces = self.value("inet_interfaces")
        if interfaces in ("loopback-only", "localhost"):
            return True
        words = self.words("inet_interfaces")
        return bool(words) and all(w.startswith(LOOPBACK_HOSTS) for w in words)

    def smtpd_behind(self, service: Service) -> Service:
        """The smtpd that really talks to a service's clients: postscreen hands them to the
        ``smtpd_service_name`` (default smtpd) ``pass`` service (POSTSCREEN_README)."""
        if service.process_name == "postscreen":
            name = self.value("smtpd_service_name", service) or "smtpd"
            return self.service(name, "pass") or service
        return service

    def all_smtpd(self) -> list[Service]:
        """Every smtpd process: inet listeners, pass services behind postscreen, unix ones."""
        return [s for s in self.services if s.process_name == "smtpd"]

    def public_smtpd_services(self) -> list[Service]:
        return [s for s in self.smtpd_services() if not self.bound_to_loopback(s)]

    def mx_services(self) -> list[Service]:
        return [s for s in self.public_smtpd_services() if self.port(s) == 25]

    def submission_services(self) -> list[Service]:
        """Public smtpd services on 587/465, or with SASL switched on."""
        return [s for s in self.public_smtpd_services()
                if s.process_name == "smtpd"
                and (self.port(s) in (587, 465) or self.yes("smtpd_sasl_auth_enable", s))]

    def enforces_tls(self, service: Service) -> bool:
        return (self.value("smtpd_tls_security_level", service) == "encrypt"
                or self.yes("smtpd_tls_wrappermode", service)
                or self.yes("smtpd_enforce_tls", service))

    # -- files -----------------------------------------------------------------------------

    def file(self, path: str) -> FileFacts:
        """Metadata of a file named by the configuration (relative names: config_directory)."""
        if not path.startswith("/"):
            path = f"{self.config.config_dir}/{path}"
        try:
            info = os.stat(path)
        except OSError:
            return FileFacts(path, exists=False)
        return FileFacts(path, True, info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode),
                         stat.S_ISREG(info.st_mode), os.access(path, os.R_OK))

    def read(self, path: str) -> bytes | None:
        facts = self.file(path)
        if not (facts.exists and facts.is_file and facts.readable):
            return None
        with open(facts.path, "rb") as handle:
            return handle.read(MAX_READ)

    @staticmethod
    def table_path(table: str) -> str | None:
        """The file behind a 'type:/path' lookup table, when it has one."""
        kind, _, rest = table.partition(":")
        if not rest or kind in ("inet", "unix", "proxy", "socketmap", "tcp"):
            return None
        return rest if rest.startswith("/") else None

    def queue_path(self, relative: str) -> Path:
        return Path(self.value("queue_directory")) / relative
