"""A private Dovecot SASL auth server on a UNIX socket, for Postfix ``smtpd_sasl_type = dovecot``.

Security: Dovecot's master runs as root (it must, to create the listener with the owner asked
for and to switch its children to unprivileged users) from a config this module writes; the
command is an argument list, never a shell. User names, passwords and paths come from the
caller's code and are trusted, but what would change the structure of the passwd-file or
dovecot.conf (a ``:`` or blank in a user name, a blank, quote or ``%`` in a path, a newline
anywhere) is refused. Passwords are stored salted and hashed (``{SSHA512}``) in a file that
is 0640 root:<internal user's group>, and are never logged (``auth_verbose_passwords`` stays
off). There is no network listener (theory point 2). Processes are signalled only when they
are in the process group the master was started in.
Standards: Dovecot 2.3 dovecot.conf (``base_dir``, ``protocols``, ``default_internal_user``,
``default_login_user``, ``service auth { unix_listener }``), its passwd-file format and
password schemes (SSHA512), its auth protocol (the server's VERSION ... DONE handshake);
Postfix SASL_README "Dovecot SASL".

Theory of operation
-------------------
What was found by experiment (Dovecot 2.3.19.1 from dovecot-core, Debian 12, as root):

1. ``dovecot -F -c CONF`` runs the master in the foreground from any config; nothing under
   /etc/dovecot is read. Runtime sockets go to ``base_dir`` and the instance registry to
   ``state_dir``, both under root here, so two servers coexist and a system Dovecot, if
   any, is untouched.
2. With ``protocols`` empty the master starts "without any protocols": only internal
   services (auth, anvil, config, log...) run, on UNIX sockets in base_dir, and no TCP port
   is open. ``listen`` cannot be empty ("listen can't be set empty"), so it is 127.0.0.1,
   which matters only if a service ever got an inet_listener.
3. The auth process runs as ``default_internal_user`` (dovecot) and opens the passwd-file at
   the first lookup, so that user must be able to enter root ("missing +x perm" in the log,
   and a temporary failure, otherwise) and read the file: root is made 0755 and the file
   0640 with that user's group. The dovecot-core package creates ``dovecot`` and
   ``dovenull`` (``default_login_user``).
4. The master creates the unix_listener at start-up with the mode, user and group asked for
   (an absolute path is fine) and leaves it behind on exit, where it refuses connections.
   So ``start`` first removes an old socket (nothing else) and counts the server as ready
   when a connection there receives the auth handshake up to ``DONE``, which also proves
   that the auth process could start.
5. Errors before logging is set up (a config error) go to stderr, kept in ``dovecot.out``;
   the rest goes to ``log_path``. On SIGTERM the master logs "Killed with signal 15" and
   exits after about 1.1 s. Children without clients exit with it, but auth stays while a
   client is connected (and keeps log, anvil and stats alive): Postfix smtpd processes
   keep their auth connection while idle, up to ``max_idle`` (100 s). So ``stop`` sends
   SIGTERM to what is left of the master's process group (started as a new session, so
   the group is this server's alone), and SIGKILL only if that fails.
6. ``disable_plaintext_auth = no``: whether AUTH is offered without TLS is Postfix's
   decision (``smtpd_tls_auth_only``), which is what a test of a hardened config is about,
   so the lab server must not make it a second time.
7. A failed authentication is answered after ``auth_failure_delay`` (2 s), which only slows
   tests that fail logins on purpose; the lab sets it to 0. (The brute-force defence that
   matters for a hardened config is Postfix's, e.g. ``smtpd_client_auth_rate_limit``.)
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from postwarden.errors import PostwardenError
from postwarden.postfix.maincf import write_atomic

log = logging.getLogger(__name__)

SBIN = "/usr/sbin"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
# Users the dovecot-core package creates (theory point 3).
INTERNAL_USER = "dovecot"
LOGIN_USER = "dovenull"
POLL = 0.05
MAX_HANDSHAKE = 4096
MAX_SOCKET_PATH = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL
MAX_TAIL_LINES = 30
MASTER_GRACE = 3.0  # seconds; the master took 1.1 s to exit on SIGTERM
SALT_BYTES = 16

# Paths go into dovecot.conf unquoted; '%' would be expanded as a variable there.
_PATH = re.compile(r"/[A-Za-z0-9_./+@=,-]*\Z")
# passwd-file: "user:password:..."; a user name holds no separator, blank or control.
_USER = re.compile(r"[^:\s\x00-\x1f\x7f]+\Z")
_ACCOUNT = re.compile(r"[a-z][a-z0-9_-]*\Z")
_HANDSHAKE_DONE = re.compile(rb"(?:\A|\n)DONE\n")


class DovecotError(PostwardenError):
    """The lab Dovecot could not be configured, started or stopped."""

    def __init__(self, reason: str, *, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        text = reason
        if log_tail.strip():
            text += "\nlog tail:\n" + "\n".join("  " + line for line in log_tail.splitlines())
        super().__init__(text)


def find_dovecot() -> str | None:
    """The dovecot program in PATH or /usr/sbin (not in a normal user's PATH on Debian)."""
    return shutil.which("dovecot", path=os.environ.get("PATH", os.defpath) + os.pathsep + SBIN)


def dovecot_available() -> bool:
    """Whether Dovecot is installed with the users its package creates."""
    try:
        pwd.getpwnam(INTERNAL_USER)
        pwd.getpwnam(LOGIN_USER)
    except KeyError:
        return False
    return find_dovecot() is not None


def password_hash(password: str, salt: bytes | None = None) -> str:
    """Dovecot's ``{SSHA512}`` scheme: base64(SHA-512(password + salt) + salt)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.sha512(password.encode() + salt).digest()
    return "{SSHA512}" + base64.b64encode(digest + salt).decode("ascii")


class DovecotAuth:
    """Dovecot as a SASL auth server only, listening on ``socket_path`` and nowhere else.

    ``with DovecotAuth(root, socket, {"alice": "secret"}) as auth:`` starts it (unless
    started) and always stops it. Put the socket at ``<queue_directory>/private/auth`` for
    ``smtpd_sasl_type = dovecot`` and ``smtpd_sasl_path = private/auth``; its directory
    must exist (Postfix creates ``private`` at its first start).
    """

    def __init__(self, root: Path, socket_path: Path, users: Mapping[str, str], *,
                 socket_user: str = "postfix", socket_group: str = "postfix",
                 socket_mode: int = 0o660) -> None:
        self.root = Path(root).absolute()
        self.socket_path = Path(socket_path).absolute()
        for path in (self.root, self.socket_path):
            if not _PATH.match(str(path)):
                raise DovecotError(f"{str(path)!r}: only letters, digits and _./+@=,- can go "
                                   "into dovecot.conf here")
        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            raise DovecotError(f"{self.socket_path}: longer than a UNIX socket path can be")
        for name in users:
            if not _USER.match(name):
                raise DovecotError(f"not a passwd-file user name: {name!r}")
        if not 0 <= socket_mode <= 0o777:
            raise DovecotError(f"socket_mode must be 0..0777, not {socket_mode:o}")
        for name, kind in ((socket_user, "user"), (socket_group, "group")):
            if not _ACCOUNT.match(name):
                raise DovecotError(f"not a {kind} name: {name!r}")
        self.socket_user = socket_user
        self.socket_group = socket_group
        self.socket_mode = socket_mode
        self.config_path = self.root / "dovecot.conf"
        self.passwd_path = self.root / "users"
        self.base_dir = self.root / "run"
        self.state_dir = self.root / "state"
        self.log_path = self.root / "dovecot.log"
        self.output_path = self.root / "dovecot.out"
        self._users = dict(users)
        self._process: subprocess.Popen[bytes] | None = None

    # -- configuration ---------------------------------------------------------------------

    def render_config(self) -> str:
        """dovecot.conf: no protocol, one passwd-file, one auth listener (module docstring)."""
        return "\n".join([
            "# Written by postwarden.lab.dovecot: a SASL auth server for Postfix, nothing else.",
            "protocols =",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.state_dir}",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            "listen = 127.0.0.1",
            "ssl = no",
            f"default_internal_user = {INTERNAL_USER}",
            f"default_login_user = {LOGIN_USER}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_verbose = yes",
            # Theory point 7: no 2 s pause after a failed login.
            "auth_failure_delay = 0",
            "passdb {",
            "  driver = passwd-file",
            f"  args = {self.passwd_path}",
            "}",
            "userdb {",
            "  driver = static",
            f"  args = uid={LOGIN_USER} gid={LOGIN_USER} home=/nonexistent",
            "}",
            "service auth {",
            f"  unix_listener {self.socket_path} {{",
            f"    mode = {self.socket_mode:04o}",
            f"    user = {self.socket_user}",
            f"    group = {self.socket_group}",
            "  }",
            "}",
        ]) + "\n"

    def write_config(self) -> None:
        """Create root and write dovecot.conf and the passwd-file (hashed passwords)."""
        internal = _user(INTERNAL_USER)
        _user(LOGIN_USER)
        _user(self.socket_user)
        try:
            grp.getgrnam(self.socket_group)
        except KeyError:
            raise DovecotError(f"group {self.socket_group!r} does not exist") from None
        self.root.mkdir(parents=True, exist_ok=True)
        if self.root.stat().st_uid != os.geteuid():
            raise DovecotError(f"{self.root} belongs to another user; the root-run master "
                               "would trust files that user can change")
        self.root.chmod(0o755)
        _check_reachable(self.root, internal)
        write_atomic(self.config_path, self.render_config().encode(), mode=0o644)
        entries = "".join(f"{name}:{password_hash(password)}\n"
                          for name, password in self._users.items())
        write_atomic(self.passwd_path, entries.encode(), mode=0o640)
        os.chown(self.passwd_path, -1, internal.pw_gid)

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Write the config, start ``dovecot -F`` and wait for the auth handshake."""
        if self.running:
            raise DovecotError(f"the Dovecot in {self.root} is already running")
        if os.geteuid() != 0:
            raise DovecotError("the lab Dovecot needs root (its master creates the listener)")
        program = find_dovecot()
        if program is None:
            raise DovecotError("dovecot is not installed (apt-get install dovecot-core)")
        if not self.socket_path.parent.is_dir():
            raise DovecotError(f"{self.socket_path.parent} does not exist (start Postfix "
                               "first when the socket goes into its queue directory)")
        deadline = time.monotonic() + timeout
        self.write_config()
        _remove_socket(self.socket_path)
        log.info("dovecot: action=start config=%s socket=%s", self.config_path,
                 self.socket_path)
        with open(self.output_path, "wb") as output:
            self._process = subprocess.Popen(
                [program, "-F", "-c", str(self.config_path)], stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        try:
            self._await_handshake(deadline)
        except DovecotError as error:
            with contextlib.suppress(DovecotError):
                self.stop()
            raise error from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master, then whatever of its group outlives it (theory point 5); safe
        to repeat."""
        process = self._process
        if process is None:
            return
        deadline = time.monotonic() + timeout
        if process.poll() is None:
            log.info("dovecot: action=stop config=%s", self.config_path)
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(min(deadline - time.monotonic(), MASTER_GRACE), POLL))
        left = _end_group(process.pid, signal.SIGTERM,
                          min(deadline, time.monotonic() + MASTER_GRACE))
        if left:
            log.warning("dovecot: action=kill config=%s pids=%s", self.config_path, left)
            left = _end_group(process.pid, signal.SIGKILL, max(deadline, time.monotonic() + 1))
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(POLL)  # reap the master if SIGKILL was what ended it
        self._process = None
        _remove_socket(self.socket_path)
        if left:
            raise DovecotError(f"processes of {self.config_path} survive SIGKILL: {left}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The master's process id (also its process group's) while it runs."""
        return self._process.pid if self._process is not None else None

    def processes(self) -> list[int]:
        """Live processes in the master's process group."""
        return _group_members(self._process.pid) if self._process is not None else []

    def log_text(self) -> str:
        """Dovecot's log, after what it printed before logging was set up."""
        parts = []
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_bytes().decode("utf-8", "replace"))
        return "".join(parts)

    def __enter__(self) -> DovecotAuth:
        if not self.running:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    def _await_handshake(self, deadline: float) -> None:
        """Theory point 4: ready when the socket serves the auth handshake up to DONE."""
        last = "no connection"
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise self._error(f"dovecot exited with status {self._process.returncode}")
            try:
                if _handshake(self.socket_path, deadline):
                    return
                last = "handshake without DONE"
            except OSError as error:
                last = str(error)
            if time.monotonic() >= deadline:
                raise self._error(f"no auth handshake on {self.socket_path} in time "
                                  f"(last: {last})")
            time.sleep(POLL)

    def _error(self, reason: str) -> DovecotError:
        lines = self.log_text().splitlines()[-MAX_TAIL_LINES:]
        return DovecotError(f"{reason} (config {self.config_path})", log_tail="\n".join(lines))


def _user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise DovecotError(f"user {name!r} does not exist: is dovecot-core (and, for the "
                           "socket owner, postfix) installed?") from None


def _check_reachable(root: Path, user: pwd.struct_passwd) -> None:
    """Theory point 3: the auth process (as ``user``) must enter every directory to root."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (root, *root.parents):
        info = directory.stat()
        if info.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise DovecotError(f"user {user.pw_name} cannot enter {directory}, so Dovecot's "
                               "auth process cannot read its passwd-file; use a directory "
                               "made by tempfile.mkdtemp() in /tmp (pytest's tmp_path is not)")


def _remove_socket(path: Path) -> None:
    """Remove a socket left behind (theory point 4); refuse to remove anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise DovecotError(f"{path} exists and is not a socket; not removing it")
    path.unlink()


def _handshake(path: Path, deadline: float) -> bool:
    """Whether a connection to the auth socket receives the server handshake up to DONE."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(max(min(deadline - time.monotonic(), 2.0), 0.1))
        conn.connect(str(path))
        received = b""
        while len(received) < MAX_HANDSHAKE:
            data = conn.recv(MAX_HANDSHAKE - len(received))
            if not data:
                return False
            received += data
            if _HANDSHAKE_DONE.search(received):
                return True
    return False


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may hold anything: split after the last ")".
        fields = text[text.rfind(")") + 2:].split()
        if fields[0] not in "ZX" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return sorted(found)


def _end_group(pgid: int, signum: int, deadline: float) -> list[int]:
    """Send ``signum`` to the live members of a process group; wait until they are gone or
    the deadline passes; return those left."""
    for pid in _group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    while True:
        left = _group_members(pgid)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL)
