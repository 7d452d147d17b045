"""Postfix parameter defaults and the set of names Postfix knows, by version.

Security: the shipped tables are postwarden's own data. The live table comes from running
the local ``postconf`` binary (an argument list, on a private empty directory); its output
is parsed line by line and nothing from it is executed.
Standards: postconf(1) (-d, -n, -x); postconf(5); Postfix 3.7
``postconf/postconf_builtin.c`` (built-in, raw, read-only and legacy parameter classes),
``postconf/postconf_service.c`` (service-defined parameters).

Theory of operation
-------------------
A ``DefaultsTable`` holds what ``postconf -d`` knows for one Postfix version: every built-in
name with its default, the names postconf never expands (``raw``), the legacy names it still
accepts, the read-only ones, and for each delivery program (smtp, pipe, spawn, ...) the
parameter suffixes a master.cf service running it defines (``relay`` with ``smtp`` gives
``relay_destination_concurrency_limit = $default_destination_concurrency_limit``).

``probe`` builds a table by asking a ``postconf`` binary (used by scripts/gen_defaults.py to
write the shipped JSON files, and at run time when Postfix is installed, so the installed
version's own defaults win). ``load`` prefers the live table and falls back to the shipped
file of the nearest version. Host-dependent defaults (myhostname, mydomain, mynetworks) are
not in the table: ``config`` computes them with ``host`` as Postfix does.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from postwarden.errors import PostwardenError

HOST_DEPENDENT = ("myhostname", "mydomain", "mynetworks", "process_id", "process_name")
READONLY = ("process_id", "process_name", "service_name")
PROGRAMS = ("local", "error", "virtual", "smtp", "lmtp", "pipe", "spawn")
DBMS_TYPES = ("ldap", "mysql", "pgsql", "sqlite", "memcache")
LEGACY_CANDIDATES = (
    "virtual_maps", "fallback_relay", "authorized_verp_clients",
    "smtpd_client_connection_limit_exceptions", "postscreen_dnsbl_ttl",
    "postscreen_blacklist_action", "postscreen_dnsbl_whitelist_threshold",
    "postscreen_whitelist_interfaces", "lmtp_per_record_deadline", "smtp_per_record_deadline",
    "smtpd_per_record_deadline", "tlsproxy_client_level", "tlsproxy_client_policy",
)
# Names postconf interprets while computing other defaults: a probe value would break the
# probe run, and none of them is raw.
_PROBE_EXCLUDED = frozenset({
    "compatibility_level", "inet_interfaces", "inet_protocols", "mynetworks_style",
    "myhostname", "mydomain", "config_directory", *READONLY,
})
_PROBE = "$$pwprobe"  # expansion turns it into "$pwprobe"; a raw parameter keeps it
POSTCONF_PATHS = ("/usr/sbin/postconf", "/usr/local/sbin/postconf")
TIMEOUT = 30.0


class DefaultsError(PostwardenError):
    """No usable table of Postfix defaults."""


@dataclass(frozen=True)
class DefaultsTable:
    mail_version: str
    defaults: dict[str, str]
    raw: frozenset[str]
    legacy: frozenset[str]
    readonly: frozenset[str]
    service_suffixes: dict[str, dict[str, str]]
    dbms_suffixes: dict[str, tuple[str, ...]]
    source: str

    def is_builtin(self, name: str) -> bool:
        return name in self.defaults

    def service_parameters(self, service: str, program: str) -> dict[str, str]:
        """Names a master.cf service running ``program`` defines, with their defaults."""
        suffixes = self.service_suffixes.get(program, {})
        return {service + suffix: value for suffix, value in suffixes.items()}

    def to_json(self) -> dict[str, object]:
        return {
            "mail_version": self.mail_version,
            "generated_by": "scripts/gen_defaults.py",
            "defaults": dict(sorted(self.defaults.items())),
            "host_dependent": list(HOST_DEPENDENT),
            "readonly": sorted(self.readonly),
            "raw": sorted(self.raw),
            "legacy": sorted(self.legacy),
            "service_suffixes": self.service_suffixes,
            "dbms_suffixes": {k: list(v) for k, v in sorted(self.dbms_suffixes.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, object], source: str) -> DefaultsTable:
        def strings(key: str) -> frozenset[str]:
            value = data.get(key, [])
            if not isinstance(value, list):
                raise DefaultsError(f"{source}: {key} must be a list")
            return frozenset(str(item) for item in value)

        defaults = data.get("defaults")
        suffixes = data.get("service_suffixes")
        dbms = data.get("dbms_suffixes", {})
        if not (isinstance(defaults, dict) and isinstance(suffixes, dict)
                and isinstance(dbms, dict)):
            raise DefaultsError(f"{source}: defaults and *_suffixes must be tables")
        return cls(
            mail_version=str(data.get("mail_version", "")),
            defaults={str(k): str(v) for k, v in defaults.items()},
            raw=strings("raw"), legacy=strings("legacy"), readonly=strings("readonly"),
            service_suffixes={
                str(prog): {str(k): str(v) for k, v in table.items()}
                for prog, table in suffixes.items() if isinstance(table, dict)
            },
            dbms_suffixes={str(k): tuple(str(s) for s in v) for k, v in dbms.items()
                           if isinstance(v, list)},
            source=source,
        )


def find_postconf() -> str | None:
    found = shutil.which("postconf")
    if found:
        return found
    for path in POSTCONF_PATHS:
        if Path(path).is_file():
            return path
    return None


def _run(postconf: str, config_dir: Path, *args: str) -> dict[str, str]:
    try:
        out = subprocess.run(
            [postconf, "-c", str(config_dir), *args],
            check=True, capture_output=True, text=True, timeout=TIMEOUT,
            errors="surrogateescape",
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DefaultsError(f"{postconf}: {exc}") from None
    table: dict[str, str] = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition(" = ")
        table[name.removesuffix(" =")] = value
    return table


def _write(root: Path, main_cf: str, master_cf: str) -> Path:
    for name, text in (("main.cf", main_cf), ("master.cf", master_cf)):
        path = root / name
        path.write_text(text)
        # Postfix re-reads a file changed in the last second or two (dict_load_file_xt),
        # sleeping between tries; a back-dated mtime keeps the probe fast.
        os.utime(path, (0, 0))
    return root


def probe(postconf: str, known: DefaultsTable | None = None) -> DefaultsTable:
    """Build a table by asking a postconf binary (see the module docstring).

    With ``known``, a table of the same mail_version, the parameter classes (raw, legacy,
    table-type names), which a version does not change, are taken from it: two postconf
    runs instead of ten.
    """
    with tempfile.TemporaryDirectory(prefix="postwarden-defaults-") as tmp:
        base = _write(Path(tmp), "", "")
        defaults = _run(postconf, base, "-d")

        _write(base, "", "".join(f"pwprobe{p} unix - n n - - {p}\n" for p in PROGRAMS))
        with_services = _run(postconf, base, "-d")
        suffixes = {
            prog: {
                name.removeprefix(f"pwprobe{prog}"): value
                for name, value in with_services.items()
                if name.startswith(f"pwprobe{prog}_")
            }
            for prog in PROGRAMS
        }

        if known is not None and known.mail_version == defaults.get("mail_version"):
            raw, legacy, dbms = known.raw, known.legacy, known.dbms_suffixes
        else:
            probed = sorted(name for name in defaults if name not in _PROBE_EXCLUDED)
            _write(base, "".join(f"{name} = {_PROBE}\n" for name in probed), "")
            expanded = _run(postconf, base, "-n", "-x")
            raw = frozenset(name for name in probed if expanded.get(name) == _PROBE)

            _write(base, "".join(f"{name} = probe\n" for name in LEGACY_CANDIDATES), "")
            legacy = frozenset(_run(postconf, base, "-n")) - {"config_directory"}

            dbms = {db: _probe_dbms(postconf, base, db) for db in DBMS_TYPES}
    for name in HOST_DEPENDENT:
        defaults.pop(name, None)
    return DefaultsTable(
        mail_version=defaults.get("mail_version", ""),
        defaults=defaults, raw=raw, legacy=legacy, readonly=frozenset(READONLY),
        service_suffixes=suffixes, dbms_suffixes=dbms, source=f"live {postconf} -d",
    )


_IDENTIFIER = re.compile(rb"[a-z][a-z0-9_]{1,40}")


def _underscores(word: str) -> list[int]:
    return [i for i, ch in enumerate(word) if ch == "_"]


def _probe_dbms(postconf: str, base: Path, db_type: str) -> tuple[str, ...]:
    """The legacy ``prefix_suffix`` names a ``db_type:prefix`` table makes valid.

    postconf keeps each lookup-table type's option names (ldap_table(5) and friends) in a
    compiled-in list. The candidates are the identifiers in the postconf binary itself and
    their tails after each '_' (a compiler may store "ttl" as the tail of "dns_ttl"); the
    ones postconf accepts after ``alias_maps = db_type:pwprobe`` are the list.
    """
    try:
        binary = Path(postconf).read_bytes()
    except OSError as exc:
        raise DefaultsError(f"{postconf}: {exc.strerror}") from None
    words = {m.decode() for m in _IDENTIFIER.findall(binary)}
    candidates = sorted({word[i + 1:] if i >= 0 else word
                         for word in words for i in [-1, *_underscores(word)]} - {""})
    main_cf = f"alias_maps = {db_type}:pwprobe\n" + "".join(
        f"pwprobe_{name} = 1\n" for name in candidates)
    _write(base, main_cf, "")
    accepted = _run(postconf, base, "-n")
    return tuple(sorted(name.removeprefix("pwprobe_") for name in accepted
                        if name.startswith("pwprobe_")))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def shipped_versions() -> list[str]:
    data = resources.files("postwarden.postfix") / "data"
    names = [entry.name for entry in data.iterdir() if entry.name.startswith("postfix-")]
    return sorted((n.removeprefix("postfix-").removesuffix(".json") for n in names),
                  key=_version_key)


def shipped(version: str | None = None) -> DefaultsTable:
    """The shipped table for version, or the newest one not newer than it (else the oldest)."""
    versions = shipped_versions()
    if not versions:
        raise DefaultsError("no shipped Postfix defaults table")
    chosen = versions[-1]
    if version is not None:
        older = [v for v in versions if _version_key(v) <= _version_key(version)]
        chosen = older[-1] if older else versions[0]
    resource = resources.files("postwarden.postfix") / "data" / f"postfix-{chosen}.json"
    data = json.loads(resource.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise DefaultsError(f"{resource}: not a JSON object")
    return DefaultsTable.from_json(data, f"shipped postfix-{chosen}.json")


@functools.cache
def load(live: bool = True) -> DefaultsTable:
    """The defaults of the installed Postfix when there is one, else the newest shipped."""
    postconf = find_postconf() if live else None
    if postconf is not None:
        try:
            return probe(postconf, known=shipped())
        except DefaultsError:
            pass  # a broken local postconf: the shipped table is still right for its version
    return shipped()
