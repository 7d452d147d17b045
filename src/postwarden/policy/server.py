"""The asyncio shell of the policy service: sockets, connections, signals, metrics.

Security: anyone who can reach a listening socket is a client; unix sockets are created
0600 under a tight umask and only then given the configured mode and owner, so there is no
moment when they are wider than asked. A stale socket file is removed only after a
connection to it is refused; a live server on it, or a file that is not a socket, stops
the start. Each connection owns one decoder; a protocol error closes that connection with
one log line and touches no other. The metrics endpoint (postwarden.scrape) reads a
bounded request head, answers and closes; it shows counters only.
Standards: SMTPD_POLICY_README (persistent connections, one request at a time, "in case
of trouble ... log a warning and disconnect"); RFC 9112 (just enough HTTP/1.1 for a
Prometheus scrape); Prometheus text exposition format 0.0.4.

Theory of operation
-------------------
1. Binding is plain ``socket`` work done before the event loop starts, while still root;
   then privileges are dropped; then the loop serves the bound sockets. So the store and
   every file opened afterwards belong to the unprivileged user.
2. Each connection is an asyncio protocol (``_Connection``) with one decoder. Bytes in are
   fed to it; a whole request starts a task that decides it and writes the reply, then the
   next whole request, if one is waiting, is taken. One decision at a time per connection,
   so smtpd's strict request/response order holds; bytes that come while a decision is in
   flight pause reading (so the decoder holds at most two reads beyond the request begun:
   pausing at every decision would cost two system calls a request), as does a full send
   buffer, so neither the decoder's buffer nor unread replies grow without bound; a peer
   that shuts down its side still gets the answers to what it sent whole. A connection idle
   for ``idle_timeout`` is closed by one timer per connection that each read merely stamps,
   not by a timer per read.
3. With ``workers`` above 1 (``run``), the bound sockets are served by that many forked
   processes (``postwarden.prefork``); each has its own loop, counters and store
   connection. Each has its own copy of every TCP socket (``SO_REUSEPORT``: the kernel
   spreads connections evenly; one shared socket gave the first worker to wake most of
   them, and smtpd's connections are long-lived, so that worker stayed the bottleneck).
   A unix socket is one for all, and each takes one connection per wakeup
   (``listen.SharedAcceptor``), so that a burst of new connections spreads over them.
4. Shutdown (SIGTERM or SIGINT): stop accepting; close connections that wait for a
   request; give connections in the middle of a decision ``grace`` seconds to answer;
   then cancel what is left and close.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from typing import cast

from postwarden import prefork, scrape
from postwarden.dns import DnsResolver
from postwarden.errors import UsageError
from postwarden.listen import SharedAcceptor, bind_tcp, bind_tcp_copies, bind_unix
from postwarden.policy import privileges
from postwarden.policy.model import PolicyRequest
from postwarden.policy.protocol import ProtocolError, RequestDecoder, encode_reply
from postwarden.policy.service import PolicyService, SystemClock, build_checks
from postwarden.policy.store import StoreError, expire_forever, open_store
from postwarden.policy.store.redis import RedisStore  # noqa: F401 - imported before the drop
from postwarden.policy.store.sqlite import SqliteStore  # noqa: F401 - (see PRELOAD_CODECS)
from postwarden.settings import Endpoint, Settings

# The event loop: uvloop's (libuv, in C) when it can be imported, else asyncio's own. With
# it a request cost 6 to 14% less CPU and the benchmark's p99 fell by 0.6 to 1.2 ms
# (docs/policyd.md, Performance). Imported here, before the privilege drop.
LOOP_FACTORY: Callable[[], asyncio.AbstractEventLoop] | None
try:
    from uvloop import new_event_loop as LOOP_FACTORY
except ImportError:  # a dependency, but asyncio's loop serves as well, only slower
    LOOP_FACTORY = None

log = logging.getLogger(__name__)

# Bytes one read may bring: a request is usually under 1 KiB. Each connection reads into
# a buffer of its own this size (asyncio.BufferedProtocol); a plain Protocol has asyncio
# allocate 256 KiB for every read, which cost 12 µs a read in a microbenchmark.
READ_SIZE = 8192


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6), for ``--metrics``."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--metrics: {text!r}: expected HOST:PORT")
    return host, int(port)


def bind(endpoints: Sequence[Endpoint], mode: int = 0o660, owner: str | None = None,
         group: str | None = None, *, workers: int = 1) -> list[list[socket.socket]]:
    """For each worker process, the sockets it serves: every unix socket (shared, the
    workers taking one connection per wakeup each) and its own copy of every TCP socket
    (``listen.bind_tcp_copies``: the kernel spreads connections evenly). On any failure
    none stays open."""
    bound: list[socket.socket] = []
    served: list[list[socket.socket]] = [[] for _ in range(workers)]
    try:
        for e in endpoints:
            if e.kind == "unix":
                sock = bind_unix(e.path, mode, owner, group)
                bound.append(sock)
                for mine in served:
                    mine.append(sock)
                continue
            copies = bind_tcp_copies(e.host, e.port, workers)
            bound.extend(copies)
            for mine, copy in zip(served, copies, strict=True):
                mine.append(copy)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return served


class PolicyServer:
    """Serves a ``PolicyService`` on bound sockets, plus an optional metrics socket."""

    def __init__(self, service: PolicyService, sockets: Sequence[socket.socket], *,
                 metrics: socket.socket | None = None, grace: float = 5.0,
                 idle_timeout: float = 3600.0) -> None:
        self.service = service
        self.sockets = list(sockets)
        self.metrics_socket = metrics
        self.grace = grace
        # Postfix closes idle policy connections after max_idle (300 s) and any after
        # max_ttl (1000 s); a peer silent for much longer than that is not smtpd.
        self.idle_timeout = idle_timeout
        self._servers: list[asyncio.Server | SharedAcceptor] = []
        self.connections: set[_Connection] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        for sock in self.sockets:
            self._servers.append(SharedAcceptor(sock, protocol=lambda: _Connection(self)))
        if self.metrics_socket is not None:
            self._servers.append(await scrape.serve(self.metrics_socket,
                                                    self.service.counters.prometheus))

    @property
    def stopping(self) -> bool:
        return self._stopping

    def addresses(self) -> list[str]:
        """Where the server listens (``unix:PATH``, ``tcp:HOST:PORT``), metrics last."""
        found = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                found.append(f"unix:{name}" if sock.family == socket.AF_UNIX
                             else f"tcp:{name[0]}:{name[1]}")
        return found

    async def stop(self) -> None:
        """Stop accepting, let decisions in flight finish within ``grace``, close all."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for server in self._servers:
            server.close()
        for conn in [c for c in self.connections if c.decision is None]:
            conn.close()
        busy = [c.decision for c in self.connections if c.decision is not None]
        if busy:
            await asyncio.wait(busy, timeout=self.grace)
        leftover = [c.decision for c in self.connections if c.decision is not None]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=1.0)
        for conn in list(self.connections):
            conn.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


