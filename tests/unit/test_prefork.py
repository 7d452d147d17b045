"""prefork: real forks serving one real listening socket, supervised.

Each test starts a small service in a subprocess (so that signals reach a real
supervisor, not pytest): it binds 127.0.0.1 on a free port, prints the port, and calls
``prefork.run``. A worker answers each connection with its pid and slot, then waits for
the client to close (so concurrent connections must be spread over the workers).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from postwarden import prefork

SERVICE = r'''
import asyncio, os, signal, socket, sys
from pathlib import Path
from postwarden import prefork

mode, workers, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
sock = socket.create_server(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)


def blocking() -> int:
    signal.signal(signal.SIGHUP, lambda *_: (out / f"hup-{os.getpid()}").write_text("x"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode == "crash":
        return 3
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (out / f"ready-{os.getpid()}").write_text("x")
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(f"{os.getpid()} {prefork.worker()}\n".encode())
            conn.recv(1)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"{os.getpid()} {prefork.worker()}\n".encode())
    await reader.read(1)
    writer.close()


async def serve() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(answer, sock=sock)
    (out / f"ready-{os.getpid()}").write_text("x")
    await stop.wait()
    server.close()
    (out / f"clean-{os.getpid()}").write_text("x")


def child() -> int:
    if mode == "asyncio":
        asyncio.run(serve())
        return 0
    return blocking()


sys.exit(prefork.run(workers, child, name="test", restarts_per_minute=3, grace=2.0))
'''


class Service:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.port = process, port

    def workers(self) -> list[int]:
        pid = self.process.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(x) for x in text.split())

    def hold(self) -> tuple[socket.socket, int, int]:
        """A connection a worker answered: the socket, the worker's pid and slot."""
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        line = conn.makefile().readline().split()
        return conn, int(line[0]), int(line[1])


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(0.02)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[str, int], Service]]:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    started: list[subprocess.Popen[str]] = []

    def launch(mode: str, workers: int) -> Service:
        process = subprocess.Popen([sys.executable, str(script), mode, str(workers),
                                    str(tmp_path)], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None
        service = Service(process, int(process.stdout.readline()))
        if workers > 1 and mode != "crash":
            # every worker has its signal handlers: a signal now tests them, not a race
            wait_for(lambda: len(service.workers()) == workers and all(
                (tmp_path / f"ready-{pid}").exists() for pid in service.workers()))
        return service

    yield launch
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_share_one_listening_socket(start: Callable[[str, int], Service]) -> None:
    service = start("blocking", 3)
    held = [service.hold() for _ in range(3)]   # each worker is busy with one
    assert sorted(pid for _, pid, _ in held) == service.workers()
    assert sorted(slot for _, _, slot in held) == [0, 1, 2]
    for conn, _, _ in held:
        conn.close()


def test_a_dead_worker_is_replaced_in_its_slot(start: Callable[[str, int], Service]) -> None:
    service = start("blocking", 2)
    before = service.workers()
    os.kill(before[0], signal.SIGKILL)
    wait_for(lambda: len(service.workers()) == 2 and service.workers() != before)
    after = service.workers()
    assert before[1] in after and before[0] not in after
    held = [service.hold() for _ in range(2)]
    assert sorted(slot for _, _, slot in held) == [0, 1]
    for conn, _, _ in held:
        conn.close()


def test_sigterm_stops_every_worker_and_exits_0(start: Callable[[str, int], Service],
                                                tmp_path: Path) -> None:
    service = start("asyncio", 3)
    workers = service.workers()
    conn, pid, _ = service.hold()
    assert pid in workers
    conn.close()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=10) == 0
    assert not any(alive(p) for p in workers)
    assert sorted(p.name for p in tmp_path.glob("clean-*")) == sorted(
        f"clean-{p}" for p in workers)


def test_sighup_reaches_every_worker(start: Callable[[str, int], Service],
                                     tmp_path: Path) -> None:
    service = start("blocking", 2)
    workers = service.workers()
    service.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(list(tmp_path.glob("hup-*"))) == 2)
    assert service.workers() == workers  # nobody restarted
    assert service.process.poll() is None


def test_workers_that_keep_dying_stop_the_service(
        start: Callable[[str, int], Service]) -> None:
    began = time.monotonic()
    service = start("crash", 2)
    assert service.process.wait(timeout=20) == 1
    assert time.monotonic() - began < 15  # backoff 0.1 0.2 0.4 s, then giving up


def test_a_worker_ignoring_sigterm_is_killed_after_grace(
        start: Callable[[str, int], Service]) -> None:
    service = start("stubborn", 2)
    workers = service.workers()
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=10) == 1   # not a clean stop
    assert not any(alive(p) for p in workers)


def test_a_killed_supervisor_takes_its_workers_along(
        start: Callable[[str, int], Service]) -> None:
    service = start("asyncio", 2)
    workers = service.workers()
    service.process.kill()
    service.process.wait()
    wait_for(lambda: not any(alive(p) for p in workers))


def test_one_worker_runs_in_this_process() -> None:
    seen: list[tuple[int, int | None]] = []

    def child() -> int:
        seen.append((os.getpid(), prefork.worker()))
        return 7

    assert prefork.run(1, child, name="test") == 7
    assert seen == [(os.getpid(), 0)]
    assert prefork.worker() is None


def test_zero_workers_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        prefork.run(0, lambda: 0, name="test")


def test_the_start_up_heap_is_frozen_and_collections_are_rarer() -> None:
    """Before ``child`` runs, what is alive is out of the collector's sight, a full
    collection comes a tenth as often and a young one every 2,000 allocations (module
    docstring, 7)."""
    code = ("import gc, json\n"
            "from postwarden import prefork\n"
            "seen = []\n"
            "prefork.run(1, lambda: seen.append((gc.get_freeze_count(), gc.get_threshold())) "
            "or 0, name='t')\n"
            "print(json.dumps(seen))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    ((frozen, threshold),) = json.loads(run.stdout)
    assert frozen > 1000
    assert threshold[2] == prefork.FULL_EVERY == 100
    assert threshold[0] == prefork.YOUNG_EVERY == 2000
