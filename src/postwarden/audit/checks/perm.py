"""PERM: ownership and modes of the files Postfix trusts, and who may use its local tools.

Security: reads file metadata (stat/lstat) of the directories and files the configuration
names and, for the aliases rule, the bounded text of alias source files (``Context.read``);
the config directory walk stops at ``MAX_WALK`` entries and depth ``MAX_DEPTH``; never
writes, never follows a symlink out of the config directory.
Standards: Postfix 3.7 ``conf/postfix-files`` (canonical owners and modes) and
``postfix-script`` check-warn; postconf(5) mail_owner, setgid_group, alias_maps,
authorized_submit_users; DATABASE_README (postmap, indexed files); RFC 5321 section 4.5.1
(postmaster).

Theory of operation
-------------------
The rules compare what is on disk with postfix-files. Tests and many real hosts run as root,
so a path owned by root where postfix-files says mail_owner is not reported: that breaks
mail, it does not let anyone in. What is reported is an owner other than root (and
mail_owner where Postfix writes), group or other write, and secrets other users can read.
A path that does not exist is not this module's finding (a copied configuration audited on
another machine has none of them).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Iterator

from postwarden.audit.context import Context
from postwarden.audit.model import Hit, Role, Severity, rule

FILES = "postfix-files"
P5 = "postconf(5)"
MAX_WALK = 2000
MAX_DEPTH = 4
MAX_HITS = 20
WRITE_GO = 0o022
# Lookup tables whose configuration file holds database or LDAP credentials.
SECRET_TABLES = ("mysql", "pgsql", "ldap", "sqlite", "memcache", "mongodb")
PASSWORD_MAPS = ("smtp_sasl_password_maps", "lmtp_sasl_password_maps")
# DATABASE_README: the file postmap(1) builds next to the source, per table type.
INDEX_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb",
                "dbm": ".pag", "sdbm": ".pag"}
ALIAS_SOURCES = (*INDEX_SUFFIX, "texthash")
# postfix-files: $queue_directory/<name>:d:<owner>:<group>:<mode>
QUEUE_MODES = {"private": 0o700, "public": 0o710, "maildrop": 0o730, "pid": 0o755,
               **{n: 0o700 for n in ("active", "bounce", "corrupt", "defer", "deferred",
                                     "flush", "hold", "incoming", "saved", "trace")}}
SHARED_ACCOUNTS = ("root", "nobody", "daemon", "bin", "mail", "sys")
SHARED_GROUPS = ("root", "wheel", "users", "nogroup", "mail", "staff", "adm", "daemon",
                 "bin", "sys")
TABLE_WORD = re.compile(r"[\s,{}]+")


def _uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, OSError):
        return None


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, OSError):
        return None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _tables(ctx: Context) -> Iterator[tuple[str, str, str]]:
    """(parameter, table type, absolute path) of every file-backed table in use."""
    values: dict[str, list[str]] = {}
    for definition in ctx.config.main:
        values.setdefault(definition.name, []).append(ctx.value(definition.name))
    for service in ctx.services:
        for name in service.overrides():
            values.setdefault(name, []).append(ctx.value(name, service))
    for name in ("alias_maps", "alias_database"):
        values.setdefault(name, []).append(ctx.value(name))
    seen: set[str] = set()
    for name, texts in values.items():
        for text in texts:
            for word in TABLE_WORD.split(text):
                while word.startswith(("proxy:", "unionmap:", "pipemap:")):
                    word = word.split(":", 1)[1]
                kind, _, path = word.partition(":")
                if path.startswith("/") and f"{kind}:{path}" not in seen:
                    seen.add(f"{kind}:{path}")
                    yield name, kind, path


def _mode(mode: int) -> str:
    return f"{mode:04o}"


@rule(id="PERM-001", title="Config directory writable or owned by others",
      severity=Severity.HIGH, parameters=("config_directory",),
      rationale="Whoever can change a file under the config directory can make Postfix run "
                "a command as any user (pipe, spawn), drop milters or open relaying.",
      fix="chown -R root the config directory and remove group and other write "
          "(chmod -R go-w); replace symlinks that point outside it by real files.",
      references=(f"{FILES} $config_directory", "postfix-script check-warn"))
def config_dir(ctx: Context) -> Iterator[Hit]:
    root = ctx.value("config_directory") or ctx.config.config_dir
    try:
        real_root = os.path.realpath(root)
    except (OSError, ValueError):
        return
    hits = 0
    pending: list[tuple[str, int]] = [(root, 0)]
    visited = 0
    while pending and visited < MAX_WALK and hits < MAX_HITS:
        path, depth = pending.pop()
        visited += 1
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISLNK(info.st_mode):
            target = os.path.realpath(path)
            if target != real_root and not target.startswith(real_root.rstrip("/") + "/"):
                hits += 1
                yield Hit(f"{path} is a symlink to {target}, outside {root}", file=path)
            continue
        problems = []
        if info.st_uid != 0:
            problems.append(f"owner uid {info.st_uid}")
        if stat.S_IMODE(info.st_mode) & WRITE_GO:
            problems.append(f"mode {_mode(stat.S_IMODE(info.st_mode))}")
        if problems:
            hits += 1
            yield Hit(f"{path}: {', '.join(problems)}", file=path)
        if stat.S_ISDIR(info.st_mode) and depth < MAX_DEPTH:
            try:
                names = sorted(os.listdir(path))
            except OSError:
                continue
            pending.extend((os.path.join(path, n), depth + 1) for n in reversed(names))


@rule(id="PERM-002", title="Lookup-table credentials readable by other users",
      severity=Severity.HIGH, parameters=PASSWORD_MAPS,
      rationale="mysql:, pgsql:, ldap: and similar table files carry database passwords, "
                "and SASL password maps carry relay credentials; readable by 'other', any "
                "local account can take them.",
      fix="chmod o-rwx: 0640 root:postfix when a non-root daemon reads the file (or use "
          "proxy: so proxymap reads it as root), else 0600 root.",
      references=(f"{P5} proxy_read_maps", "SASL_README Enabling SASL authentication in "
                  "the Postfix SMTP/LMTP client", "MYSQL_README"))
def readable_secrets(ctx: Context) -> Iterator[Hit]:
    for name, kind, path in _tables(ctx):
        paths = []
        if kind in SECRET_TABLES:
            paths.append(path)
        elif name in PASSWORD_MAPS:
            paths.append(path)
            if kind in INDEX_SUFFIX:
                paths.append(path + INDEX_SUFFIX[kind])
        for candidate in paths:
            facts = ctx.file(candidate)
            if facts.exists and facts.mode & 0o004:
                yield Hit(f"{kind}:{path}: {facts.path} has mode {_mode(facts.mode)}",
                          parameter=name, file=facts.path)


@rule(id="PERM-003", title="Queue directory modes looser than postfix-files",
      severity=Severity.HIGH, parameters=("queue_directory",),
      rationale="The queue holds every message; a group- or world-accessible private, "
                "maildrop or incoming directory lets local users read, inject or delete mail.",
      fix="Run 'postfix set-permissions' (Debian: postfix check then postfix "
          "set-permissions) to restore the owners and modes of postfix-files.",
      references=(f"{FILES} $queue_directory", "postfix-script check-warn"))
def queue_dir(ctx: Context) -> Iterator[Hit]:
    queue = ctx.value("queue_directory")
    if not queue.startswith("/"):
        return
    owner = _uid(ctx.value("mail_owner"))
    allowed = {0} if owner is None else {0, owner}
    top = ctx.file(queue)
    if top.exists and (top.uid != 0 or top.mode & WRITE_GO):
        yield Hit(f"{queue}: owner uid {top.uid}, mode {_mode(top.mode)} (expected root, "
                  "not group or other writable)", file=queue)
    for name, expected in QUEUE_MODES.items():
        facts = ctx.file(f"{queue}/{name}")
        if not facts.exists:
            continue
        extra = facts.mode & 0o777 & ~expected
        wrong_owner = facts.uid != 0 if name == "pid" else facts.uid not in allowed
        if extra or wrong_owner:
            yield Hit(f"{facts.path}: owner uid {facts.uid}, mode {_mode(facts.mode)} "
                      f"(postfix-files: {_mode(expected)})", file=facts.path)


@rule(id="PERM-004", title="postdrop or postqueue not set-gid to setgid_group",
      severity=Severity.MEDIUM, parameters=("command_directory", "setgid_group"),
      rationale="postdrop and postqueue are the only set-gid programs of Postfix; owned by "
                "someone else, writable, or set-gid to another group they either hand that "
                "group's privileges out or break local submission.",
      fix="Run 'postfix set-permissions' (root:$setgid_group, mode 2755).",
      references=(f"{FILES} $command_directory/postdrop", "postfix-script check-warn"))
def setgid_helpers(ctx: Context) -> Iterator[Hit]:
    group = _gid(ctx.value("setgid_group"))
    for program in ("postdrop", "postqueue"):
        facts = ctx.file(f"{ctx.value('command_directory')}/{program}")
        if not facts.exists:
            continue
        problems = []
        if facts.uid != 0:
            problems.append(f"owner uid {facts.uid}")
        # postfix-files says 2755; Debian ships 2555, which is as safe: what matters is the
        # set-gid bit and that nobody but root can change the program.
        if not facts.mode & 0o2000 or facts.mode & 0o022:
            problems.append(f"mode {_mode(facts.mode)}")
        if group is not None and facts.gid != group:
            problems.append(f"group gid {facts.gid}, not {ctx.value('setgid_group')}")
        if problems:
            yield Hit(f"{facts.path}: {', '.join(problems)} (expected root:"
                      f"{ctx.value('setgid_group')} 2755)", file=facts.path)


@rule(id="PERM-005", title="data_directory owned by others or writable by group or other",
      severity=Severity.MEDIUM, parameters=("data_directory",),
      rationale="data_directory holds the TLS session caches, the verify and postscreen "
                "caches and lock files; tampering there poisons caches or blocks Postfix.",
      fix="chown mail_owner (postfix) data_directory; chmod go-w.",
      references=(f"{FILES} $data_directory", f"{P5} data_directory"))
def data_dir(ctx: Context) -> Iterator[Hit]:
    path = ctx.value("data_directory")
    if not path.startswith("/"):
        return
    facts = ctx.file(path)
    if not facts.exists:
        return
    owner = _uid(ctx.value("mail_owner"))
    if facts.uid not in ({0} if owner is None else {0, owner}) or facts.mode & WRITE_GO:
        yield Hit(f"{path}: owner uid {facts.uid}, mode {_mode(facts.mode)}",
                  parameter="data_directory", file=path)


@rule(id="PERM-006", title="Indexed lookup table missing or older than its source",
      severity=Severity.MEDIUM,
      rationale="Postfix reads the indexed file postmap(1) builds, not the text source: an "
                "edit not followed by postmap (or newaliases) is not in force, and a missing "
                "index makes every lookup fail.",
      fix="Run postmap on the source file (newaliases for alias_maps) after each edit.",
      references=("DATABASE_README", "postmap(1)", "newaliases(1)"))
def stale_index(ctx: Context) -> Iterator[Hit]:
    for name, kind, path in _tables(ctx):
        suffix = INDEX_SUFFIX.get(kind)
        source = _mtime(path)
        if suffix is None or source is None:
            continue
        index = _mtime(path + suffix)
        if index is None:
            yield Hit(f"{kind}:{path}: {path}{suffix} does not exist (postmap never run)",
                      parameter=name, file=path)
        elif index < source:
            yield Hit(f"{kind}:{path}: {path}{suffix} is older than {path}",
                      parameter=name, file=path)


@rule(id="PERM-007", title="mail_owner or setgid_group not dedicated", severity=Severity.HIGH,
      parameters=("mail_owner", "setgid_group"),
      rationale="postconf(5) asks for a dedicated user and group: Postfix processes own the "
                "queue as mail_owner, so sharing it (root, nobody, daemon) gives other "
                "programs the mail, and a shared setgid_group can inject into maildrop.",
      fix="Create a postfix user and a postdrop group used by nothing else and set "
          "mail_owner and setgid_group to them.",
      references=(f"{P5} mail_owner", f"{P5} setgid_group"))
def shared_accounts(ctx: Context) -> Iterator[Hit]:
    owner = ctx.value("mail_owner")
    group = ctx.value("setgid_group")
    try:
        accounts = pwd.getpwall()
    except OSError:
        accounts = []
    entry = next((a for a in accounts if a.pw_name == owner), None)
    if owner in SHARED_ACCOUNTS or (entry is not None and entry.pw_uid == 0):
        yield Hit(f"mail_owner = {owner} is a shared system account", parameter="mail_owner")
    elif entry is not None:
        sharing = [a.pw_name for a in accounts if a.pw_uid == entry.pw_uid and a is not entry]
        if sharing:
            yield Hit(f"mail_owner = {owner} shares uid {entry.pw_uid} with "
                      f"{', '.join(sharing[:5])}", parameter="mail_owner")
    gid = _gid(group)
    if group in SHARED_GROUPS or group == owner:
        yield Hit(f"setgid_group = {group} is not a dedicated group", parameter="setgid_group")
    elif gid is not None and entry is not None and gid == entry.pw_gid:
        yield Hit(f"setgid_group = {group} is mail_owner's primary group",
                  parameter="setgid_group")


def _alias_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or line[0] in " \t":
            continue
        name, colon, _ = line.partition(":")
        if colon:
            names.add(name.strip().strip('"').lower())
    return names


@rule(id="PERM-008", title="No alias for root or postmaster", severity=Severity.LOW,
      parameters=("alias_maps",),
      rationale="Postfix and cron report problems to root and postmaster; RFC 5321 section "
                "4.5.1 requires postmaster. Without aliases that mail sits in a mailbox "
                "nobody reads.",
      fix="Alias postmaster to root and root to a monitored address, then run newaliases.",
      references=("RFC 5321 section 4.5.1", "aliases(5)", f"{P5} alias_maps"))
def missing_aliases(ctx: Context) -> Iterator[Hit]:
    # XXX: only text sources of alias_maps are read; aliases in SQL or LDAP tables are not
    # seen, so such a table keeps the rule quiet rather than guess.
    for word in TABLE_WORD.split(ctx.value("alias_maps")):
        kind, _, path = word.partition(":")
        if kind not in ALIAS_SOURCES or not path.startswith("/"):
            if ":" in word:
                return
            continue
        data = ctx.read(path)
        if data is None:
            continue
        names = _alias_names(data.decode("utf-8", "replace"))
        missing = [n for n in ("postmaster", "root") if n not in names]
        if missing:
            yield Hit(f"{path} has no alias for {' or '.join(missing)}",
                      parameter="alias_maps", file=path)
        return


@rule(id="PERM-009", title="Every local user may submit mail and read the queue",
      severity=Severity.INFO, roles=(Role.NULL_CLIENT, Role.RELAY),
      parameters=("authorized_submit_users", "authorized_mailq_users",
                  "authorized_flush_users"),
      rationale="With static:anyone (the default) any local account, including a "
                "compromised web application, can send mail through sendmail(1) and list "
                "or flush the queue.",
      fix="On hosts with untrusted local users, list the accounts that need it "
          "(authorized_submit_users = root, www-data; authorized_mailq_users = root).",
      references=(f"{P5} authorized_submit_users", f"{P5} authorized_mailq_users",
                  f"{P5} authorized_flush_users"))
def anyone_local(ctx: Context) -> Iterator[Hit]:
    for name in ("authorized_submit_users", "authorized_mailq_users",
                 "authorized_flush_users"):
        words = ctx.words(name)
        if words and words[0].startswith("static:"):
            yield Hit(f"{name} = {' '.join(words)}", parameter=name)
