"""A Postfix configuration directory as Postfix reads it: effective values, per service.

Security: reads main.cf and master.cf through the lossless parsers (``maincf``,
``mastercf``), which bound and check what they accept; expansion is bounded (``expand``).
Nothing here writes or executes anything.
Standards: postconf(5), master(5), postconf(1); Postfix 3.7 ``postconf/postconf_user.c``
(which user-defined names count as used), ``postconf/postconf_lookup.c`` (lookup order),
``postconf/postconf_service.c`` (service-defined names), ``global/mail_params.c``.

Theory of operation
-------------------
A parameter's value in a process is, first found: the service's read-only names
(``process_name``, ``service_name``), its master.cf ``-o`` overrides, main.cf (last
definition wins), then the default, which for host-dependent names is computed from the
host and from main.cf as Postfix does. ``ServiceView`` is that chain for one master.cf
service; ``PostfixConfig`` without a service is the global view the ``postconf`` command
shows.

Which names exist follows postconf: the built-in ones of the installed version (or the
shipped table), the legacy ones, the ones each master.cf service defines through the program
it runs (``relay`` running ``smtp`` defines ``relay_destination_concurrency_limit``), and
user-defined names that have a ``name=value`` somewhere and are referenced with ``$name``
from a scanned value or listed in ``smtpd_restriction_classes``. Every other name in main.cf
is unused: postconf leaves it out of ``-n`` and warns about it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from postwarden.errors import ConfigError
from postwarden.postfix import host as hostmod
from postwarden.postfix import lexer, mastercf
from postwarden.postfix.defaults import DefaultsTable
from postwarden.postfix.defaults import load as load_defaults
from postwarden.postfix.expand import Expansion, ExpansionError, expand, references
from postwarden.postfix.maincf import MainCf
from postwarden.postfix.mastercf import MasterCf, Service

COMMA_SPACE = ", \t\r\n"


@dataclass(frozen=True)
class Diagnostic:
    """A diagnostic about the configuration, with where it comes from when known."""

    file: str
    line: int | None
    message: str
    code: str

    def render(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class _Names:
    """The parameter-name table postconf builds, with each name's class."""

    builtin: set[str] = field(default_factory=set)
    legacy: set[str] = field(default_factory=set)
    service: dict[str, str] = field(default_factory=dict)  # name -> default
    user: set[str] = field(default_factory=set)
    local: dict[str, set[str]] = field(default_factory=dict)  # service key -> valid names

    def known(self, name: str) -> bool:
        return (name in self.builtin or name in self.legacy or name in self.service
                or name in self.user)


