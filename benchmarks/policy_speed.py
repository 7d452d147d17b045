"""Benchmark: postwarden policyd beside postgrey 1.37 (Debian), same requests, same run.

Security: both servers listen on 127.0.0.1 only, on free ports, with state in a temporary
directory; both are stopped (by process) at the end, whatever happens. The load is bounded:
``--requests`` per scenario and connection count.
Standards: SMTPD_POLICY_README (the request format smtpd sends).

Usage: ``.venv/bin/python benchmarks/policy_speed.py [--requests 10000] [--runs 5]
[--concurrency 1,50] [--rate R] [--policyd-workers N]`` as root (postgrey drops to its
own user). Scenarios, each at concurrency 1 and 50, on fresh state:

- ``new``: every request a triplet never seen (distinct senders over about 40 /24s), so
  every request writes a new entry and is deferred;
- ``known``: the same triplets again, so every request updates an existing entry.

Clients are asyncio protocols with one persistent connection each, sending requests one
after another like smtpd processes (never two at once on a connection); requests are
encoded before the clock starts, so the client costs little CPU per request. Each run
starts both servers afresh, in alternating order; with ``--runs N`` the table shows
medians over the runs and the range of requests per second, since on a shared machine
single runs vary. Per server and scenario: requests per second, p50 and p99 latency, CPU
per request of the server (user+system from /proc/PID/stat, threads and worker processes
included) and of this client, then the ratio postwarden/postgrey. The load average before
and after is printed as a noise indicator. The load is closed-loop: with N connections
there are always N requests in flight, so mean latency is N divided by the rate (Little's
law). ``--rate R`` makes it open-loop instead: R requests per second offered in total,
each connection still one request at a time, latency counted from when a request was due;
that shows the latency at a given load rather than at saturation.

Both servers keep their state across a crash: postgrey's BerkeleyDB commits every write
with fdatasync; postwarden commits each group of requests to SQLite's WAL before it
answers them (``synchronous=NORMAL``: safe against a crash of the process, not against
a power loss before the next checkpoint; see docs/policyd.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

POSTGREY = "/usr/sbin/postgrey"
HOST = "127.0.0.1"
TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 20.0
MAX_REQUESTS = 100_000
MAX_CONNECTIONS = 200


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float         # the server's
    client_cpu_seconds: float  # this process's (the load generator's)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def request(index: int) -> bytes:
    """A full Postfix 3.x RCPT request for triplet number index."""
    net = index % 40
    attributes = {
        "request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": f"198.51.{100 + net % 20}.{index % 250 + 1}",
        "client_name": "unknown", "reverse_client_name": "unknown",
        "helo_name": f"mail{net}.example.net", "sender": f"user{index}@example.net",
        "recipient": f"rcpt{index % 97}@example.org", "recipient_count": "0",
        "queue_id": "", "instance": f"{index:x}.{index:x}.0", "size": "1234",
        "etrn_domain": "", "stress": "", "sasl_method": "", "sasl_username": "",
        "sasl_sender": "", "ccert_subject": "", "ccert_issuer": "", "ccert_fingerprint": "",
        "encryption_protocol": "TLSv1.3", "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "encryption_keysize": "256", "client_port": "41234", "server_address": HOST,
        "server_port": "25", "policy_context": "",
    }
    return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"


class Client(asyncio.Protocol):
    """One smtpd-like connection: sends its requests one after another, each only after
    the reply to the previous one. Requests are encoded before the clock starts and the
    reply is only checked for its end and its first word, so the client costs little CPU
    per request and the measurement is of the server.

    Closed loop (``interval`` 0): the next request goes out as soon as the reply is in;
    latency is counted from the send. Open loop: request k is due at ``start + k *
    interval``; latency is counted from when it was due, so a server that falls behind is
    charged for the wait too (no coordinated omission)."""

    def __init__(self, requests: list[bytes], latencies: list[float],
                 done: asyncio.Future[None], interval: float = 0.0,
                 start: float = 0.0) -> None:
        self.requests = requests
        self.latencies = latencies
        self.done = done
        self.interval = interval
        self.start = start
        self.next = 0
        self.buffer = b""
        self.sent = 0.0
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        if self.next == len(self.requests):
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        now = self.loop.time()
        if not self.interval:
            self._send(now)
            return
        due = self.start + self.next * self.interval
        if due > now:
            self.loop.call_at(due, self._send, due)
        else:
            self._send(due)

    def _send(self, due: float) -> None:
        assert self.transport is not None
        self.sent = due
        self.transport.write(self.requests[self.next])
        self.next += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\n\n"):
            return
        self.latencies.append(self.loop.time() - self.sent)
        reply, self.buffer = self.buffer, b""
        if not reply.startswith(b"action=") or reply.count(b"\n") != 2:
            self._fail(RuntimeError(f"unexpected reply {reply[:80]!r}"))
            return
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.next < len(self.requests) or self.buffer:
            self._fail(exc or RuntimeError("the server closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_exception(exc)


async def client(port: int, requests: list[bytes], latencies: list[float],
                 interval: float = 0.0, start: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    await loop.create_connection(
        lambda: Client(requests, latencies, done, interval, start), HOST, port)
    await done


def cpu_seconds(pid: int) -> float:
    """User+system time of the process and of its direct children (prefork workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def load(port: int, pid: int, requests: int, concurrency: int,
               rate: float = 0.0) -> Result:
    """Send ``requests`` over ``concurrency`` connections: closed loop, or open loop at
    ``rate`` requests per second in total (each connection gets its share, staggered)."""
    latencies: list[float] = []
    shares = [[request(index) for index in range(i, requests, concurrency)]
              for i in range(concurrency)]
    interval = concurrency / rate if rate else 0.0
    begin = asyncio.get_running_loop().time() + 0.05
    cpu = cpu_seconds(pid)
    client_cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client(port, share, latencies, interval,
                                  begin + i * interval / concurrency)
                           for i, share in enumerate(shares)))
    seconds = time.perf_counter() - start
    return Result(requests, seconds, latencies, cpu_seconds(pid) - cpu,
                  time.process_time() - client_cpu)


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {START_TIMEOUT}s")


