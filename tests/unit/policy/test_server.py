"""The decision pipeline and the asyncio server: real sockets on loopback and in a temp dir.

Covers: verdict order, the time budget and the fail-safe answer, counters and the metrics
endpoint, 250 concurrent persistent connections on TCP and on a unix socket, a malformed
connection beside a healthy one, shutdown with a decision in flight, the unix socket's mode
and stale-socket handling, the privilege drop (as root, in a subprocess) and the
``postwarden policyd`` command end to end. The connection tests run on asyncio's own event
loop and on uvloop's, which the daemon uses when it can.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postwarden.listen import ListenError, bind_tcp, bind_unix
from postwarden.policy import privileges
from postwarden.policy.model import Findings, PolicyRequest, SpfOutcome, SpfResult, Verdict
from postwarden.policy.server import READ_SIZE, PolicyServer
from postwarden.policy.service import PolicyService, _Budgets

RCPT = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
        "client_address": "203.0.113.7", "sender": "alice@example.net",
        "recipient": "bob@example.org"}


def request(**extra: str) -> PolicyRequest:
    return PolicyRequest({**RCPT, **extra})


class Fixed:
    """A check that always says the same thing."""

    def __init__(self, name: str, action: str | None) -> None:
        self.name, self.action, self.calls = name, action, 0

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        self.calls += 1
        return None if self.action is None else Verdict(self.action, self.name, "test")


class Echo:
    """REJECT with the sender in the text, so each client can tell its answers apart."""

    name = "echo"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        if self.delay:
            await asyncio.sleep(self.delay)
        return Verdict(f"REJECT {request.sender}", self.name)


class Raises:
    name = "broken"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        raise self.exc


class StoreDown(Exception):
    failure_kind = "store"


def decide(service: PolicyService, req: PolicyRequest | None = None) -> Verdict:
    return asyncio.run(service.decide(req or request()))


# --- the pipeline -------------------------------------------------------------------------

def test_first_final_verdict_wins() -> None:
    later = Fixed("later", "REJECT no")
    service = PolicyService([Fixed("a", None), Fixed("b", "PREPEND X-A: 1"),
                             Fixed("c", "DEFER_IF_PERMIT wait"), later], budget=1)
    verdict = decide(service)
    assert (verdict.action, verdict.check) == ("DEFER_IF_PERMIT wait", "c")
    assert later.calls == 0


def test_first_prepend_when_nothing_decides() -> None:
    service = PolicyService([Fixed("a", "DUNNO"), Fixed("b", "PREPEND X-A: 1"),
                             Fixed("c", "PREPEND X-B: 2")], budget=1)
    assert decide(service).action == "PREPEND X-A: 1"


def test_no_checks_means_dunno() -> None:
    service = PolicyService([], budget=1)
    assert decide(service).action == "DUNNO"
    assert service.counters.requests == 1
    assert service.counters.actions["none", "DUNNO"] == 1


def test_raising_check_gets_failsafe_with_traceback(caplog: pytest.LogCaptureFixture) -> None:
    service = PolicyService([Raises(RuntimeError("boom"))], budget=1,
                            failsafe_action="DEFER_IF_PERMIT 4.3.0 try later")
    with caplog.at_level(logging.INFO):
        verdict = decide(service)
    assert (verdict.action, verdict.check) == ("DEFER_IF_PERMIT 4.3.0 try later", "failsafe")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert "check=broken error=internal" in errors[0].getMessage()
    assert service.counters.errors["internal"] == 1


def test_store_error_is_counted_by_kind(caplog: pytest.LogCaptureFixture) -> None:
    service = PolicyService([Raises(StoreDown("redis: connection refused"))], budget=1)
    with caplog.at_level(logging.INFO):
        assert decide(service).action == "DUNNO"
    assert service.counters.errors["store"] == 1
    assert not any(r.exc_info for r in caplog.records)  # expected failure: no traceback


def test_check_past_budget_gets_failsafe_in_time() -> None:
    service = PolicyService([Echo(delay=5)], budget=0.2)
    started = time.monotonic()
    verdict = decide(service)
    assert time.monotonic() - started < 1.0
    assert (verdict.action, verdict.check) == ("DUNNO", "failsafe")
    assert "budget" in verdict.reason and "echo" in verdict.reason
    assert service.counters.errors["timeout"] == 1


def test_budgets_share_a_timer_and_spare_finished_decisions() -> None:
    """Decisions started in one tick share one timer; it cancels only those still
    running, never before their budget is over and at most a tick after."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        budgets = _Budgets(loop, 0.1)
        started = loop.time()
        ended: list[float] = []

        async def decision(quick: bool) -> str:
            budget = budgets.start()
            try:
                await asyncio.sleep(0 if quick else 5)
            except asyncio.CancelledError:
                assert budget.spent_it()
                ended.append(loop.time())
                return "spent"
            finally:
                budget.cancel()
            return "done"

        tasks = [asyncio.create_task(decision(n % 2 == 0)) for n in range(10)]
        await asyncio.sleep(0)
        assert len(budgets.groups) <= 2   # one timer for the ten (two across a tick)
        assert await asyncio.gather(*tasks) == ["done", "spent"] * 5
        assert all(0.1 <= end - started < 0.1 + budgets.tick + 0.05 for end in ended)
        assert budgets.groups == {}

    asyncio.run(main())