class PostfixConfig:
    """main.cf + master.cf of one config directory, with Postfix's defaults."""

    def __init__(self, config_dir: str, main: MainCf, master: MasterCf | None,
                 table: DefaultsTable, facts: hostmod.HostFacts) -> None:
        self.config_dir = config_dir
        self.main = main
        self.master = master
        self.table = table
        self.facts = facts
        self.warnings: list[Diagnostic] = []
        self.params: dict[str, str] = {"config_directory": config_dir}
        for definition in main:
            self.params[definition.name] = definition.value
        self.names = _Names(builtin=set(table.defaults) | set(table.readonly)
                            | {"myhostname", "mydomain", "mynetworks"},
                            legacy=set(table.legacy))
        self._register_services()
        self._register_user_parameters()

    @classmethod
    def load(cls, config_dir: str | Path, *, table: DefaultsTable | None = None,
             facts: hostmod.HostFacts | None = None) -> PostfixConfig:
        """Read DIR/main.cf and DIR/master.cf; a missing master.cf is only a warning."""
        config_dir = str(config_dir)
        try:
            is_dir = stat.S_ISDIR(os.stat(config_dir).st_mode)
        except FileNotFoundError:
            raise ConfigError(config_dir, None, "no such directory") from None
        except PermissionError:
            raise ConfigError(config_dir, None, "permission denied") from None
        except OSError as exc:
            raise ConfigError(config_dir, None, exc.strerror or "cannot read") from None
        if not is_dir:
            raise ConfigError(config_dir, None, "not a directory")
        main = MainCf.read(Path(f"{config_dir}/main.cf"))
        master_path = Path(f"{config_dir}/master.cf")
        master: MasterCf | None = None
        missing: Diagnostic | None = None
        try:
            master = MasterCf.read(master_path)
        except ConfigError as exc:
            if exc.line is not None or exc.reason not in ("no such file",):
                raise
            missing = Diagnostic(str(master_path), None, "no such file", "missing-master")
        config = cls(config_dir, main, master, table or load_defaults(),
                     facts or hostmod.HostFacts.local())
        if missing is not None:
            config.warnings.insert(0, missing)
        return config

    # -- names -----------------------------------------------------------------------------

    @property
    def services(self) -> list[Service]:
        return self.master.services if self.master is not None else []

    def _register_services(self) -> None:
        for service in self.services:
            for name, default in self.table.service_parameters(
                    service.name, service.command).items():
                if name not in self.names.builtin:
                    self.names.service.setdefault(name, default)

    def _namespaces(self) -> dict[str, dict[str, str]]:
        """Each service's ``-o`` settings as postconf reads them, merged per name/type.

        postconf keeps one name space per name/type, shared by duplicate entries, and
        gives it to an entry only once it exists: entries before the first one with an
        ``-o`` have none (``with_params`` records which entries have one).
        """
        spaces: dict[str, dict[str, str]] = {}
        self.with_params: set[int] = set()
        for index, service in enumerate(self.services):
            params = service.postconf_params()
            if params:
                spaces.setdefault(service.key, {}).update(params)
            if service.key in spaces:
                self.with_params.add(index)
        return spaces

    def _register_user_parameters(self) -> None:
        """pcf_register_user_parameters(): master.cf name spaces first, then main.cf."""
        self.namespaces = self._namespaces()
        for key, space in self.namespaces.items():
            self.names.local.setdefault(key, set())
            self._scan(space, key)
        self._scan(self.params, None)

    def _scan(self, space: dict[str, str], scope: str | None) -> None:
        source = self._source(scope)
        classes = space.get("smtpd_restriction_classes")
        if classes is not None:
            # dict_eval(): expanded against this name space alone; an error is fatal there.
            expanded = expand(classes, space.get).text
            for token in lexer.tokens(expanded, COMMA_SPACE):
                self._flag(token, scope, source)
        for name, value in list(space.items()):
            if name in self.table.readonly:
                self.warnings.append(Diagnostic(source, None,
                                              f"read-only parameter assignment: {name}={value}",
                                              "read-only"))
                del space[name]
                continue
            if name in self.names.legacy:
                self.names.user.add(name)
            if name in self.table.raw:
                continue
            for ref in references(value):
                self._flag(ref, scope, source)
            if name in self.names.builtin or name in self.names.service:
                # postconf expands every built-in and service-defined value here, to find
                # legacy "type:prefix" tables; a value it cannot expand stops it.
                try:
                    expanded = self.expand(value, service=self._scope_service(scope)).text
                except ExpansionError as exc:
                    line = self._line_of(name) if scope is None else self._service_line(scope)
                    raise ConfigError(source, line, f"{name}: {exc}") from None
                self._register_dbms(expanded, scope, source)

    def _scope_service(self, scope: str | None) -> Service | None:
        if scope is None:
            return None
        return [s for s in self.services if s.key == scope][-1]

    def _register_dbms(self, text: str, scope: str | None, source: str) -> None:
        """pcf_register_dbms_helper(): 'ldap:foo' makes foo_server_host and friends valid."""
        for token in mastercf.split_words(text, COMMA_SPACE):
            if token.startswith("{"):
                self._register_dbms(mastercf.extract_braced(token, strip=False), scope, source)
                continue
            db_type, colon, prefix = token.partition(":")
            while colon and db_type == "proxy":
                db_type, colon, prefix = prefix.partition(":")
            # XXX: "type:/path" makes postconf check that client configuration file too;
            # that only adds warnings about the file, so it is left to the audit.
            if not colon or prefix.startswith(("/", ".")):
                continue
            if prefix.startswith("{"):
                self._register_dbms(mastercf.extract_braced(prefix, strip=False), scope,
                                    source)
                continue
            for suffix in self.table.dbms_suffixes.get(db_type, ()):
                self._flag(f"{prefix}_{suffix}", scope, source, dbms=True)

    def _flag(self, name: str, scope: str | None, source: str, dbms: bool = False) -> None:
        supplied = False
        if scope is not None and name in self.namespaces.get(scope, {}):
            supplied = True
            self.names.local[scope].add(name)
        elif name in self.params:
            supplied = True
            if not self.names.known(name):
                self.names.user.add(name)
        if scope is None:
            for key, space in self.namespaces.items():
                if name in space:
                    supplied = True
                    self.names.local[key].add(name)
        if not supplied and not dbms and not self.names.known(name):
            self.warnings.append(Diagnostic(source, None, f"undefined parameter: {name}",
                                          "undefined"))

    def _source(self, scope: str | None) -> str:
        return f"{self.config_dir}/{'master.cf' if scope else 'main.cf'}"

    def known(self, name: str) -> bool:
        return self.names.known(name)

    def unused(self) -> list[Diagnostic]:
        """main.cf names and ``-o`` names nothing uses (postconf's 'unused parameter')."""
        found: list[Diagnostic] = []
        for name, value in self.params.items():
            if not self.names.known(name):
                found.append(Diagnostic(self._source(None), self._line_of(name),
                                      f"unused parameter: {name}={value}", "unused"))
        for key, space in self.namespaces.items():
            for name, value in space.items():
                if not self.names.known(name) and name not in self.names.local[key]:
                    found.append(Diagnostic(self._source(key), self._service_line(key),
                                          f"unused parameter: {name}={value}", "unused"))
        return found

    def _line_of(self, name: str) -> int | None:
        found = self.main.find(name)
        return found[-1].lineno if found else None

    def _service_line(self, key: str) -> int | None:
        for service in reversed(self.services):
            if service.key == key:
                return service.lineno
        return None

    # -- values ----------------------------------------------------------------------------

    def default(self, name: str, *, pure: bool = False) -> str | None:
        """The default of a known name; host-dependent ones computed as Postfix does.

        ``pure`` ignores main.cf, as ``postconf -d`` does.
        """
        main = {} if pure else self.params
        if name == "myhostname":
            return hostmod.default_myhostname(self.facts, self._eval_main("mydomain", main))
        if name == "mydomain":
            myhostname = self._eval_main("myhostname", main)
            if myhostname is None:
                myhostname = hostmod.default_myhostname(self.facts, None)
            return hostmod.default_mydomain(myhostname)
        if name == "mynetworks":
            return self._default_mynetworks(main, pure)
        if name == "process_name":
            return "postconf"
        if name == "process_id":
            return str(os.getpid())
        if name == "service_name":
            return ""
        if name in self.table.defaults:
            return self.table.defaults[name]
        if name in self.names.service:
            return self.names.service[name]
        if name in self.names.user or name in self.names.legacy:
            return ""
        return None

    def compute_host_defaults(self) -> None:
        """Compute the host-dependent defaults main.cf leaves unset, as postconf always does.

        postconf scans every default value when it reads main.cf, and computing these
        evaluates main.cf settings (mydomain, inet_interfaces, mynetworks_style, ...): a
        setting that cannot be evaluated stops it there (ExpansionError here).
        """
        for name in ("myhostname", "mydomain", "mynetworks"):
            if name not in self.params:
                self.default(name)

    def _eval_main(self, name: str, main: dict[str, str]) -> str | None:
        """mail_conf_lookup_eval(): a main.cf value expanded against main.cf alone."""
        value = main.get(name)
        if value is None:
            return None
        return expand(value, main.get).text

    def _default_mynetworks(self, main: dict[str, str], pure: bool) -> str:
        def setting(name: str) -> str:
            value = None if pure else self._eval_main(name, main)
            if value is None:
                value = expand(self.table.defaults.get(name, ""),
                               lambda n: self.lookup(n, pure=pure)).text
            return value

        interfaces = hostmod.select_interfaces(
            self.facts, setting("inet_interfaces"), setting("inet_protocols"))
        return hostmod.mynetworks(interfaces, hostmod.check_style(setting("mynetworks_style")))

    def lookup(self, name: str, *, service: Service | None = None,
               pure: bool = False) -> str | None:
        """The raw (unexpanded) value a process would see; None if Postfix knows no such name."""
        if service is not None:
            if name == "process_name":
                return self._ro_service(service)[0]
            if name == "service_name":
                return self._ro_service(service)[1]
            override = self.namespaces.get(service.key, {}).get(name)
            if override is not None:
                return override
        if not pure and name in self.params:
            return self.params[name]
        if self.names.known(name) or name in self.table.readonly:
            return self.default(name, pure=pure)
        return None

    def _ro_service(self, service: Service) -> tuple[str, str]:
        last = [s for s in self.services if s.key == service.key][-1]
        process = last.process_name
        return process, (last.name if process != last.name else process)

    def expand(self, value: str, *, service: Service | None = None,
               pure: bool = False) -> Expansion:
        return expand(value, lambda n: self.lookup(n, service=service, pure=pure))

    def value(self, name: str, *, service: Service | None = None) -> str | None:
        """The expanded effective value of name (for a service when given)."""
        raw = self.lookup(name, service=service)
        if raw is None or name in self.table.raw:
            return raw
        return self.expand(raw, service=service).text

    def service(self, name: str, type_: str = "inet") -> Service | None:
        return self.master.get(name, type_) if self.master is not None else None

