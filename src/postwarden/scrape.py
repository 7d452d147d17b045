"""The Prometheus scrape endpoint of the asyncio daemons (policyd, the milter).

Security: anyone who reaches the socket may ask, so it should listen on loopback or a
management network. A request head is read up to ``MAX_HTTP`` bytes within
``HTTP_TIMEOUT`` seconds; then one answer is written and the connection closed. What is
shown is whatever ``render`` returns: the daemons' counters, never addresses or names.
Standards: RFC 9112 (just enough HTTP/1.1: GET and HEAD, Content-Length, Connection:
close); Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

MAX_HTTP = 8192
HTTP_TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 render: Callable[[], str]) -> None:
    """Answer one scrape: ``render()`` for GET or HEAD of / or /metrics; 404 or 405 else."""
    try:
        async with asyncio.timeout(HTTP_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        method, target, *_ = [*head.split(b"\r\n", 1)[0].split(b" "), b"", b""]
        if method not in (b"GET", b"HEAD"):
            status, body = "405 Method Not Allowed", "GET only\n"
        elif target.split(b"?", 1)[0] in (b"/metrics", b"/"):
            status, body = "200 OK", render()
        else:
            status, body = "404 Not Found", "try /metrics\n"
        data = body.encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                     f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                     + (data if method != b"HEAD" else b""))
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve(sock: socket.socket, render: Callable[[], str]) -> asyncio.Server:
    """Answer scrapes on the bound TCP socket ``sock``."""
    return await asyncio.start_server(lambda r, w: answer(r, w, render), sock=sock,
                                      limit=MAX_HTTP)
