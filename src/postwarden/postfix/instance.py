"""A private, throw-away Postfix instance on a loopback address, for tests, probes and the lab.

Security: the instance runs the installed Postfix ``master`` as root from a config directory
this module writes; nothing read from outside reaches a command line (every command is an
argument list, never a shell). Settings and extra master.cf lines come from the caller's
Python code and are trusted, but a newline in them is refused so that one setting cannot
smuggle in another. An adopted main.cf/master.cf (``PostfixInstance.adopt``) is trusted the
same way: it is run as given, as root, apart from the overrides of theory point 11. The
listener is refused on anything but an IPv4 loopback address (an adopted inet service, too,
must name no other host), so a test MTA that relays for ``mynetworks`` is never reachable
from the network. The root directory must belong to the current user and is made 0755 so
that the unprivileged ``postfix`` user can reach the queue; processes are killed only when
``/proc`` shows they carry this instance's ``MAIL_CONFIG`` or belong to its master's process
group.
Standards: Postfix postfix(1), master(5), master(8), postlogd(8), postconf(5)
(``maillog_file``, ``alternate_config_directories``, ``alias_maps``), MAILLOG_README,
MULTI_INSTANCE_README, SASL_README (the Dovecot socket under ``queue_directory``);
RFC 5321 4.2 (the 220 greeting that marks the instance as ready).

Theory of operation
-------------------
Layout under ``root``: ``etc/`` (config_directory and meta_directory), ``queue/``
(queue_directory, root-owned 0755), ``data/`` (data_directory, owned by mail_owner 0700),
``mail/`` (mail_spool_directory) and ``maillog`` (maillog_file).

What was found by experiment (Postfix 3.7.11, Debian 12, no /etc/postfix/main.cf):

1. ``postfix -c DIR`` works for root with any absolute DIR; only non-root callers need DIR
   in ``alternate_config_directories`` of the default main.cf. Nothing under /etc/postfix
   is written or needed beyond the package's own files.
2. ``queue_directory`` must exist before ``postfix check``: the command chdir()s there
   first. ``post-install create-missing`` (run by check and start) then makes the queue
   subdirectories with the owners listed in ``$meta_directory/postfix-files``.
3. With ``meta_directory`` in the private directory, ``postfix-files`` must be copied there
   ("postfix-files is not a file" otherwise); ``dynamicmaps.cf`` and the two ``.d``
   directories are copied too so that dynamically loaded map types stay available.
   ``postfix-script`` and ``post-install`` need not be copied: they run from
   ``daemon_directory`` (/usr/lib/postfix/sbin), which stays at its default.
4. The master opens ``$data_directory/master.lock`` after dropping privileges, so every
   directory above ``root`` must be searchable by ``mail_owner``. pytest's ``tmp_path``
   (under a 0700 /tmp/pytest-of-root) is not; ``start`` checks this and says so.
5. Before ``maillog_file`` is in effect (a bad main.cf or master.cf), Postfix commands
   print errors only to a terminal (they test isatty(2)) and otherwise to syslog, which a
   container may not have. Commands are therefore run on a pseudo-terminal and their output
   is kept for the error. A master that dies early in start-up (say, an unknown service
   name in master.cf) logs only to syslog, and ``postfix start`` just says "mail system
   startup failed"; later failures (a port already taken) do reach maillog_file. The error
   adds what can be checked from here: whether the port is free.
6. Child processes' command lines name neither the config directory nor the master; they
   are recognised by ``MAIL_CONFIG=<config_dir>`` in /proc/PID/environ and by the master's
   process group. After ``postfix stop`` children exit within moments; zombies awaiting
   their reaper (PID 1) hold no resources and count as gone.
7. Two instances coexist when their roots and ports differ: each has its own queue, pid
   file, master.lock, postlog socket and log. A fixed port collides with other users of the
   machine, so the default port is a free one picked at construction.
8. The instance makes no DNS query: ``smtpd_peername_lookup = no``, smtp/lmtp DNS disabled,
   and ``default_transport = error`` so mail that is not for this host fails at once.
   ``mynetworks`` is ``ADDRESS/32``: clients from other 127.0.0.x addresses are outside.
   Mail for ``$mydestination`` goes to local(8), mailboxes under ``mail/``; recipients are
   the system's users plus an inline alias table (postmaster, abuse -> root), so
   /etc/aliases is never needed and ``.forward`` files are ignored.
9. Every Postfix program re-reads a main.cf modified in the last ~2 seconds until it is that
   old (util/dict_load_file.c, against half-written files): each start or reload right after
   a write took 2-2.6 s longer. main.cf is written by rename, never half, so its mtime is
   set 5 s back; start then takes about 0.5 s.
10. ``inet_interfaces`` must name addresses configured on an interface ("no local interface
   found for 127.0.0.5"); Linux routes all of 127.0.0.0/8 to lo but configures only
   127.0.0.1. So ``inet_interfaces = loopback-only`` (unqualified inet services stay on
   loopback), smtpd binds ADDRESS:PORT from its master.cf entry, which the master accepts
   for any address, and ``proxy_interfaces = ADDRESS`` makes mail to ``user@[ADDRESS]``
   local, as it is on a real server.
11. ``PostfixInstance.adopt`` runs a given main.cf and master.cf (say, Debian's default after
   ``postwarden harden``). main.cf keeps its text, comments and settings; ``MainCf.set``
   changes only what running privately needs, in place or appended once, so no name is
   defined twice: the FIXED_SETTINGS (directories, log, ``inet_interfaces``),
   ``proxy_interfaces`` (point 10), the no-DNS / no-outbound settings of point 8 (plus
   ``relay_transport``, so mail for ``relay_domains`` fails too), ``myhostname`` only when
   the text does not set it, and ``alias_maps``/``alias_database`` (the inline table of
   point 8) unless ``alias_maps`` uses only ``inline:``/``static:`` tables: its default,
   ``hash:/etc/aliases, nis:mail.aliases``, needs a host file (/etc/aliases.db is absent
   after a "No configuration" install) and NIS. ``mynetworks``, restrictions, TLS and SASL
   settings stay as given. XXX: restrictions that query DNS (``reject_rbl_client``,
   ``reject_unknown_*``) still do; overriding them would test another config, so a caller
   that cares runs without a resolver. master.cf gets its SMTP servers rebound to
   ADDRESS:<free port> and no chroot; ``postwarden.postfix.adopt`` says how, and what that
   changes in log names.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from postwarden.postfix.adopt import (
    adopt_main_cf,
    adopt_master_cf,
    render_main_cf,
    render_master_cf,
)
from postwarden.postfix.maincf import MainCf, write_atomic
from postwarden.postfix.mastercf import split_words
from postwarden.postfix.process import (
    COMMAND_ENV,
    POLL,
    CommandResult,
    free_port,
    instance_pids,
    port_free,
    process_config,
    run_on_terminal,
)
from postwarden.postfix.process import (
    InstanceError as InstanceError,  # re-exported: callers catch it from here
)

log = logging.getLogger(__name__)

TEST_HOSTNAME = "postwarden-test.localdomain"
SBIN = "/usr/sbin"
# Debian keeps the pristine master.cf here; upstream installs $meta_directory/master.cf.proto.
MASTER_CF_TEMPLATE = "/usr/share/postfix/master.cf.dist"
META_FILES = ("postfix-files", "postfix-files.d", "dynamicmaps.cf", "dynamicmaps.cf.d")
# Settings the instance itself depends on; change them through the constructor or not at all.
FIXED_SETTINGS = frozenset({
    "config_directory", "meta_directory", "queue_directory", "data_directory",
    "maillog_file", "maillog_file_prefixes", "inet_interfaces", "mail_spool_directory",
})
# Theory point 11: what an adopted main.cf gets besides FIXED_SETTINGS (point 8: no DNS, no
# outbound mail; point 10: ADDRESS counts as this host).
ADOPT_SETTINGS = FIXED_SETTINGS | {
    "proxy_interfaces", "smtpd_peername_lookup", "smtp_dns_support_level",
    "lmtp_dns_support_level", "smtp_host_lookup", "lmtp_host_lookup", "default_transport",
    "relay_transport",
}
ALIAS_SETTINGS = ("alias_maps", "alias_database")
# Table types that read no host file and ask no network service.
SELF_CONTAINED_TABLES = ("inline:", "static:")
MAIN_CF_AGE = 5.0  # seconds
MAX_TAIL_LINES = 30
MAX_LINE = 400

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_RELOADED = re.compile(r"postfix/master\[\d+\]: reload -- ")


def find_program(name: str) -> str | None:
    """Find a Postfix program in PATH or /usr/sbin (not in a normal user's PATH on Debian)."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + SBIN
    return shutil.which(name, path=path)


def postfix_available() -> bool:
    """Whether the postfix and postconf commands are installed."""
    return find_program("postfix") is not None and find_program("postconf") is not None


def _self_contained(alias_maps: str | None) -> bool:
    """Whether every table of an alias_maps value is inline: or static: (point 11)."""
    if alias_maps is None:
        return False  # the default: hash:/etc/aliases, nis:mail.aliases
    tables = split_words(alias_maps, " \t\r\n,")
    return all(table.startswith(SELF_CONTAINED_TABLES) for table in tables)


class PostfixInstance:
    """A Postfix instance with its own config, queue and log under ``root``.

    ``with PostfixInstance(root) as pf:`` starts it (unless already started) and always
    stops it on exit. See the module docstring for what it sets and why. ``ports`` maps
    each SMTP service's master.cf name to its port (``{"smtp": port}`` unless adopted).
    """

    def __init__(self, root: Path, *, address: str = "127.0.0.1", port: int | None = None,
                 main_cf: Mapping[str, str] | None = None, services: Sequence[str] = ()) -> None:
        try:
            ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if not isinstance(ip, ipaddress.IPv4Address) or not ip.is_loopback:
            raise InstanceError(f"address must be an IPv4 loopback address, not {address!r}")
        if port is not None and not 0 < port < 65536:
            raise InstanceError(f"port must be 1..65535, not {port}")
        self.root = Path(root).absolute()
        self.address = address
        self.port = port if port is not None else free_port(address)
        self.config_dir = self.root / "etc"
        self.queue_directory = self.root / "queue"
        self.data_directory = self.root / "data"
        self.mail_directory = self.root / "mail"
        self.log_path = self.root / "maillog"
        for line in services:
            _check_text("master.cf line", line)
        self.services = tuple(services)
        self.ports: dict[str, int] = {"smtp": self.port}
        self._main_cf = self._base_main_cf()
        # Set by adopt: the given main.cf text and the master.cf made private.
        self._adopted_main_cf: str | None = None
        self._adopted_master_cf: str | None = None
        self._master_pid: int | None = None
        self._written = False
        self.configure(main_cf or {})

    @classmethod
    def adopt(cls, root: Path, main_cf_text: str, master_cf_text: str, *,
              address: str = "127.0.0.1",
              extra_main_cf: Mapping[str, str] | None = None) -> PostfixInstance:
        """An instance that runs a given main.cf and master.cf, changed only as theory
        point 11 says; ``extra_main_cf`` is applied on top like ``configure``.

        ``port`` is the smtp service's (else the first plaintext SMTP service's) and
        ``ports`` has every rebound service. A malformed file is a ConfigError.
        """
        given = MainCf(main_cf_text)
        master = adopt_master_cf(master_cf_text, address=address)
        instance = cls(root, address=address, port=master.greeting_port)
        instance.ports = dict(master.ports)
        instance._adopted_main_cf = main_cf_text
        instance._adopted_master_cf = master.text
        base = instance._base_main_cf()
        instance._main_cf = {name: base[name] for name in base if name in ADOPT_SETTINGS}
        instance._main_cf["relay_transport"] = base["default_transport"]
        if "myhostname" not in given:
            instance._main_cf["myhostname"] = TEST_HOSTNAME
        if not _self_contained(given.get("alias_maps")):
            instance._main_cf.update({name: base[name] for name in ALIAS_SETTINGS})
        instance.configure(extra_main_cf or {})
        return instance

    # -- configuration -------------------------------------------------------------------

    @property
    def main_cf(self) -> dict[str, str]:
        """A copy of the settings main.cf is written with (over the given text if adopted)."""
        return dict(self._main_cf)

    def render_main_cf(self) -> str:
        """The main.cf text ``write_config`` writes."""
        if self._adopted_main_cf is None:
            return render_main_cf(self._main_cf)
        return adopt_main_cf(self._adopted_main_cf, self._main_cf)

    def configure(self, main_cf: Mapping[str, str]) -> None:
        """Add or override main.cf settings; rewrites main.cf if written (then ``reload``)."""
        for name, value in main_cf.items():
            if not _NAME.match(name):
                raise InstanceError(f"not a main.cf parameter name: {name!r}")
            if name in FIXED_SETTINGS:
                raise InstanceError(f"{name} is set by PostfixInstance itself; it cannot be "
                                    "overridden (choose root and address instead)")
            _check_text(f"value of {name}", value)
        self._main_cf.update(main_cf)
        if self._written:
            self._write_main_cf()

    def _write_main_cf(self) -> None:
        path = self.config_dir / "main.cf"
        write_atomic(path, self.render_main_cf().encode(), mode=0o644)
        # Theory point 9: complete by rename, so date it back past Postfix's 2 s wait.
        past = time.time() - MAIN_CF_AGE
        os.utime(path, (past, past))

    def _base_main_cf(self) -> dict[str, str]:
        return {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "meta_directory": str(self.config_dir),
            "queue_directory": str(self.queue_directory),
            "data_directory": str(self.data_directory),
            "mail_spool_directory": str(self.mail_directory),
            "maillog_file": str(self.log_path),
            # postlogd refuses a maillog_file outside these prefixes.
            "maillog_file_prefixes": str(self.root),
            # Theory point 10: listen where master.cf says, count ADDRESS as this host.
            "inet_interfaces": "loopback-only",
            "proxy_interfaces": "" if self.address == "127.0.0.1" else self.address,
            "inet_protocols": "ipv4",
            "myhostname": TEST_HOSTNAME,
            # Explicit, so /etc/mailname (Debian's usual myorigin) is never consulted.
            "myorigin": "$myhostname",
            "mydestination": "$myhostname, localhost.$mydomain, localhost",
            # Only the instance's own address: 127.0.0.2+ are outside clients.
            "mynetworks": f"{self.address}/32",
            # RFC 5321 4.5.1 wants postmaster; an inline table needs no /etc/aliases or newaliases.
            "alias_maps": "inline:{ postmaster=root, abuse=root }",
            "alias_database": "",
            "forward_path": "",
            "biff": "no",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "default_transport": "error:outbound mail is disabled in this test instance",
            # Tests make errors on purpose; tarpits and error limits would only slow them.
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_junk_command_limit": "1000",
            "in_flow_delay": "0s",
        }

    def write_config(self) -> None:
        """Create the directories and write main.cf, master.cf and the meta files."""
        if os.geteuid() != 0:
            raise InstanceError("a private Postfix instance needs root (postfix start does)")
        owner = self._mail_owner()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root.stat().st_uid != os.geteuid():
            raise InstanceError(f"{self.root} belongs to another user; the root-run master "
                                "would trust files that user can change")
        self.root.chmod(0o755)
        _check_reachable(self.root, owner)
        for directory in (self.config_dir, self.queue_directory, self.mail_directory):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        self.data_directory.mkdir(exist_ok=True)
        os.chown(self.data_directory, owner.pw_uid, -1)
        self.data_directory.chmod(0o700)
        meta = _system_meta_directory()
        for name in META_FILES:
            source = meta / name
            if source.is_dir():
                shutil.copytree(source, self.config_dir / name, dirs_exist_ok=True)
            elif source.is_file():
                shutil.copyfile(source, self.config_dir / name)
            elif name == "postfix-files":
                raise InstanceError(f"{source} is missing: is Postfix installed completely?")
        master_cf = self._adopted_master_cf
        if master_cf is None:
            master_cf = render_master_cf(_master_cf_template(meta), address=self.address,
                                         port=self.port, services=self.services)
        _write_text(self.config_dir / "master.cf", master_cf)
        self._write_main_cf()
        self._written = True

    def _mail_owner(self) -> pwd.struct_passwd:
        name = self._main_cf.get("mail_owner")
        if name is None and self._adopted_main_cf is not None:
            name = MainCf(self._adopted_main_cf).get("mail_owner")
        name = name or "postfix"
        try:
            return pwd.getpwnam(name)
        except KeyError:
            raise InstanceError(f"user {name!r} (mail_owner) does not exist: "
                                "is the Postfix package installed?") from None

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, run ``postfix check`` and ``postfix start``, await the 220."""
        if self.running:
            raise InstanceError(f"the instance in {self.root} is already running")
        deadline = time.monotonic() + timeout
        self.write_config()
        since = len(self.log_text())
        log.info("instance: action=start config=%s address=%s port=%s",
                 self.config_dir, self.address, self.port)
        check = self._postfix("check", deadline)
        if check.returncode != 0:
            raise self._failure("postfix check", check)
        started = self._postfix("start", deadline)
        if started.returncode != 0:
            self._abort(self._failure("postfix start", started, since))
        self._master_pid = self.master_pid
        try:
            self._await_greeting(deadline)
        except InstanceError as error:
            self._abort(error)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the instance and make sure none of its processes remain; safe to repeat."""
        deadline = time.monotonic() + timeout
        output = ""
        if self.running:
            log.info("instance: action=stop config=%s", self.config_dir)
            # postfix stop waits up to 5 s for the master, then kills its group with -9.
            output = self._postfix("stop", min(deadline, time.monotonic() + 10.0)).output
        left = self._wait_gone(deadline - 2.0)
        if left:
            log.warning("instance: action=kill config=%s pids=%s", self.config_dir, left)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            left = self._wait_gone(max(deadline, time.monotonic() + 2.0))
        if left:
            raise InstanceError(f"processes of {self.config_dir} survive SIGKILL: {left}",
                                output=output, log_tail=_tail(self.log_text()))
        # Forget the group: its number may belong to someone else's processes later.
        self._master_pid = None

    def reload(self, timeout: float = 10.0) -> None:
        """``postfix reload`` and wait until the master logs that it re-read its config."""
        if not self.running:
            raise InstanceError(f"the instance in {self.root} is not running")
        deadline = time.monotonic() + timeout
        pos = len(self.log_text())
        result = self._postfix("reload", deadline)
        if result.returncode != 0:
            raise self._failure("postfix reload", result)
        self.wait_for_log(_RELOADED, timeout=max(0.0, deadline - time.monotonic()), pos=pos)

    def __enter__(self) -> PostfixInstance:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- observation -----------------------------------------------------------------------

    @property
    def master_pid(self) -> int | None:
        """The running master's process id from queue/pid/master.pid, else None."""
        try:
            pid = int((self.queue_directory / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        # The pid file outlives the master; a reused pid belongs to someone else.
        return pid if process_config(pid) == str(self.config_dir) else None

    @property
    def running(self) -> bool:
        return self.master_pid is not None

    def processes(self) -> list[int]:
        """Live processes of this instance: its MAIL_CONFIG or its master's process group."""
        return instance_pids(str(self.config_dir), self._master_pid)

    def log_text(self) -> str:
        """The whole maillog so far ("" before the first line)."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0, *,
                     pos: int = 0) -> re.Match[str]:
        """Poll the maillog until ``pattern`` matches at or after character ``pos``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            found = regex.search(text, pos)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise InstanceError(f"no log line matched {regex.pattern!r} within {timeout}s "
                                    f"in {self.log_path}", log_tail=_tail(text))
            time.sleep(POLL)

    # -- internals -------------------------------------------------------------------------

    def _postfix(self, command: str, deadline: float) -> CommandResult:
        program = find_program("postfix")
        if program is None:
            raise InstanceError("the postfix command is not installed (PATH or /usr/sbin)")
        timeout = max(deadline - time.monotonic(), 1.0)
        return run_on_terminal([program, "-c", str(self.config_dir), command], timeout)

    def _failure(self, what: str, result: CommandResult, since: int = 0) -> InstanceError:
        if result.returncode is None:
            reason = f"{what} did not finish in time"
        else:
            reason = f"{what} failed with exit status {result.returncode}"
        text = self.log_text()
        taken = [port for port in self.ports.values()
                 if what == "postfix start" and not port_free(self.address, port)]
        if taken:
            reason += f"; {self.address}:{taken[0]} is already in use"
        elif what == "postfix start" and "postfix/master[" not in text[since:]:
            reason += ("; the master gave its reason to syslog only (theory point 5): "
                       "check the extra or adopted master.cf lines")
        return InstanceError(f"{reason} (config {self.config_dir})", output=result.output,
                             log_tail=_tail(text))

    def _abort(self, error: InstanceError) -> None:
        """Clean up after a failed start, then raise ``error``."""
        try:
            self.stop()
        except InstanceError as stop_error:
            error.add_note(f"cleanup also failed: {stop_error.reason}")
        raise error

    def _await_greeting(self, deadline: float) -> None:
        """Wait for the RFC 5321 4.2 greeting: a 220 reply at connection time."""
        last = "no connection"
        while True:
            try:
                with socket.create_connection((self.address, self.port), timeout=2.0) as conn, \
                        conn.makefile("rb") as reader:
                    banner = reader.readline(512)
                    if banner.startswith(b"220"):
                        conn.sendall(b"QUIT\r\n")
                        return
                    last = f"greeting {banner!r}"
            except OSError as error:
                last = str(error)
            if time.monotonic() >= deadline:
                raise InstanceError(f"no 220 greeting from {self.address}:{self.port} in time "
                                    f"(last: {last})", log_tail=_tail(self.log_text()))
            time.sleep(POLL)

    def _wait_gone(self, deadline: float) -> list[int]:
        while True:
            left = self.processes()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(POLL)


def _check_reachable(root: Path, owner: pwd.struct_passwd) -> None:
    """Every directory above ``root`` must be searchable by ``owner`` (theory point 4)."""
    groups = set(os.getgrouplist(owner.pw_name, owner.pw_gid))
    for directory in root.parents:
        info = directory.stat()
        if info.st_uid == owner.pw_uid:
            ok = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            ok = bool(info.st_mode & stat.S_IXGRP)
        else:
            ok = bool(info.st_mode & stat.S_IXOTH)
        if not ok:
            raise InstanceError(
                f"user {owner.pw_name} cannot enter {directory} (mode "
                f"{stat.S_IMODE(info.st_mode):04o}), so Postfix cannot reach {root}; put the "
                "instance under a directory every user can search, e.g. one made by "
                "tempfile.mkdtemp() in /tmp (pytest's tmp_path is not)")


def _system_meta_directory() -> Path:
    postconf = find_program("postconf")
    if postconf is None:
        raise InstanceError("the postconf command is not installed (PATH or /usr/sbin)")
    # -d: the compiled-in default, whatever /etc/postfix/main.cf (if any) says.
    result = subprocess.run([postconf, "-d", "-h", "meta_directory"], capture_output=True,
                            text=True, env=COMMAND_ENV, timeout=30, check=False)
    value = result.stdout.strip()
    if result.returncode != 0 or not value.startswith("/"):
        raise InstanceError(f"postconf -d meta_directory failed: {result.stderr.strip()}")
    return Path(value)


def _master_cf_template(meta: Path) -> str:
    candidates = (Path(MASTER_CF_TEMPLATE), meta / "master.cf.proto")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise InstanceError(f"no packaged master.cf template: tried {', '.join(map(str, candidates))}")


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode(), mode=0o644)


def _check_text(what: str, text: str) -> None:
    if any(ch in text for ch in "\n\r\0"):
        raise InstanceError(f"{what} must be one line: {text!r}")


def _tail(text: str) -> str:
    lines = text.splitlines()[-MAX_TAIL_LINES:]
    return "\n".join(line if len(line) <= MAX_LINE else line[:MAX_LINE] + "..." for line in lines)

