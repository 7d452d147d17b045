"""Listening sockets for postwarden's daemons: unix sockets with an explicit mode, and TCP.

Security: a unix socket is created under umask 0177 (so it starts 0600), then given the
owner, group and mode asked for: it is never more open than configured. A file in the
way is replaced only when it is a socket nobody answers on (left by a server that died);
a live server's socket or any other file is refused. Owner and group are looked up here,
before the daemon drops its privileges.
Standards: unix(7) (socket files, connect to a stale socket: ECONNREFUSED); accept(2)
(EAGAIN when another process took the connection); socket(7) ``SO_REUSEPORT`` (sockets of
one user on one address, connections spread over them by a hash of their addresses).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from postwarden.errors import PostwardenError
from postwarden.policy import privileges

log = logging.getLogger(__name__)

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


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket (``SO_REUSEPORT``: see ``bind_tcp_copies``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG,
                                    reuse_port=reuse_port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        raise ListenError(f"tcp:{host}:{port}: {reason}") from None


def bind_tcp_copies(host: str, port: int, copies: int) -> list[socket.socket]:
    """``copies`` listening sockets on one address, for as many worker processes: with
    more than one, each has ``SO_REUSEPORT``, so the kernel spreads new connections
    evenly over them by their addresses, where one shared socket lets whichever worker
    wakes first take them (50 connections opened at once went 39 and 11). Only a process
    of the same user (root, binding before the privilege drop) can add a socket to the
    group. Port 0 is resolved by the first; the others take the same port."""
    if copies == 1:
        return [bind_tcp(host, port)]
    bound: list[socket.socket] = []
    try:
        for _ in range(copies):
            bound.append(bind_tcp(host, port, reuse_port=True))
            port = bound[0].getsockname()[1]
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]


class SharedAcceptor:
    """Serves one bound listening socket that other worker processes may share.

    asyncio's own server accepts every pending connection at each wakeup, so with several
    processes on one socket (``postwarden.prefork``) a burst of connections all lands on
    whichever process woke first. This takes one connection per wakeup: every process
    that is free wakes, and the connections spread over them. The interface is the part
    of ``asyncio.Server`` the daemons use (``sockets``, ``close``, ``wait_closed``). Each
    connection goes to ``handler`` as a stream pair, or to a new ``protocol()``.
    """

    def __init__(self, sock: socket.socket, handler: StreamHandler | None = None, *,
                 protocol: Callable[[], asyncio.BaseProtocol] | None = None,
                 limit: int = 2 ** 16) -> None:
        if (handler is None) == (protocol is None):
            raise ValueError("SharedAcceptor: give a stream handler or a protocol factory")
        self.sockets = [sock]
        self._handler, self._protocol, self._limit = handler, protocol, limit
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._ready)

    def _ready(self) -> None:
        try:
            conn, _ = self.sockets[0].accept()
        except (BlockingIOError, InterruptedError):
            return                       # another process took it
        except OSError as exc:
            # Out of descriptors or buffers: pause, as asyncio's server does, rather
            # than spin on a socket that stays readable.
            log.warning("listen: accept failed: %s; pausing 1 s", exc.strerror or exc)
            self._loop.remove_reader(self.sockets[0].fileno())
            self._loop.call_later(1.0, self._resume)
            return
        task = self._loop.create_task(self._open(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self.sockets[0].fileno(), self._ready)

    async def _open(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            if self._protocol is not None:
                await self._loop.connect_accepted_socket(self._protocol, conn)
                return
            reader, writer = await asyncio.open_connection(sock=conn, limit=self._limit)
        except OSError:
            conn.close()
            return
        assert self._handler is not None
        self._handler(reader, writer)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self.sockets[0].fileno())
            self.sockets[0].close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