def test_check_that_raises_its_own_timeout_is_not_a_budget_timeout() -> None:
    service = PolicyService([Raises(TimeoutError("dns"))], budget=5)
    assert decide(service).check == "failsafe"
    assert service.counters.errors == {"internal": 1}


class TempError:
    name = "spf"

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        findings.spf = SpfOutcome(SpfResult.TEMPERROR, "mailfrom", "example.net", "timeout")
        return Verdict("PREPEND Received-SPF: temperror", self.name)


def test_spf_temperror_counts_as_dns_error() -> None:
    service = PolicyService([TempError()], budget=1)
    assert decide(service).action.startswith("PREPEND")
    assert service.counters.errors == {"dns": 1}
    assert "postwarden_policyd_dns_errors_total 1" in service.counters.prometheus()


def test_unsendable_action_gets_failsafe() -> None:
    service = PolicyService([Fixed("bad", "REJECT a\nb")], budget=1)
    assert decide(service).check == "failsafe"


def test_cancellation_propagates() -> None:
    async def main() -> None:
        service = PolicyService([Echo(delay=5)], budget=10)
        task = asyncio.create_task(service.decide(request()))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert service.counters.requests == 0

    asyncio.run(main())


def test_dry_run_answers_dunno_and_logs_the_decision(caplog: pytest.LogCaptureFixture) -> None:
    service = PolicyService([Fixed("greylist", "DEFER_IF_PERMIT Greylisted")], budget=1,
                            dry_run=True)
    with caplog.at_level(logging.INFO):
        verdict = decide(service)
    assert verdict.action == "DUNNO"
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("policyd: client=203.0.113.7 helo= sender=<alice@example.net> "
                           "recipient=<bob@example.org> state=RCPT action=DEFER_IF_PERMIT "
                           "check=greylist ")
    assert "dry_run=yes" in line
    assert service.counters.actions["greylist", "DEFER_IF_PERMIT"] == 1


def test_log_line_escapes_request_values(caplog: pytest.LogCaptureFixture) -> None:
    service = PolicyService([], budget=1)
    with caplog.at_level(logging.INFO):
        decide(service, request(helo_name="evil\rline two", sender="a" * 500))
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\r" not in line and "helo=evil\\rline\\x20two " in line
    assert len(line) < 600


@given(st.text(max_size=300), st.integers(min_value=1, max_value=250))
def test_log_fields_are_what_clip_makes_of_them(text: str, limit: int) -> None:
    """The shortcut for clean values changes nothing: the same text as ``clip``."""
    from postwarden.errors import clip
    from postwarden.policy.service import _free_text, _shown
    assert _shown(text, limit) == clip(text, limit).replace(" ", "\\x20")
    assert _free_text(text, limit) == clip(text, limit)


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False)))
def test_latency_buckets_are_cumulative(samples: list[float]) -> None:
    from postwarden.policy.service import LATENCY_BUCKETS, Counters
    counters = Counters()
    for seconds in samples:
        counters.observe(seconds)
    assert counters.buckets == [sum(s <= bound for s in samples) for bound in LATENCY_BUCKETS]


