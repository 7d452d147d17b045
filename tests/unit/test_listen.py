"""listen.SharedAcceptor: one connection per wakeup, so forked workers share a burst.

A service in a subprocess binds 127.0.0.1, prints its port and runs two prefork workers
that serve it through ``SharedAcceptor``; each answers a connection with its pid and keeps
it open. A burst of connections made before any is read must reach both workers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from postwarden.listen import SharedAcceptor

SERVICE = r'''
import asyncio, os, signal, socket
from postwarden import prefork
from postwarden.listen import SharedAcceptor

sock = socket.create_server(("127.0.0.1", 0), backlog=128)
print(sock.getsockname()[1], flush=True)
held = []


def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"{os.getpid()}\n".encode())
    held.append(writer)


async def serve() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    acceptor = SharedAcceptor(sock, answer)
    await stop.wait()
    acceptor.close()
    await acceptor.wait_closed()


def child() -> int:
    asyncio.run(serve())
    return 0


raise SystemExit(prefork.run(2, child, name="test"))
'''


def test_a_burst_of_connections_reaches_every_worker() -> None:
    service = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert service.stdout is not None
        port = int(service.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10)
                   for _ in range(40)]
        pids = {c.makefile().readline().strip() for c in clients}
        for c in clients:
            c.close()
        assert len(pids) == 2, pids
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=20) == 0


def test_close_stops_accepting() -> None:
    import asyncio

    async def scenario() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        seen: list[bytes] = []

        def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(b"x")
            writer.close()

        acceptor = SharedAcceptor(sock, answer)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        acceptor.close()
        await acceptor.wait_closed()
        assert seen == [b"x"] and sock.fileno() == -1

    asyncio.run(scenario())
