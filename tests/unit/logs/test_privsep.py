"""The privileged helper's message format: what it accepts, what it refuses, and the round
trip of every Backend operation over a real socketpair (the helper's loop on a thread)."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from postwarden.logs.bans import BanError, Protection
from postwarden.logs.bans_store import Ban
from postwarden.logs.privsep import (
    MAX_REQUEST,
    PrivilegedBackend,
    Refused,
    Request,
    answer,
    encode,
    parse_request,
    read_frame,
    serve,
)

LONGEST = 7 * 86400
PROTECTED = Protection([ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128",
                                                          "10.0.0.0/8")])


class Recorder:
    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]], list[str]]] = []
        self.fail = False

    def _note(self, op: str, bans: Sequence[Ban], now: float, others: Sequence[Ban] = ()) -> None:
        if self.fail:
            raise BanError("nft: exit 1: Error: Could not process rule")
        self.calls.append((op, [(b.network, round(b.expires - now)) for b in bans],
                           [b.network for b in others]))

    def sync(self, bans: Sequence[Ban], now: float) -> None:
        self._note("sync", bans, now)

    def add(self, ban: Ban, now: float, replaces: Sequence[Ban]) -> None:
        self._note("add", [ban], now, replaces)

    def lift(self, ban: Ban, now: float) -> None:
        self._note("lift", [], now, [ban])

    def expire(self, ban: Ban, now: float) -> None:
        self._note("expire", [], now, [ban])


def parse(message: object) -> Request:
    return parse_request(json.dumps(message).encode(), LONGEST)


def test_well_formed_requests() -> None:
    assert parse({"op": "add", "ban": ["198.51.100.7/32", 3600], "replaces": []}) == Request(
        "add", bans=(("198.51.100.7/32", 3600),))
    assert parse({"op": "add", "ban": ["198.51.100.0/24", 60],
                  "replaces": ["198.51.100.7/32"]}).networks == ("198.51.100.7/32",)
    assert parse({"op": "sync", "bans": [["2001:db8::/64", 1], ["192.0.2.1/32", LONGEST]]}
                 ).bans == (("2001:db8::/64", 1), ("192.0.2.1/32", LONGEST))
    assert parse({"op": "sync", "bans": []}) == Request("sync")
    assert parse({"op": "lift", "network": "192.0.2.1/32"}).networks == ("192.0.2.1/32",)
    assert parse({"op": "expire", "network": "2001:db8::7/128"}).op == "expire"


@pytest.mark.parametrize("message", [
    b"", b"{", b"[]", b'"add"', b"\xff\xfe", b'{"op": "add", "op": "lift", "network": "x"}',
    b'{"op": "sync", "bans": [["192.0.2.1/32", NaN]]}',
    b'{"op": "sync", "bans": [["192.0.2.1/32", Infinity]]}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_malformed_frames_are_refused(message: bytes) -> None:
    with pytest.raises(Refused):
        parse_request(message, LONGEST)


@pytest.mark.parametrize("message", [
    {"op": "reboot"}, {"op": "lift"}, {"op": "lift", "network": "192.0.2.1/32", "x": 1},
    {"op": "add", "ban": ["192.0.2.1/32", 60]},                      # replaces missing
    {"op": "lift", "network": "192.0.2.1"},                          # not canonical CIDR
    {"op": "lift", "network": "192.0.2.7/24"},                       # host bits
    {"op": "lift", "network": "192.000.2.1/32"},
    {"op": "lift", "network": "2001:DB8::1/128"},                    # not canonical
    {"op": "lift", "network": "0.0.0.0/0"}, {"op": "lift", "network": "10.0.0.0/7"},
    {"op": "lift", "network": "::/0"}, {"op": "lift", "network": "2000::/15"},
    {"op": "lift", "network": "fe80::1%eth0/128"}, {"op": "lift", "network": 3232235777},
    {"op": "lift", "network": "192.0.2.1/32; flush ruleset"},
    {"op": "lift", "network": "192.0.2.1/32\n"},
    {"op": "add", "ban": ["192.0.2.1/32", 0], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", -5], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", LONGEST + 1], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", 60.5], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", True], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", "60"], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", 60, 1], "replaces": []},
    {"op": "add", "ban": ["192.0.2.1/32", 60], "replaces": "192.0.2.0/24"},
    {"op": "sync", "bans": [["192.0.2.1/32", 60]] * 100_001},
    {"op": "sync", "bans": {"192.0.2.1/32": 60}},
])
def test_requests_of_the_wrong_shape_are_refused(message: object) -> None:
    with pytest.raises(Refused):
        parse(message)


def test_protected_networks_are_never_enforced(caplog: pytest.LogCaptureFixture) -> None:
    backend = Recorder()
    for net in ("127.0.0.1/32", "10.9.0.0/16", "0.0.0.0/8"):  # 0.0.0.0/8 does not overlap
        reply = answer(encode({"op": "add", "ban": [net, 60], "replaces": []})[4:], backend,
                       PROTECTED, LONGEST, 1000.0)
        assert reply["ok"] is (net == "0.0.0.0/8"), reply
    sync = {"op": "sync", "bans": [["127.0.0.0/24", 60], ["198.51.100.7/32", 60]]}
    assert answer(json.dumps(sync).encode(), backend, PROTECTED, LONGEST, 1000.0) == {"ok": True}
    assert backend.calls[-1] == ("sync", [("198.51.100.7/32", 60)], [])
    assert "refused a request: 127.0.0.1/32 overlaps a protected network" in caplog.text
    assert "network=127.0.0.0/24 left out of a sync: protected" in caplog.text


def test_a_refusal_is_logged_and_answered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    reply = answer(b'{"op": "lift", "network": "2001:db8:0::1/128"}', Recorder(), PROTECTED,
                   LONGEST, 0.0)
    assert reply == {"ok": False, "error": "refused: '2001:db8:0::1/128' is not in canonical "
                                           "form (2001:db8::1/128)"}
    assert caplog.records[-1].getMessage() == (
        "watch: privsep: refused a request: '2001:db8:0::1/128' is not in canonical form "
        "(2001:db8::1/128)")


@pytest.fixture
def pair() -> Iterator[tuple[PrivilegedBackend, Recorder, threading.Thread]]:
    ours, theirs = socket.socketpair()
    backend = Recorder()
    thread = threading.Thread(target=serve, args=(theirs, backend, PROTECTED, LONGEST))
    thread.start()
    remote = PrivilegedBackend(ours, "recorder", LONGEST)
    yield remote, backend, thread
    remote.close()
    thread.join(5)
    theirs.close()


def test_every_operation_round_trips(pair: tuple[PrivilegedBackend, Recorder,
                                                 threading.Thread]) -> None:
    remote, backend, _ = pair
    now = time.time()
    single = Ban("198.51.100.7/32", now, now + 3600)
    remote.sync([single, Ban("192.0.2.9/32", now - 10, now - 1),           # ended: left out
                 Ban("2001:db8::/64", now, now + 30 * 86400)], now)        # longer: clamped
    remote.add(Ban("198.51.100.0/24", now, now + 7200), now, [single])
    remote.lift(single, now)
    remote.expire(single, now)
    assert backend.calls == [
        ("sync", [("198.51.100.7/32", 3600), ("2001:db8::/64", LONGEST)], []),
        ("add", [("198.51.100.0/24", 7200)], ["198.51.100.7/32"]),
        ("lift", [], ["198.51.100.7/32"]), ("expire", [], ["198.51.100.7/32"])]
    assert remote.name == "recorder"


def test_backend_errors_come_back_as_ban_errors(pair: tuple[PrivilegedBackend, Recorder,
                                                            threading.Thread]) -> None:
    remote, backend, _ = pair
    backend.fail = True
    with pytest.raises(BanError, match="Could not process rule"):
        remote.lift(Ban("198.51.100.7/32", 0, 0), 0)
    with pytest.raises(BanError, match="overlaps a protected network"):
        remote.add(Ban("127.0.0.1/32", 0, 60), 0, [])
    backend.fail = False
    remote.lift(Ban("198.51.100.7/32", 0, 0), 0)                            # still serving


def test_an_oversized_frame_ends_the_helper(pair: tuple[PrivilegedBackend, Recorder,
                                                        threading.Thread]) -> None:
    remote, _, thread = pair
    remote._sock.sendall((MAX_REQUEST + 1).to_bytes(4, "big"))
    thread.join(5)
    assert not thread.is_alive()
    with pytest.raises(BanError, match="privileged helper"):
        remote.lift(Ban("198.51.100.7/32", 0, 0), 0)
    with pytest.raises(BanError, match="gone"):
        remote.lift(Ban("198.51.100.7/32", 0, 0), 0)


def test_frames_at_small_chunk_sizes() -> None:
    for size in (1, 2, 16, 4096):
        ours, theirs = socket.socketpair()
        frame = encode({"op": "lift", "network": "192.0.2.1/32"}) * 2
        for i in range(0, len(frame), size):
            ours.sendall(frame[i:i + size])
        ours.close()
        assert read_frame(theirs, MAX_REQUEST) == b'{"op":"lift","network":"192.0.2.1/32"}'
        assert read_frame(theirs, MAX_REQUEST) is not None
        assert read_frame(theirs, MAX_REQUEST) is None
        theirs.close()