# --- the server ---------------------------------------------------------------------------

@pytest.fixture(params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """asyncio.run in the test makes its loop with this policy: asyncio's, or uvloop's
    (``server.LOOP_FACTORY``, what ``postwarden policyd`` runs on)."""
    if request.param == "asyncio":
        yield
        return
    import uvloop
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


def wire(sender: str, **extra: str) -> bytes:
    attrs = {**RCPT, "sender": sender, **extra}
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              sender: str) -> bytes:
    writer.write(wire(sender))
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)


Opener = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def started(service: PolicyService, sock: socket.socket,
                  metrics: socket.socket | None = None) -> tuple[PolicyServer, Opener]:
    server = PolicyServer(service, [sock], metrics=metrics, grace=2.0)
    await server.start()
    address = server.addresses()[0]
    if address.startswith("unix:"):
        path = address[5:]
        return server, lambda: asyncio.open_unix_connection(path)
    host, port = address[4:].rsplit(":", 1)
    return server, lambda: asyncio.open_connection(host, int(port))


async def many_clients(open_connection: Opener, clients: int, rounds: int) -> None:
    async def client(n: int) -> None:
        reader, writer = await open_connection()
        for i in range(rounds):
            sender = f"c{n}r{i}@example.net"
            assert await ask(reader, writer, sender) == f"action=REJECT {sender}\n\n".encode()
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(client(n) for n in range(clients)))


