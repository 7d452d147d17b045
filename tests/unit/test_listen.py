"""listen.SharedAcceptor: one connection per wakeup, so forked workers share a burst.

A service in a subprocess binds 127.0.0.1, prints its port and runs two prefork workers
that serve it through ``SharedAcceptor`` (each says when it is ready); each answers a
connection with its pid, keeps it open and is then busy for 10 ms. A burst of connections
must reach both workers: a worker takes one connection per wakeup, so what arrives while
it is busy goes to the other (asyncio's own server would take every pending one).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

from postwarden.listen import SharedAcceptor

SERVICE = r'''
import asyncio, os, signal, socket, time
from postwarden import prefork
from postwarden.listen import SharedAcceptor

sock = socket.create_server(("127.0.0.1", 0), backlog=128)
print(sock.getsockname()[1], flush=True)
held = []


def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"{os.getpid()}\n".encode())
    held.append(writer)
    time.sleep(0.01)  # busy with it: what comes meanwhile is the other worker's to take


async def serve() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    acceptor = SharedAcceptor(sock, answer)
    os.write(1, b"ready\n")  # one short write(2): whole on the shared pipe
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
        # Both workers serving first: a worker still starting would find the burst taken.
        assert [service.stdout.readline() for _ in range(2)] == ["ready\n"] * 2
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
