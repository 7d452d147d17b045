"""A tiny authoritative DNS server on loopback, for tests that need real DNS traffic.

Security: answers only from the zone given in code, on 127.0.0.1 (UDP and TCP) and a free
port; queries are parsed by dnspython and a malformed one is dropped. It recurses nowhere.
Standards: RFC 1035 (messages; NXDOMAIN versus NOERROR with no answer, "NODATA"), RFC 7208
(the TXT records SPF reads).

Zone: ``{"example.org": {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"], "A": ["192.0.2.1"]}}``.
A name in the zone without the asked type gets NOERROR with no answer; a name not in it
NXDOMAIN. Long TXT strings are split into 255-byte character-strings.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zone = Mapping[str, Mapping[str, Sequence[str]]]
TTL = 60


def _txt(text: str) -> str:
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)


def answer(zone: Zone, query: bytes) -> bytes | None:
    """The reply to one query (wire format), or None for a message that does not parse."""
    try:
        message = dns.message.from_wire(query)
    except Exception:  # dnspython raises many types for malformed wire data
        return None
    reply = dns.message.make_response(message)
    reply.flags |= dns.flags.AA
    for question in message.question:
        name = question.name.to_text(omit_final_dot=True).lower()
        records = {k.lower(): v for k, v in zone.items()}.get(name)
        if records is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            continue
        kind = dns.rdatatype.to_text(question.rdtype)
        values = records.get(kind, ())
        if not values:
            continue
        texts = [_txt(v) if kind == "TXT" else v for v in values]
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, t) for t in texts]
        reply.answer.append(dns.rrset.from_rdata_list(question.name, TTL, rdatas))
    return reply.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = answer(self.zone, data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DnsServer:
    """``with DnsServer(zone) as server:`` serves ``zone`` on 127.0.0.1:server.port (UDP)
    from a thread of its own until the block ends."""

    def __init__(self, zone: Zone, host: str = "127.0.0.1") -> None:
        self.zone = zone
        self.host = host
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
            self.port: int = probe.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        transport, _ = self._loop.run_until_complete(self._loop.create_datagram_endpoint(
            lambda: _Udp(self.zone), local_addr=(self.host, self.port)))
        self._ready.set()
        self._loop.run_forever()
        transport.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def __enter__(self) -> DnsServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test DNS server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