def start_postgrey(state: Path, port: int) -> subprocess.Popen[bytes]:
    state.mkdir()
    shutil.chown(state, "postgrey", "postgrey")
    empty = state / "empty"
    empty.write_text("")
    return subprocess.Popen(
        [POSTGREY, f"--inet={HOST}:{port}", f"--dbdir={state}", "--user=postgrey",
         "--group=postgrey", f"--whitelist-clients={empty}",
         f"--whitelist-recipients={empty}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def policyd_starter(workers: int) -> Callable[[Path, int], subprocess.Popen[bytes]]:
    def start_policyd(state: Path, port: int) -> subprocess.Popen[bytes]:
        state.mkdir(mode=0o700)
        config = state / "postwarden.toml"
        config.write_text(
            "[policyd]\n"
            f'listen = ["tcp:{HOST}:{port}"]\n'
            'user = "nobody"\n'
            + (f"workers = {workers}\n" if workers > 1 else "")
            + "[store]\n"
            f'url = "sqlite://{state}/state.db"\n'
            "[greylist]\nenabled = true\nexempt_networks = []\n"
            "[spf]\nenabled = false\n"
            "[ratelimit]\nenabled = false\n")
        shutil.chown(state, "nobody")
        return subprocess.Popen([sys.executable, "-m", "postwarden", "policyd", "--config",
                                 str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    return start_policyd


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


Table = dict[tuple[str, int], Result]


def run_server(name: str, start: Callable[[Path, int], subprocess.Popen[bytes]],
               tmp: Path, requests: int, levels: list[int], rate: float) -> Table:
    results: Table = {}
    for concurrency in levels:
        port = free_port()
        process = start(tmp / f"{name}-{concurrency}", port)
        try:
            wait_listening(port, process)
            for scenario in ("new", "known"):
                results[(scenario, concurrency)] = asyncio.run(
                    load(port, process.pid, requests, concurrency, rate))
        finally:
            stop(process)
    return results


def one_run(number: int, tmp: Path, requests: int, levels: list[int],
            workers: int, rate: float) -> dict[str, Table]:
    """Both servers, each on fresh state; the order alternates from run to run."""
    starts = {"postgrey": start_postgrey, "postwarden": policyd_starter(workers)}
    order = list(starts) if number % 2 == 0 else list(reversed(starts))
    return {name: run_server(name, starts[name], tmp / f"run{number}", requests, levels,
                             rate)
            for name in order}


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(runs: list[dict[str, Table]]) -> None:
    """Per scenario: each server's median over the runs, the spread of its rate, and the
    ratio postwarden/postgrey of the medians."""
    print(f"{'scenario':8} {'conc':>4} {'server':10} {'req/s':>7} {'(min-max)':>13} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'srv CPU':>8} {'client CPU':>10}")
    medians: dict[str, tuple[float, float, float, float]] = {}
    for key in runs[0]["postgrey"]:
        for name in ("postgrey", "postwarden"):
            results = [run[name][key] for run in runs]
            rates = [r.rate for r in results]
            medians[name] = (median(rates),
                             median([r.percentile(0.5) * 1000 for r in results]),
                             median([r.percentile(0.99) * 1000 for r in results]),
                             median([r.cpu_seconds / r.requests * 1e6 for r in results]))
            client = median([r.client_cpu_seconds / r.requests * 1e6 for r in results])
            rate, p50, p99, cpu = medians[name]
            spread = f"{min(rates):.0f}-{max(rates):.0f}"
            print(f"{key[0]:8} {key[1]:4} {name:10} {rate:7.0f} {spread:>13} {p50:7.2f} "
                  f"{p99:7.2f} {cpu:5.0f} us {client:7.0f} us")
        ours, theirs = medians["postwarden"], medians["postgrey"]
        print(f"{'':8} {'':4} {'ratio':10} {ours[0] / theirs[0]:6.1f}x {'':13} "
              f"{ours[1] / theirs[1]:6.2f}x {ours[2] / theirs[2]:6.2f}x "
              f"{ours[3] / max(theirs[3], 1e-9):5.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1,
                        help="repeat the whole comparison and report medians (default 1)")
    parser.add_argument("--concurrency", default="1,50", metavar="N,N",
                        help="connection counts to test (default 1,50)")
    parser.add_argument("--policyd-workers", type=int, default=1, metavar="N",
                        help="postwarden processes on the socket ([policyd] workers; "
                             "default 1)")
    parser.add_argument("--rate", type=float, default=0.0, metavar="R",
                        help="open loop: offer R requests per second in total, spread over "
                             "the connections (default: closed loop, as fast as answered)")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]
    if os.geteuid() != 0:
        print("policy_speed: run as root (postgrey changes to its own user)", file=sys.stderr)
        return 2
    if not 1 <= args.requests <= MAX_REQUESTS or not all(1 <= n <= MAX_CONNECTIONS
                                                         for n in levels):
        print(f"policy_speed: at most {MAX_REQUESTS} requests and {MAX_CONNECTIONS} "
              "connections", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="postwarden-bench-") as tmp:
        os.chmod(tmp, 0o755)  # noqa: S103 - the servers run as postgrey and nobody
        for number in range(args.runs):
            (Path(tmp) / f"run{number}").mkdir(mode=0o755)
            runs.append(one_run(number, Path(tmp), args.requests, levels,
                                args.policyd_workers, args.rate))
    print(f"{args.runs} run(s) of {args.requests} requests per scenario; postwarden with "
          f"{args.policyd_workers} worker(s); "
          + (f"open loop at {args.rate:g} req/s; " if args.rate else "closed loop; ")
          + "load average "
          f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs; CPU is per request")
    report(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