class _Connection(asyncio.BufferedProtocol):
    """One client connection: bytes in, requests out of its decoder, one decision at a
    time, the reply written when it is made.

    A protocol rather than a stream pair and a task per connection: a request costs one
    task (its decision) and no wake-ups of a reader; a buffered one, reading into a
    buffer of its own (``READ_SIZE``). Bytes that come while a decision is in flight
    pause reading (smtpd never sends before it has its reply, so this happens only with a
    peer that does), and so does a full reply buffer (a peer that does not read), so
    neither the decoder's buffer nor the replies can grow without bound."""

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.service = server.service
        self.decoder = RequestDecoder()
        self.buffer = memoryview(bytearray(READ_SIZE))
        self.transport: asyncio.Transport | None = None
        # Python 3.11's get_running_loop() makes a getpid() system call; one lookup per
        # connection, not per request.
        self.loop = asyncio.get_running_loop()
        self.peer = "client"
        self.decision: asyncio.Task[None] | None = None
        self.idle: _IdleTimer | None = None
        self.paused = False        # the transport asked us to stop writing
        self.eof = False           # the peer has shut down its side
        self.closing = False       # we are closing it: no more requests are taken
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport
        self.peer = _peer(transport)
        self.server.connections.add(self)
        self.service.counters.connections += 1
        self.idle = _IdleTimer(self.server.idle_timeout, self._idle_too_long)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received(bytes(self.buffer[:nbytes]))

    def received(self, data: bytes) -> None:
        assert self.idle is not None and self.transport is not None
        self.idle.touch()
        try:
            self.decoder.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        if self.decision is None and not self.paused:
            self._next()
        elif not self.closing:
            self.transport.pause_reading()  # resumed once the reply is out

    def eof_received(self) -> bool:
        """The peer will send no more: answer what it has sent whole, then close."""
        self.eof = True
        if self.decision is None:
            self._next()
        return True  # the transport stays open for replies; _next closes it after them

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle is not None:
            self.idle.cancel()
        self.server.connections.discard(self)
        self.service.counters.connections -= 1

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.decision is None and not self.closed:
            self._next()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.closed:
            self.transport.close()

    def _next(self) -> None:
        """Start deciding the next whole request, if one has come; else read on."""
        assert self.transport is not None
        if self.server.stopping or self.closing:
            return
        try:
            request = self.decoder.next_request()
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        if request is None:
            if not self.eof:
                self.transport.resume_reading()
                return
            if self.decoder.in_request:
                log.info("policyd: %s disconnected in the middle of a request", self.peer)
            self.close()
            return
        self.decision = self.loop.create_task(self._decide(request))

    async def _decide(self, request: PolicyRequest) -> None:
        try:
            verdict = await self.service.decide(request)
            if not self.closed:
                assert self.transport is not None
                self.transport.write(encode_reply(verdict.action))
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception:
            log.exception("policyd: %s: internal error, closing the connection", self.peer)
            self.close()
        finally:
            self.decision = None
        if not self.closed and not self.paused:
            self._next()

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.service.counters.errors["protocol"] += 1
        log.warning("policyd: %s: protocol error, closing the connection: %s", self.peer,
                    exc)
        self.close()

    def _idle_too_long(self) -> bool:
        """The idle timer ran out: close the connection, unless a decision is in flight
        (then the timer starts again)."""
        if self.decision is not None:
            return False
        log.info("policyd: %s idle for %g s, closing", self.peer, self.server.idle_timeout)
        self.close()
        return True