@pytest.mark.usefixtures("each_loop")
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_250_concurrent_persistent_connections(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        service = PolicyService([Echo(delay=0.001)], budget=5)
        sock = (bind_tcp("127.0.0.1", 0) if kind == "tcp"
                else bind_unix(str(tmp_path / "policy")))
        server, open_connection = await started(service, sock)
        await many_clients(open_connection, 250, 5)
        assert service.counters.requests == 1250
        await server.stop()

    asyncio.run(main())


@pytest.mark.usefixtures("each_loop")
def test_malformed_connection_does_not_disturb_another(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        service = PolicyService([Echo()], budget=5)
        server, open_connection = await started(service, bind_tcp("127.0.0.1", 0))
        good_r, good_w = await open_connection()
        bad_r, bad_w = await open_connection()
        assert await ask(good_r, good_w, "a@x") == b"action=REJECT a@x\n\n"
        bad_w.write(b"request=smtpd_access_policy\nthis line has no equals sign\n\n")
        assert await asyncio.wait_for(bad_r.read(), 5) == b""  # closed, no reply
        assert await ask(good_r, good_w, "b@x") == b"action=REJECT b@x\n\n"
        _, half_w = await open_connection()
        half_w.write(b"request=smtpd_access_policy\nsender=c")  # then hang up mid-request
        half_w.close()
        assert await ask(good_r, good_w, "d@x") == b"action=REJECT d@x\n\n"
        for _ in range(100):
            if service.counters.connections == 1:  # only the good one is left
                break
            await asyncio.sleep(0.02)
        assert service.counters.connections == 1
        assert service.counters.errors["protocol"] == 1
        await server.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "without '='" in warnings[0]
    assert any("disconnected in the middle of a request" in r.getMessage()
               for r in caplog.records)


@pytest.mark.usefixtures("each_loop")
def test_pipelined_requests_and_a_half_close_are_answered_in_order() -> None:
    """smtpd waits for each reply, but a peer that sends several requests at once and then
    shuts down its side (``printf ... | nc``) still gets every answer, in order."""
    async def main() -> None:
        service = PolicyService([Echo(delay=0.01)], budget=5)
        server, open_connection = await started(service, bind_tcp("127.0.0.1", 0))
        reader, writer = await open_connection()
        writer.write(b"".join(wire(f"p{i}@x") for i in range(5)))
        writer.write_eof()
        replies = await asyncio.wait_for(reader.read(), 5)
        assert replies == b"".join(f"action=REJECT p{i}@x\n\n".encode() for i in range(5))
        await server.stop()

    asyncio.run(main())


@pytest.mark.usefixtures("each_loop")
def test_a_peer_that_never_reads_its_replies_is_held_back() -> None:
    """Requests keep coming one at a time but the replies are never read: once the
    replies fill the send buffer the server stops taking requests (memory stays
    bounded) instead of queueing replies without end."""
    async def main() -> None:
        service = PolicyService([Echo()], budget=5)
        server, _ = await started(service, bind_tcp("127.0.0.1", 0))
        host, port = server.addresses()[0][4:].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.setblocking(False)
        one = wire("x" * 3000 + "@x")  # a 3 KB request gets a 3 KB reply
        held = False
        for _ in range(4000):  # at most 12 MB of replies: far past any socket buffer
            before = service.counters.requests
            try:
                sock.send(one)
            except BlockingIOError:
                held = True  # the server stopped reading too
                break
            for _ in range(20):
                await asyncio.sleep(0.005)
                if service.counters.requests > before:
                    break
            else:
                held = True
                break
        assert held
        [conn] = server.connections
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 256 * 1024
        sock.close()
        await server.stop()

    asyncio.run(main())


@pytest.mark.usefixtures("each_loop")
def test_a_peer_that_floods_without_waiting_is_held_back(
        caplog: pytest.LogCaptureFixture) -> None:
    """A peer sending request after request without waiting for the replies (smtpd never
    does) is read a buffer at a time, reading paused by what comes while a decision is in
    flight: it gets every answer in order, and the server holds at most two reads of it
    beyond the request it has begun (uvloop may read again before the decision's task
    runs; asyncio's own loop, as a rule, does not)."""
    async def main() -> None:
        service = PolicyService([Echo()], budget=5)
        server, open_connection = await started(service, bind_tcp("127.0.0.1", 0))
        reader, writer = await open_connection()
        senders = [f"{n:03d}" + "y" * 3000 + "@x" for n in range(100)]
        writer.write(b"".join(wire(sender) for sender in senders))
        writer.write_eof()
        reading = asyncio.create_task(asyncio.wait_for(reader.read(), 10))
        held = 0
        while not reading.done():
            await asyncio.sleep(0.001)
            held = max([held, *(len(c.decoder._buffer) for c in server.connections)])
        replies = (await reading).split(b"\n\n")
        assert [r for r in replies if r] == [f"action=REJECT {s}".encode() for s in senders]
        assert held <= 2 * READ_SIZE + len(wire(senders[0]))  # two reads, a request begun
        assert service.counters.errors["protocol"] == 0
        await server.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())


@pytest.mark.usefixtures("each_loop")
def test_idle_connection_is_closed_but_not_a_busy_one(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        service = PolicyService([Echo(delay=0.5)], budget=5)
        server = PolicyServer(service, [bind_tcp("127.0.0.1", 0)], idle_timeout=0.2)
        await server.start()
        host, port = server.addresses()[0][4:].rsplit(":", 1)
        idle_r, _idle_w = await asyncio.open_connection(host, int(port))
        busy_r, busy_w = await asyncio.open_connection(host, int(port))
        # A decision longer than the idle limit is not cut; the connection then idles out.
        assert await ask(busy_r, busy_w, "slow@x") == b"action=REJECT slow@x\n\n"
        assert await asyncio.wait_for(idle_r.read(), 5) == b""
        assert await asyncio.wait_for(busy_r.read(), 5) == b""
        await server.stop()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert sum("idle for 0.2 s, closing" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.usefixtures("each_loop")
def test_shutdown_finishes_the_decision_in_flight() -> None:
    async def main() -> None:
        service = PolicyService([Echo(delay=0.3)], budget=5)
        server, open_connection = await started(service, bind_tcp("127.0.0.1", 0))
        busy_r, busy_w = await open_connection()
        idle_r, _idle_w = await open_connection()
        busy_w.write(wire("slow@x"))
        await asyncio.sleep(0.1)
        stopping = asyncio.create_task(server.stop())
        assert await asyncio.wait_for(busy_r.readuntil(b"\n\n"), 5) == (
            b"action=REJECT slow@x\n\n")
        assert await asyncio.wait_for(idle_r.read(), 5) == b""
        assert await asyncio.wait_for(busy_r.read(), 5) == b""
        await stopping
        with pytest.raises(OSError):
            await open_connection()

    asyncio.run(main())


@pytest.mark.usefixtures("each_loop")
def test_metrics_scrape() -> None:
    async def main() -> str:
        service = PolicyService([Fixed("greylist", "DEFER_IF_PERMIT Greylisted")], budget=5)
        server, open_connection = await started(service, bind_tcp("127.0.0.1", 0),
                                                bind_tcp("127.0.0.1", 0))
        reader, writer = await open_connection()
        for n in range(3):
            await ask(reader, writer, f"{n}@x")
        host, port = server.addresses()[-1][4:].rsplit(":", 1)
        m_reader, m_writer = await asyncio.open_connection(host, int(port))
        m_writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        response = (await asyncio.wait_for(m_reader.read(), 5)).decode()
        await server.stop()
        return response

    response = asyncio.run(main())
    head, body = response.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200 OK") and "text/plain; version=0.0.4" in head
    lines = body.splitlines()
    assert "postwarden_policyd_requests_total 3" in lines
    assert 'postwarden_policyd_actions_total{check="greylist",action="DEFER_IF_PERMIT"} 3' in (
        lines)
    assert "postwarden_policyd_store_errors_total 0" in lines
    assert "postwarden_policyd_dns_errors_total 0" in lines
    assert 'postwarden_policyd_decision_seconds_bucket{le="+Inf"} 3' in lines
    assert "postwarden_policyd_decision_seconds_count 3" in lines


# --- unix sockets -------------------------------------------------------------------------

def test_unix_socket_mode_and_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "policy"
    first = bind_unix(str(path), mode=0o620)
    assert stat.S_IMODE(path.stat().st_mode) == 0o620
    with pytest.raises(ListenError, match="another server is listening"):
        bind_unix(str(path))
    first.close()  # the file stays behind, as after a crash
    assert path.exists()
    second = bind_unix(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    second.close()


def test_unix_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "policy").write_text("data")
    with pytest.raises(ListenError, match="not a socket"):
        bind_unix(str(tmp_path / "policy"))
    assert (tmp_path / "policy").read_text() == "data"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_unix_socket_owner_and_group(tmp_path: Path) -> None:
    sock = bind_unix(str(tmp_path / "policy"), owner="nobody", group="nogroup")
    info = (tmp_path / "policy").stat()
    assert (info.st_uid, info.st_gid) == (65534, 65534)
    sock.close()


# --- privileges ---------------------------------------------------------------------------

DROP = textwrap.dedent("""
    import os, sys
    from postwarden.policy.privileges import drop_privileges
    account = drop_privileges("nobody", "nogroup")
    print(os.getresuid(), os.getresgid(), os.getgroups())
    try:
        open(sys.argv[1]).read()
    except PermissionError:
        print("root file: denied")
    try:
        os.setuid(0)
    except PermissionError:
        print("setuid(0): denied")
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")
def test_privilege_drop_is_for_real(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("x")
    secret.chmod(0o600)
    result = subprocess.run([sys.executable, "-c", DROP, str(secret)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "(65534, 65534, 65534) (65534, 65534, 65534) [65534]",
        "root file: denied", "setuid(0): denied"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root is refused")
def test_root_without_user_is_refused() -> None:
    with pytest.raises(privileges.PrivilegeError, match="refusing to run as root"):
        privileges.drop_privileges(None, None)
    assert privileges.drop_privileges("root", None) is None  # asked for on purpose
    assert os.geteuid() == 0


def test_unknown_user_is_an_error() -> None:
    with pytest.raises(privileges.PrivilegeError, match="no such user"):
        privileges.resolve("no-such-user-here", None)


# --- the command --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_policyd_command_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "postwarden.toml"
    user = 'user = "nobody"\ngroup = "nogroup"\n' if os.geteuid() == 0 else ""
    state = Path(tempfile.mkdtemp(prefix="postwarden-state-"))
    state.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(state, "nobody", "nogroup")
    config.write_text(f"[policyd]\n{user}budget = 5\n[store]\n"
                      f'url = "sqlite://{state}/state.db"\n'
                      "[spf]\nenabled = false\n[greylist]\nenabled = false\n"
                      "[ratelimit]\nenabled = false\n")
    port, metrics = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "postwarden", "policyd", "--config", str(config),
         "--listen", f"tcp:127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}"],
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with conn:
            conn.sendall(wire("a@x"))
            assert conn.recv(100) == b"action=DUNNO\n\n", process.communicate(timeout=5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    shutil.rmtree(state, ignore_errors=True)
    assert process.returncode == 0, stderr
    assert "policyd: listening on" in stderr
    assert "(uvloop loop)" in stderr  # a dependency: the daemon runs on it
    assert "action=DUNNO check=none" in stderr
    if os.geteuid() == 0:
        assert "running as nobody" in stderr


def test_two_workers_share_the_socket_and_the_sqlite_state(tmp_path: Path) -> None:
    """``server.run(workers=2)``: two processes answer on one socket, write one SQLite
    file, and both stop on SIGTERM."""
    config = tmp_path / "postwarden.toml"
    user = 'user = "nobody"\ngroup = "nogroup"\n' if os.geteuid() == 0 else ""
    state = Path(tempfile.mkdtemp(prefix="postwarden-state-"))
    state.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(state, "nobody", "nogroup")
    port = free_port()
    config.write_text(f'[policyd]\n{user}listen = ["tcp:127.0.0.1:{port}"]\n[store]\n'
                      f'url = "sqlite://{state}/state.db"\n'
                      "[spf]\nenabled = false\n[greylist]\nexempt_networks = []\n"
                      "[ratelimit]\nenabled = false\n")
    code = ("import logging, sys\nfrom pathlib import Path\n"
            "from postwarden import settings\nfrom postwarden.policy import server\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "raise SystemExit(server.run(settings.load(Path(sys.argv[1])), workers=2))\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(config)],
                               stderr=subprocess.PIPE, text=True)

    async def clients() -> list[bytes]:
        async def one(n: int) -> list[bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            replies = []
            for i in range(3):
                writer.write(wire(f"s{n}i{i}@x", client_name="unknown"))
                replies.append(await asyncio.wait_for(reader.readuntil(b"\n\n"), 10))
            writer.close()
            return replies
        return [r for rs in await asyncio.gather(*(one(n) for n in range(20))) for r in rs]

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except ConnectionRefusedError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.05)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        while len(children.read_text().split()) < 2:  # the workers are forked after binding
            assert time.monotonic() < deadline
            time.sleep(0.05)
        replies = asyncio.run(clients())
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert all(r.startswith(b"action=DEFER_IF_PERMIT ") for r in replies)
    import sqlite3
    with sqlite3.connect(state / "state.db") as db:
        assert db.execute("SELECT count(*) FROM greylist").fetchone()[0] == 60
    shutil.rmtree(state, ignore_errors=True)


def test_policyd_check_config(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('[policyd]\nlisten = ["tcp:127.0.0.1:10023"]\n')
    bad.write_text('[policyd]\nlisten = ["udp:127.0.0.1:10023"]\n')
    ok = subprocess.run([sys.executable, "-m", "postwarden", "policyd", "--config",
                         str(good), "--check-config"], capture_output=True, text=True,
                        timeout=30, check=False)
    assert ok.returncode == 0 and ok.stdout.startswith(f"{good}: ok: listen tcp:127.0.0.1")
    failed = subprocess.run([sys.executable, "-m", "postwarden", "policyd", "--config",
                             str(bad), "--check-config"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [
        f"postwarden: {bad}: policyd.listen: 'udp:127.0.0.1:10023': expected unix:PATH or "
        "tcp:HOST:PORT"]


class _Prepends:
    """A check that adds one header per request."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def check(self, request: PolicyRequest, findings: Findings) -> Verdict | None:
        return Verdict(f"PREPEND X-{self.name}: yes", self.name)


def test_second_header_waits_for_the_next_request_of_the_message() -> None:
    service = PolicyService([_Prepends("One"), _Prepends("Two")], budget=5)
    rcpt = PolicyRequest({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                          "instance": "abc.1"})
    data = PolicyRequest({**rcpt.attributes, "protocol_state": "DATA"})
    other = PolicyRequest({**rcpt.attributes, "instance": "def.2"})

    async def run() -> list[str]:
        return [(await service.decide(r)).action for r in (rcpt, other, data)]

    assert asyncio.run(run()) == ["PREPEND X-One: yes", "PREPEND X-One: yes",
                                  "PREPEND X-Two: yes"]
