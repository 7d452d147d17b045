"""Listening sockets for postwarden's daemons: unix sockets with an explicit mode, and TCP.

Security: a unix socket is created under umask 0177 (so it starts 0600), then given the
owner, group and mode asked for: it is never more open than configured. A file in the
way is replaced only when it is a socket nobody answers on (left by a server that died);
a live server's socket or any other file is refused. Owner and group are looked up here,
before the daemon drops its privileges.
Standards: unix(7) (socket files, connect to a stale socket: ECONNREFUSED).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from postwarden.errors import PostwardenError
from postwarden.policy import privileges

BACKLOG = 1024  # Postfix opens about one connection per smtpd or cleanup process


class ListenError(PostwardenError):
    """An endpoint that cannot be bound."""


def _unlink_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ListenError(f"unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: left by a server that is gone
        return
    except OSError as exc:
        raise ListenError(f"unix:{path}: cannot tell whether it is in use: "
                          f"{exc.strerror}") from None
    finally:
        probe.close()
    raise ListenError(f"unix:{path}: another server is listening on it")


def bind_unix(path: str | Path, mode: int = 0o660, owner: str | None = None,
              group: str | None = None) -> socket.socket:
    where = Path(path)
    _unlink_stale(where)
    uid = privileges.lookup_user(owner).pw_uid if owner else -1
    gid = privileges.lookup_group(group) if group else -1
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise ListenError(f"unix:{path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    try:
        if uid != -1 or gid != -1:
            os.chown(path, uid, gid)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise ListenError(f"unix:{path}: cannot set owner or mode: {exc.strerror}") from None
    sock.listen(BACKLOG)
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise ListenError(f"tcp:{host}:{port}: {reason}") from None