class _IdleTimer:
    """Calls ``expire`` once nothing has touched it for ``limit`` seconds, unless
    ``expire`` returns False (then it waits another ``limit``). A request costs one clock
    reading here, not a timer of its own."""

    def __init__(self, limit: float, expire: Callable[[], bool]) -> None:
        self.loop = asyncio.get_running_loop()
        self.limit = limit
        self.expire = expire
        self.last = self.loop.time()
        self.handle = self.loop.call_at(self.last + limit, self._check)

    def touch(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        due = self.last + self.limit
        if due <= self.loop.time():
            if self.expire():
                return
            self.touch()
            due = self.last + self.limit
        self.handle = self.loop.call_at(due, self._check)

    def cancel(self) -> None:
        self.handle.cancel()


def _peer(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"client {name[0]}:{name[1]}"
    return "client on unix socket"


async def serve(settings: Settings, sockets: Sequence[socket.socket],
                metrics: socket.socket | None) -> None:
    """Serve until SIGTERM or SIGINT."""
    p = settings.policyd
    clock = SystemClock()
    store = open_store(settings.store.url)   # after the privilege drop: files are the user's
    try:
        await store.expire(clock.now(), 1)      # opens it: a bad path or mode shows now
    except StoreError as exc:
        if settings.store.kind == "sqlite":
            await store.close()
            raise
        log.warning("policyd: %s; answering %s until it is back", exc, p.failsafe_action)
    resolver = DnsResolver(nameserver=settings.spf.nameserver or None,
                           timeout=settings.spf.lookup_time)
    expiry = asyncio.create_task(expire_forever(store, clock))
    service = PolicyService(build_checks(settings, store, resolver, clock), budget=p.budget,
                            failsafe_action=p.failsafe_action, dry_run=p.dry_run)
    server = PolicyServer(service, sockets, metrics=metrics)
    try:
        await _serve(server, p.dry_run)
    finally:
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        await store.close()


async def _serve(server: PolicyServer, dry_run: bool) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stopping.add(loop.create_task(server.stop())))
    log.info("policyd: listening on %s (%s loop)%s", " ".join(server.addresses()),
             type(loop).__module__.split(".")[0],
             " (dry run: every answer is DUNNO)" if dry_run else "")
    await server.wait_stopped()
    log.info("policyd: stopped")


# XXX: after the privilege drop, Python may no longer be able to read its own library
# (a Python under /root, a 0700 virtualenv), and codecs are imported on first use. So the
# codecs used while serving are looked up before the drop; the checks' modules are imported
# at the top of service.py for the same reason. The way out is a Python installed where
# the service user can read it, which a packaged install is.
PRELOAD_CODECS = ("utf-8", "ascii", "latin-1", "unicode_escape", "idna", "punycode")


def run(settings: Settings, metrics: tuple[str, int] | None = None, workers: int = 1) -> int:
    """Bind, drop privileges, serve; the whole life of ``postwarden policyd``.

    With ``workers`` above 1, that many processes serve the same sockets
    (``postwarden.prefork``), each with its own connection to the store; SQLite's write
    lock orders them (see ``store.sqlite``). Counters are per process, so metrics need a
    single worker.
    """
    if workers > 1 and metrics is not None:
        raise UsageError("--metrics: the counters are per process; use it with one worker")
    p = settings.policyd
    for name in PRELOAD_CODECS:
        codecs.lookup(name)
    served = bind(p.listen, p.socket_mode, p.socket_owner, p.socket_group, workers=workers)
    every = list({id(sock): sock for mine in served for sock in mine}.values())
    try:
        metrics_socket = bind_tcp(*metrics) if metrics else None
    except BaseException:
        for sock in every:
            sock.close()
        raise
    try:
        account = privileges.drop_privileges(p.user, p.group)
    except BaseException:
        for sock in [*every, *([metrics_socket] if metrics_socket else [])]:
            sock.close()
        raise
    if account is not None:
        log.info("policyd: running as %s (uid %d, gid %d)", account.user, account.uid,
                 account.gid)

    def child() -> int:
        with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
            runner.run(serve(settings, served[prefork.worker() or 0], metrics_socket))
        return 0
    return prefork.run(workers, child, name="policyd")
